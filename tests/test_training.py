"""The LLM policy and the two-phase trainer: tokenizer and chat template, SFT data, the GRPO adapter, and the whole
pipeline on `synthetic` with a tiny model (interrupted during stage 2, then resumed)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.llm import PolicyConfig, tiny_model_config, train_tokenizer
from agents.training.grpo import DeepRecToolEnv, active_components, component_rewards
from agents.training.warm_start import sft_messages, teacher_episodes
from agents.workers import RolloutPool
from deeprec_env.config import StackConfig
from deeprec_env.env import EnvConfig
from deeprec_env.protocol import ALL_TAGS, PROBLEM_NO_TOOL_CALL, TOOL_SCHEMA, ChatCodec, normalize_preference
from tests.fakes import chat_stack, random_stack, ray_processes, ray_processes_left

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(dataset):
    return chat_stack(dataset)


@pytest.fixture(scope="module")
def rec_env_factory(stack):
    return stack.make_env


def test_tokenizer_keeps_protocol_tags_whole_and_supports_tool_calling(dataset):
    from trl.chat_template_utils import supports_tool_calling

    tokenizer = train_tokenizer(dataset, vocab_size=512)
    for tag in ALL_TAGS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    with_handles = train_tokenizer(dataset, vocab_size=512, handles=True)
    for lines, pieces in (
        ("6. #11\n7. #1", ["6", ".", " ", "#11", "\n", "7", ".", " ", "#1"]),
        ("#160 #16", ["#160", " ", "#16"]),
    ):
        ids = with_handles(lines, add_special_tokens=False)["input_ids"]
        assert [with_handles.decode([t]) for t in ids] == pieces
        assert len(tokenizer(lines, add_special_tokens=False)["input_ids"]) > len(ids)  # the default splits them
    card = dataset.item_card(3)
    assert tokenizer.decode(tokenizer(card, add_special_tokens=False)["input_ids"]) == card
    assert supports_tool_calling(tokenizer)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None


@pytest.mark.parametrize(("arch", "model_type"), [("llama", "llama"), ("gpt2", "gpt2")])
def test_tiny_policy_architectures_share_their_shape(dataset, arch, model_type):
    from transformers import AutoModelForCausalLM

    tokenizer = train_tokenizer(dataset, vocab_size=512)
    config = PolicyConfig(arch=arch, n_layer=2, n_head=2, n_embd=32, n_positions=256)
    model = AutoModelForCausalLM.from_config(tiny_model_config(config, tokenizer))
    assert model.config.model_type == model_type
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("<tool_call>", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_unknown_tiny_architecture_is_one_clear_error():
    with pytest.raises(ValueError, match="policy.arch 'bert'"):
        PolicyConfig(arch="bert").validate()


def trl_parse(tokenizer, text: str) -> dict:
    """An assistant turn as TRL reads it back during GRPO: the tokenizer's response parser over the generated ids."""
    from trl.chat_template_utils import parse_response

    prompt = [{"role": "user", "content": "hi"}]
    prefix = tokenizer.apply_chat_template(prompt, tools=[TOOL_SCHEMA], add_generation_prompt=True, tokenize=True)
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return parse_response(tokenizer, ids, prefix=list(prefix["input_ids"]), tools=[TOOL_SCHEMA])


@pytest.fixture(scope="module")
def tokenizer(dataset):
    from trl.chat_template_utils import add_response_schema

    return add_response_schema(train_tokenizer(dataset, vocab_size=512))


def test_sft_messages_render_tool_calls_that_parse_back(dataset, stack, tokenizer):
    episodes = teacher_episodes(
        RolloutPool(), stack, {"split": "train"}, [int(u) for u in dataset.eval_users("train")[:4]], "scripted", 4, 0
    )
    for episode in episodes:
        messages = sft_messages(episode)
        calls = [m for m in messages if m.get("tool_calls")]
        assert [c["tool_calls"][0]["function"]["arguments"]["preference"] for c in calls] == episode.preferences
        for message in calls:
            text = tokenizer.apply_chat_template([message], tools=[TOOL_SCHEMA], tokenize=False).split(
                "assistant\n", 1
            )[1]
            assert trl_parse(tokenizer, text.removesuffix("<|im_end|>\n"))["tool_calls"] == message["tool_calls"]
        assert messages[-1]["role"] == "assistant" and "<recommendation_list>" in messages[-1]["content"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_policy_sft_trainer_has_trls_loss_gradients_and_metrics(dataset, stack, tokenizer, arch, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from agents.training.config import WarmStartConfig
    from agents.training.warm_start import policy_sft_trainer_class, sft_config, sft_dataset, training_chat_template

    users = [int(u) for u in dataset.eval_users("train")[:4]]
    episodes = teacher_episodes(RolloutPool(), stack, {"split": "train"}, users, "scripted", 4, 0)
    data = sft_dataset(episodes)
    trained_tokenizer = copy.deepcopy(tokenizer)
    trained_tokenizer.chat_template = training_chat_template(trained_tokenizer)
    torch.manual_seed(0)
    config = PolicyConfig(arch=arch, n_layer=2, n_head=2, n_embd=32, n_positions=4096)
    model = AutoModelForCausalLM.from_config(tiny_model_config(config, trained_tokenizer)).eval()
    args = sft_config(WarmStartConfig(per_device_train_batch_size=4), tmp_path)
    results = []
    for trainer_class in (SFTTrainer, policy_sft_trainer_class()):
        trainer = trainer_class(
            model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=trained_tokenizer
        )
        if not results:
            batch = next(iter(trainer.get_train_dataloader()))
            assert 0 < int((batch["labels"] != -100).sum()) < batch["labels"].numel()  # assistant turns only
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
        metrics = trainer._metrics["eval"]
        results.append((loss.item(), grads, metrics["entropy"][-1], metrics["mean_token_accuracy"][-1]))
    (trl_loss, trl_grads, trl_entropy, trl_accuracy), (loss, grads, entropy, accuracy) = results
    assert loss == pytest.approx(trl_loss, rel=1e-5) and loss > 0
    assert torch.allclose(grads, trl_grads, rtol=1e-4, atol=1e-6)
    assert entropy == pytest.approx(trl_entropy, rel=1e-4) and accuracy == pytest.approx(trl_accuracy)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_learned_position_head_scores_completions_as_trls_fused_head(tokenizer, arch):
    """GRPO's scoring call (`fused_lm_head=True`, completion tokens labelled, left padding) gives TRL's log-probs,
    entropies, loss and gradients with the learned-position head, and a plain forward still returns logits."""
    import copy

    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from agents.training.learned_positions import use_learned_position_head

    torch.manual_seed(0)
    config = PolicyConfig(arch=arch, n_layer=2, n_head=2, n_embd=32, n_positions=256)
    base = AutoModelForCausalLM.from_config(tiny_model_config(config, tokenizer)).eval()
    input_ids = torch.randint(5, len(tokenizer), (3, 40))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :7] = 0  # left padding
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-12] = -100  # the last 12 tokens are the completion
    labels[2, -3:] = -100  # a completion shorter than the batch's longest
    outputs = []
    for patch in (add_fused_lm_head, use_learned_position_head):
        model = copy.deepcopy(base)
        patch(model, temperature=0.7, **({"outputs": ("log_probs", "entropy")} if patch is add_fused_lm_head else {}))
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        outputs.append((out, grads, model))
    (trl, trl_grads, _), (ours, grads, model) = outputs
    learned = labels[:, 1:] != -100
    assert ours.log_probs.shape == trl.log_probs.shape == learned.shape
    assert torch.allclose(ours.log_probs, trl.log_probs, atol=1e-5) and (ours.log_probs[learned] < 0).all()
    assert (ours.log_probs[~learned] == 0).all()
    assert torch.allclose(ours.entropy, trl.entropy, atol=1e-4)
    assert ours.loss.item() == pytest.approx(trl.loss.item(), rel=1e-5)
    assert torch.allclose(grads, trl_grads, rtol=1e-4, atol=1e-6)
    plain = model(input_ids=input_ids, attention_mask=attention_mask)
    assert plain.logits.shape == (*input_ids.shape, len(tokenizer))


CALL = '<tool_call>\n{{"name": "{name}", "arguments": {{"preference": "{p}"}}}}\n</tool_call>'
ASSISTANT_TEXTS = [
    "Reason. " + CALL.format(name="retrieve", p="jazz"),
    "Two. " + CALL.format(name="retrieve", p="jazz") + "\n" + CALL.format(name="retrieve", p="blues"),
    "Bad. " + CALL.format(name="retrieve", p="jazz") + '\n<tool_call>\n{"name": "retrieve"\n</tool_call>',
    'Bare {"name": "retrieve", "arguments": {"preference": "noir"}}',
    "Other. " + CALL.format(name="search", p="jazz"),
    '<tool_call>\n{"name": "retrieve", "arguments": {"preference": "x", "k": 2}}\n</tool_call>',
    "Ranked.\n<recommendation_list>\n1. A\n</recommendation_list>",
    "<tool_call> " + CALL.format(name="retrieve", p="nested"),
    'Unclosed <tool_call>\n{"name": "retrieve", "arguments": {"preference": "x"}}',
]


@pytest.mark.parametrize("text", ASSISTANT_TEXTS)
def test_env_and_trl_read_the_same_tool_calls(tokenizer, text):
    """One definition of a tool call: the chat codec runs exactly the calls TRL parses (and would execute)."""
    trl_calls = trl_parse(tokenizer, text).get("tool_calls", [])
    action = ChatCodec().parse(text)
    assert len(action.calls) == len(trl_calls) and (action.kind == "tool_call") == bool(trl_calls)
    for request, call in zip(action.calls, trl_calls, strict=True):
        function = call["function"]
        runs = function["name"] == "retrieve" and set(function["arguments"]) == {"preference"}
        assert request.runs == runs and (not runs or request.preference == function["arguments"]["preference"])


def test_a_bare_json_tool_call_is_a_call_nowhere(dataset, tokenizer):
    """A JSON call without <tool_call> tags: TRL parses no call, the env takes a malformed segment, and the format
    check counts no tool call, whether the env was stepped or the episode was ended with TRL's completion."""
    bare = 'Searching. {"name": "retrieve", "arguments": {"preference": "noir"}}'
    answer = "Ranked.\n" + ChatCodec().render_answer([f"Title {i}" for i in range(10)])
    assert not trl_parse(tokenizer, bare).get("tool_calls")
    env = random_stack(dataset, StackConfig(env=EnvConfig(protocol="chat"))).make_env()
    env.reset(seed=0)
    *_, info = env.step(bare)
    assert info["action"] == "malformed" and info["n_tool_calls"] == 0 and env.episode.n_failed_calls == 0
    *_, info = env.step(answer)
    stepped = info["deeprec"]
    adapter = DeepRecToolEnv(env)
    adapter.reset(user=stepped.user, split="train")
    finished = adapter._finish([{"role": "assistant", "content": bare}, {"role": "assistant", "content": answer}])
    for episode in (stepped, finished):
        assert episode.tool_calls == [] and episode.n_failed_calls == 0
        assert episode.format_problems == (PROBLEM_NO_TOOL_CALL,)


def test_scripted_copy_teacher_makes_the_scripted_calls_and_answers_the_first_list(dataset, stack):
    users = [int(u) for u in dataset.eval_users("train")[:4]]
    scripted = teacher_episodes(RolloutPool(), stack, {"split": "train"}, users, "scripted", 4, 0)
    copying = teacher_episodes(RolloutPool(), stack, {"split": "train"}, users, "scripted-copy", 4, 0)
    for fused, copied in zip(scripted, copying, strict=True):
        assert copied.preferences == fused.preferences and len(copied.tool_calls) == 4
        assert copied.format_ok and copied.ranked_ids == copied.tool_calls[0].item_ids[: copied.rec_k]
    assert any(c.ranked_ids != f.ranked_ids for f, c in zip(scripted, copying, strict=True))


def test_teacher_answers_by_handle_exactly_what_it_would_name_by_title(dataset, stack):
    users = [int(u) for u in dataset.eval_users("train")[:6]]
    by_title = teacher_episodes(RolloutPool(), stack, {"split": "train"}, users, "scripted", 3, 0)
    by_handle = teacher_episodes(
        RolloutPool(), stack, {"split": "train", "item_refs": "handles"}, users, "scripted", 3, 0
    )
    for titled, handled in zip(by_title, by_handle, strict=True):
        assert handled.ranked_ids == titled.ranked_ids and handled.format_ok and handled.n_invalid == 0
        assert handled.answer_lines == tuple(handled.handles[i] for i in handled.ranked_ids)


def test_training_episodes_span_cut_points_and_the_filter_keeps_what_the_tool_finds(dataset, stack):
    from agents.training.config import GRPOStageConfig
    from experiments.common import seeded_sample as sample_episodes
    from experiments.train import train_episodes, trainable_episodes

    episodes = train_episodes(dataset, 3)
    expected = [(int(u), c) for u in dataset.eval_users("train") for c in range(dataset.n_cuts(int(u), 3))]
    assert [tuple(row) for row in episodes.tolist()] == expected and set(episodes[:, 1]) == {0, 1, 2}
    sample = sample_episodes(episodes, 20, seed=1)
    assert len(sample) == 20 and (sample_episodes(episodes, 20, seed=1) == sample).all()
    assert {tuple(r) for r in sample.tolist()} <= set(expected) and len(sample_episodes(episodes, 0, 1)) == len(
        episodes
    )
    stage = GRPOStageConfig(episodes=0, difficulty_top=10)
    kept = {tuple(r) for r in trainable_episodes(stack, stage, 3, seed=0).tolist()}
    for user, cut in expected:
        history, target = dataset.history_and_target(user, "train", cut)
        found = stack.retriever.retrieve([history], [""], 10)[0]
        assert ((user, cut) in kept) == (target in found)
    teacher = teacher_episodes(
        RolloutPool(), stack, {"split": "train"}, sample[:, 0], "scripted-copy", 4, 0, sample[:, 1]
    )
    assert [(e.user, e.cut) for e in teacher] == [tuple(r) for r in sample.tolist()]


def test_scripted_answers_fill_up_when_a_history_card_names_a_retrieved_item(dataset):
    from agents.baselines import ScriptedCopyAgent

    agent = ScriptedCopyAgent(dataset, protocol="chat", rec_k=5)
    agent.history = [3]  # a card of the prompt matched item 3, which shares its title with the user's real item
    info = {"tool_calls": [{"item_ids": [1, 2, 3, 4, 5]}, {"item_ids": [6, 3, 7]}]}
    assert agent.fused(info) == [1, 2, 4, 5, 6, 7]


def test_requests_reach_the_prompt_the_record_and_the_trm_request_baseline(dataset, stack):
    from omegaconf import OmegaConf

    from deeprec_env.protocol import REQUEST_LEAD, REQUEST_NOTE
    from deeprec_env.requests import user_request
    from experiments.evaluate import id_ranker

    fields = {"requests": True, "request_uninformative": 0.3, "request_misleading": 0.3}
    users = dataset.eval_users("test")[:20]
    _, queries = id_ranker(OmegaConf.create({"split": "test", "seed": 0}), stack, "trm-request", users, fields)
    env = stack.make_env(**fields)
    kinds = set()
    for user in users:
        obs, info = env.reset(options={"user": int(user), "split": "test"})
        episode = env.episode
        shown = user_request(dataset, "test", int(user), 0, episode.target, 0.3, 0.3)
        assert (episode.request, episode.request_kind) == (shown.text, shown.kind) == (queries(int(user)), shown.kind)
        assert info["request"] == shown.text
        system, message = json.loads(obs)
        assert message["content"].endswith(f"{REQUEST_LEAD}{shown.text}") and REQUEST_NOTE in system["content"]
        kinds.add(shown.kind)
    assert kinds == {"informative", "uninformative", "misleading"}
    plain = stack.make_env()
    obs, info = plain.reset(options={"user": int(users[0]), "split": "test"})
    assert info["request"] == "" and REQUEST_LEAD not in obs and REQUEST_NOTE not in obs
    with pytest.raises(ValueError, match="request_misleading"):
        stack.make_env(requests=True, request_uninformative=0.6, request_misleading=0.6)


def test_scripted_request_asks_with_the_request_first_and_answers_its_list(dataset, stack):
    users = [int(u) for u in dataset.eval_users("train")[:6]]
    asked = teacher_episodes(
        RolloutPool(), stack, {"split": "train", "requests": True}, users, "scripted-request", 3, 0
    )
    copied = teacher_episodes(RolloutPool(), stack, {"split": "train"}, users, "scripted-copy", 3, 0)
    plain = teacher_episodes(RolloutPool(), stack, {"split": "train"}, users, "scripted-request", 3, 0)
    for episode, copy_episode, without in zip(asked, copied, plain, strict=True):
        assert episode.preferences[0] == normalize_preference(episode.request) and episode.format_ok
        assert episode.ranked_ids == episode.tool_calls[0].item_ids[: episode.rec_k]
        assert episode.preferences[1:] == copy_episode.preferences[:-1]
        assert without.ranked_ids == copy_episode.ranked_ids and without.preferences == copy_episode.preferences


def test_the_request_handle_asks_the_tool_for_the_request_itself(dataset, stack):
    from deeprec_env.protocol import REQUEST_HANDLE

    users = [int(u) for u in dataset.eval_users("train")[:6]]
    env = {"split": "train", "requests": True}
    by_text = teacher_episodes(RolloutPool(), stack, env, users, "scripted-request", 3, 0)
    by_handle = teacher_episodes(RolloutPool(), stack, env | {"item_refs": "handles"}, users, "scripted-request", 3, 0)
    for text, handle in zip(by_text, by_handle, strict=True):
        asking = next(m for m in handle.transcript if m["role"] == "assistant")
        assert REQUEST_HANDLE in asking["content"] + json.dumps(asking.get("tool_calls"))
        assert handle.preferences == text.preferences and handle.preferences[0] == normalize_preference(text.request)
        assert [c.item_ids for c in handle.tool_calls] == [c.item_ids for c in text.tool_calls]
        assert handle.ranked_ids == text.ranked_ids
    plain = stack.make_env(item_refs="handles", protocol="chat")
    plain.reset(options={"user": users[0], "split": "train"})
    plain.run_tool(f"{REQUEST_HANDLE} drama")
    assert plain.episode.tool_calls[0].preference == f"{REQUEST_HANDLE} drama"  # no request: nothing to name
    asked = stack.make_env(item_refs="handles", protocol="chat", requests=True)
    asked.reset(options={"user": users[0], "split": "train"})
    asked.run_tool(f"{REQUEST_HANDLE}; drama")
    assert asked.episode.tool_calls[0].preference == normalize_preference(f"{asked.episode.request}; drama")


def test_hedge_teachers_share_two_searches_and_differ_only_in_the_answer(dataset, stack):
    users = [int(u) for u in dataset.eval_users("train")[:6]]
    env = {"split": "train", "requests": True, "request_uninformative": 0.0, "request_misleading": 0.0}
    play = {
        name: teacher_episodes(RolloutPool(), stack, env | {"item_refs": "handles"}, users, name, 3, 0)
        for name in ("scripted-hedge", "scripted-hedge-first", "scripted-halves")
    }
    for hedge, first, halves in zip(*play.values(), strict=True):
        assert hedge.preferences == first.preferences == halves.preferences
        assert list(hedge.preferences) == [normalize_preference(hedge.request), ""]
        assert all(e.format_ok and e.n_invalid == 0 for e in (hedge, first, halves))
        request_list, history_list = (list(call.item_ids) for call in hedge.tool_calls)
        assert list(first.ranked_ids) == request_list[: first.rec_k]
        agreed = [i for i in request_list if i in history_list]
        assert list(hedge.ranked_ids[: len(agreed)]) == agreed[: hedge.rec_k]
        rest = [i for pair in zip(request_list, history_list, strict=True) for i in pair if i not in agreed]
        assert list(hedge.ranked_ids[len(agreed) :]) == list(dict.fromkeys(rest))[: hedge.rec_k - len(agreed)]
        added = [i for i in history_list if i not in request_list]
        assert list(halves.ranked_ids) == (request_list[:5] + added[:5] + request_list[5:])[: halves.rec_k]
        if len(added) >= 5:
            assert halves.answer_lines == ("#1", "#2", "#3", "#4", "#5", "#11", "#12", "#13", "#14", "#15")


def test_a_list_of_teachers_shares_the_warm_start_episodes_out_seeded(dataset, stack):
    from agents.training.config import WarmStartConfig
    from experiments.train import sampled_teacher_episodes

    teachers = ["scripted-hedge-first", "scripted-hedge"]
    config = WarmStartConfig(teacher=teachers, episodes=12)
    mixed = sampled_teacher_episodes(RolloutPool(), stack, {}, config, 3, 4, seed=5)
    again = sampled_teacher_episodes(RolloutPool(), stack, {}, config, 3, 4, seed=5)
    alone = sampled_teacher_episodes(
        RolloutPool(), stack, {}, WarmStartConfig(teacher=teachers[0], episodes=12), 3, 4, 5
    )
    assert len(mixed) == 12 and [(e.user, e.cut) for e in mixed] == [(e.user, e.cut) for e in again]
    assert {(e.user, e.cut) for e in mixed} == {(e.user, e.cut) for e in alone}
    by_first = [list(e.ranked_ids) == list(e.tool_calls[0].item_ids[: e.rec_k]) for e in mixed]
    assert by_first[:6] == [True] * 6 and not all(by_first[6:])


def _trl_completion(episode) -> list[dict]:
    """The scripted episode as TRL hands a completion to reward functions: assistant messages with structured tool
    calls, and tool messages."""
    return [m for m in sft_messages(episode) if m["role"] in ("assistant", "tool")]


class CountingRetriever:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    @property
    def n_items(self):
        return self.inner.n_items

    def retrieve(self, *args, **kwargs):
        self.calls += 1
        return self.inner.retrieve(*args, **kwargs)


def test_adapter_scores_the_live_episode_without_retrieving_again(dataset, stack):
    user = int(dataset.eval_users("train")[0])
    episode = teacher_episodes(RolloutPool(), stack, {"split": "train"}, [user], "scripted", 1, 0)[0]
    counting = CountingRetriever(stack.retriever)
    env = stack.make_env()
    env.retriever = counting
    adapter = DeepRecToolEnv(env)
    adapter.reset(user=user, split="train")
    results = [adapter.retrieve(call.preference) for call in episode.tool_calls]  # as TRL runs the tool calls
    assert results == [m["content"] for m in episode.transcript if m["role"] == "tool"]
    names, weights = active_components(adapter.env)
    rewards = [fn([_trl_completion(episode)], [adapter])[0] for fn in component_rewards(names)]
    scored = adapter._finish(_trl_completion(episode))
    assert counting.calls == len(episode.tool_calls)  # scoring retrieved nothing
    assert scored.ranked_ids == episode.ranked_ids and scored.format_ok
    assert np.dot(rewards, weights) == pytest.approx(scored.reward_total) == pytest.approx(episode.reward_total)


def test_adapter_tool_schema_is_the_protocol_schema():
    from transformers.utils import get_json_schema

    assert get_json_schema(DeepRecToolEnv.retrieve) == TOOL_SCHEMA


def test_adapter_scores_an_unfinished_completion_as_a_format_failure(dataset, stack):
    adapter = DeepRecToolEnv(stack.make_env())
    adapter.reset(user=int(dataset.eval_users("train")[1]), split="train")
    episode = adapter._finish([{"role": "assistant", "content": "I think the user likes"}])
    assert episode.truncated_by == "no answer" and episode.format_problems
    assert episode.reward_total == pytest.approx(-1.0)


def test_adapter_refuses_the_tags_codec(stack):
    with pytest.raises(ValueError, match="chat codec"):
        DeepRecToolEnv(stack.make_env(protocol="tags"))


PIPELINE = [
    "dataset=synthetic",
    "dataset.synthetic.n_users=80",
    "dataset.synthetic.n_items=60",
    "prepare.models=[trm]",
    "trm.train.max_steps=60",
    "trm.train.eval_every=30",
    "sasrec.train.max_steps=60",  # the TRM's backbone, trained first
    "sasrec.train.eval_every=30",
    "policy.vocab_size=400",
    "policy.n_layer=1",
    "policy.n_head=2",
    "policy.n_embd=32",
    "policy.n_positions=2048",
    "policy.max_new_tokens=16",
    "trainer.n_envs=8",
    "trainer.env.max_turns=3",
    "trainer.env.recall_k=5",
    "trainer.warm_start.episodes=8",
    "trainer.warm_start.num_train_epochs=1",
    "trainer.warm_start.per_device_train_batch_size=4",
    "trainer.warm_start.save_steps=1",
    "trainer.validation.users=4",
    "trainer.evaluation.users=6",
    "trainer.evaluation.valid_users=4",
    "trainer.evaluation.agents=[pop,trm,scripted]",
    "eval.bootstrap=50",
    "trainer.stage1.max_steps=3",
    "trainer.stage2.max_steps=6",
    "trainer.stage2.scale_rewards=batch",
    "trainer.stage2.loss_type=dr_grpo",
    "trainer.stage2.num_iterations=2",
    *[
        f"trainer.{stage}.{key}"
        for stage in ("stage1", "stage2")
        for key in (
            "num_generations=2",
            "per_device_train_batch_size=2",
            "max_completion_length=48",
            "episodes=6",
            "difficulty_filter=false",
            "save_steps=1",
            "eval_every=2",
        )
    ],
]


def test_last_checkpoint_tells_a_finished_phase_from_an_interrupted_one(tmp_path):
    from agents.training.checkpoints import last_checkpoint

    assert last_checkpoint(tmp_path / "missing") == (None, False)
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "max_steps": 12})
        )
    assert last_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-10"), False)
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text(json.dumps({"global_step": 12, "max_steps": 12}))
    assert last_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-12"), True)
    (tmp_path / "checkpoint-13").mkdir()  # cut short by a kill: no trainer state yet
    assert last_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-12"), True)


def _train_command(tmp_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train",
        *PIPELINE,
        f"artifacts={tmp_path / 'artifacts'}",
        f"trainer.output_dir={tmp_path / 'run'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]


def test_validation_history_is_written_as_it_happens_and_continued_on_resume(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from agents.training import monitor

    monkeypatch.setattr(monitor, "LLMPolicy", lambda *args: None)
    monkeypatch.setattr(monitor, "policy_episodes", lambda *args, **kwargs: [SimpleNamespace()])
    monkeypatch.setattr(monitor, "transcript_text", lambda episode: "")
    scores = iter(range(100))
    monkeypatch.setattr(monitor, "validation_scalars", lambda episodes: {"valid/reward": float(next(scores))})
    path = tmp_path / "stage2" / "validation.json"

    def callback():
        return monitor.ValidationCallback(None, {}, [1], tmp_path / "tb", 2, PolicyConfig(), 1, "stage2", path, None)

    def history():
        return [(h["step"], h["valid/reward"]) for h in json.loads(path.read_text())["history"]]

    model = SimpleNamespace(training=True, train=lambda mode: None, eval=lambda: None)
    first = callback()
    for step in (1, 2, 3, 4):
        first.on_step_end(None, SimpleNamespace(global_step=step), None, model=model)
    assert history() == [(2, 0.0), (4, 1.0)]  # on disk before training ends (a kill loses nothing validated)

    resumed = callback()  # resumed from a checkpoint at step 3: step 4 is redone and its validation replaced
    for step in (4, 5, 6):
        resumed.on_step_end(None, SimpleNamespace(global_step=step), None, model=model)
    resumed.on_train_end(None, SimpleNamespace(global_step=6), None, model=model)
    assert history() == [(2, 0.0), (4, 2.0), (6, 3.0)]

    callback().on_train_end(None, SimpleNamespace(global_step=6), None, model=model)  # already validated at 6
    assert history() == [(2, 0.0), (4, 2.0), (6, 3.0)]


def test_pipeline_runs_end_to_end_and_resumes_stage2_after_a_kill_on_ray_workers(tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    first = subprocess.Popen(
        _train_command(tmp_path),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (run / "stage2" / "checkpoint-1" / "trainer_state.json").exists():  # written last
        assert first.poll() is None, f"training stopped before stage 2: {first.stderr.read()[-2000:]}"
        assert time.time() < deadline, "stage 2 never wrote a checkpoint"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group, mid-stage
    first.wait()
    assert not (run / "stage2" / "final").exists()

    # the rerun plays every rollout (GRPO generation, validation, evaluation) on two Ray rollout workers
    on_ray = ["rollout.backend=ray", "rollout.workers=2", "rollout.tasks_per_batch=4", "ray.num_cpus=2"]
    ray_before = ray_processes()
    second = subprocess.run(_train_command(tmp_path) + on_ray, cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not ray_processes_left(ray_before)
    log = second.stderr + second.stdout
    assert "warm start already done" in log and "stage1 already done" in log
    # mid-stage it resumes; killed after its last checkpoint (a slow machine), it finishes from that checkpoint
    assert "stage2/checkpoint-" in log and ("resumes from" in log or "already reached its last step" in log)
    state = json.loads((run / "stage2" / "final" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    trl_args = torch.load(run / "stage2" / "checkpoint-6" / "training_args.bin", weights_only=False)
    # the stage's config reaches TRL
    assert (trl_args.scale_rewards, trl_args.loss_type, trl_args.num_iterations) == ("batch", "dr_grpo", 2)
    for path in ("report.md", "evaluation/results.json", "validation_comparison.json", "curve_stage2.png"):
        assert (run / path).exists(), path
    comparison = json.loads((run / "validation_comparison.json").read_text())
    with (run / "validation_rewards.csv").open() as rows:
        per_user = list(csv.DictReader(rows))
    assert list(per_user[0]) == ["user", "warm-start", "grpo-stage2"] and len(per_user) == comparison["users"] == 4
    differences = [float(row["grpo-stage2"]) - float(row["warm-start"]) for row in per_user]
    assert np.mean(differences) == pytest.approx(comparison["reward grpo-stage2-vs-warm-start"]["mean"], abs=1e-5)
    timings = json.loads((run / "timings.json").read_text())  # phases finished before the kill keep their times
    assert list(timings) == ["warm_start", "stage1", "stage2", "evaluate"] and min(timings.values()) > 0
    for phase in ("warm_start", "stage1"):  # finished before the kill: their validations survive the rerun
        assert json.loads((run / phase / "validation.json").read_text())["history"], phase
    stage2_checks = json.loads((run / "stage2" / "validation.json").read_text())["history"]
    assert [check["step"] for check in stage2_checks] == [2, 4, 6]  # eval_every=2, across the kill
    records = {r["agent"]: r for r in json.loads((run / "evaluation" / "results.json").read_text())}
    assert set(records) == {"pop", "trm", "scripted", "warm-start", "grpo-stage2"}
    assert records["grpo-stage2"]["n_users"] == 6
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.relative_to(run / "tensorboard").parts[0] for p in events} >= {"warm_start", "stage1", "stage2"}

    evaluation = subprocess.run(  # the trained policy, evaluated from the command line with no env override
        [*_evaluate_command(tmp_path, run), "agent=llm", "eval.max_users=6"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    (llm,) = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    trained = records["grpo-stage2"]
    assert llm["agent"] == "llm" and llm["n_users"] == trained["n_users"] == 6
    assert llm["metrics"]["ndcg@10"] == trained["metrics"]["ndcg@10"]  # the trainer's own evaluation, reproduced
    assert llm["episode"]["reward"] == trained["episode"]["reward"]
    settings = json.loads((run / "stage2" / "final" / "deeprec.json").read_text())
    assert settings["env"]["protocol"] == "chat" and settings["env"]["max_turns"] == 3

    import experiments.config  # noqa: F401  (registers the experiments schema)
    from deeprec_env.config import compose
    from experiments.evaluate import policy_settings

    conflicting = compose("config", [*PIPELINE, "agent=llm", "env.max_turns=5"])
    with pytest.raises(SystemExit, match=r"env.max_turns=5 \(trained with 3\).*eval.force_env=true"):
        policy_settings(conflicting, {"llm": run / "stage2" / "final"})


def _evaluate_command(tmp_path: Path, run: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.evaluate",
        *PIPELINE,
        f"policy.path={run / 'stage2' / 'final'}",
        f"artifacts={tmp_path / 'artifacts'}",
        f"hydra.run.dir={tmp_path / 'evaluate'}",
    ]


def test_python_defaults_give_the_command_line_settings(tmp_path):
    """The warm start and both GRPO stages called from Python with default arguments resolve to the same TRL
    settings as the command line's defaults; the policy and env defaults are the command line's too."""
    import dataclasses

    import experiments.config  # noqa: F401  (registers the experiments schema)
    from agents.training.config import GRPOStageConfig, TrainerConfig, WarmStartConfig
    from agents.training.grpo import grpo_config
    from agents.training.warm_start import sft_config
    from deeprec_env.config import compose, typed

    cfg = compose("config", [])
    cli = typed(TrainerConfig, cfg.trainer)
    python = TrainerConfig()
    assert cli.output_dir == "runs/ml-100k-tiny" and python.output_dir == "runs/${dataset.name}-${policy.name}"
    assert dataclasses.replace(cli, output_dir=python.output_dir) == python
    assert typed(PolicyConfig, cfg.policy) == PolicyConfig() and typed(EnvConfig, cfg.env) == EnvConfig()
    assert sft_config(WarmStartConfig(), tmp_path).to_dict() == sft_config(cli.warm_start, tmp_path).to_dict()
    env = dataclasses.replace(EnvConfig(), **cli.env)
    for from_python, from_cli in ((GRPOStageConfig(), cli.stage2), (python.stage1, cli.stage1)):
        settings = grpo_config(from_python, env, [1.0, 1.0], tmp_path).to_dict()
        assert settings == grpo_config(from_cli, env, [1.0, 1.0], tmp_path).to_dict()
    stage2 = grpo_config(GRPOStageConfig(), env, [1.0], tmp_path)
    assert (stage2.learning_rate, stage2.num_generations, stage2.max_tool_calling_iterations) == (5e-5, 8, 4)
    assert stage2.generation_kwargs is None  # TRL's default: every turn may use the whole completion budget
    capped = grpo_config(GRPOStageConfig(), env, [1.0], tmp_path, turn_tokens=256)
    assert capped.generation_kwargs == {"max_new_tokens": 256}


def test_grpo_step_bench_splits_the_whole_step_into_nested_sections(tmp_path):
    import experiments.config  # noqa: F401  (registers the experiments schema)
    from deeprec_env.config import compose
    from experiments.bench import bench_grpo_step

    overrides = [*PIPELINE, f"artifacts={tmp_path}", "bench.grpo_steps=1", "bench.raw_tokens=8", "threads=1"]
    result = bench_grpo_step(compose("config", overrides))
    assert result["steps"] == 1 and result["generate_calls"] >= 1 and result["generated_tokens_per_step"] > 0
    assert result["tool_calls"] >= 0 and result["raw_generation_tokens_per_s"] > 0 and result["throughput_ratio"] > 0
    sections = result["seconds"]
    assert set(sections) == {"generation", "tool", "env", "scoring", "other_rollout", "update"}
    assert all(value >= 0 for value in sections.values()), sections  # each section nests where the bench assumes
    assert sum(sections.values()) == pytest.approx(result["step_s"], abs=0.2)


def test_warm_start_bench_times_both_trainers_on_the_same_teacher_batches(tmp_path):
    import experiments.config  # noqa: F401  (registers the experiments schema)
    from deeprec_env.config import compose
    from experiments.bench import bench_warm_start_step

    overrides = [*PIPELINE, f"artifacts={tmp_path}", "bench.warm_start_batches=2", "threads=1"]
    result = bench_warm_start_step(compose("config", overrides))
    assert result["steps"] == 2 and result["examples_per_step"] == 4  # the PIPELINE's warm-start batch
    assert 0 < result["learned_tokens_per_step"] < result["tokens_per_step"]  # assistant turns only
    assert set(result["step_s"]) == {"trl_sft_trainer", "policy_sft_trainer"}
    assert min(result["step_s"].values()) > 0 and result["speedup"] > 0


def test_training_bench_validates_at_the_recipes_cadence_and_times_the_cached_run_at_its_speed(tmp_path):
    import experiments.config  # noqa: F401  (registers the experiments schema)
    from deeprec_env.config import compose
    from experiments.bench import bench_train
    from experiments.prepare import prepare

    cfg = compose("config", [*PIPELINE, f"artifacts={tmp_path}", "bench.steps=40", "threads=1"])
    fresh = bench_train(cfg, "sasrec")
    assert fresh["full_training"] is None  # nothing cached yet
    assert fresh["steps_timed"] == 40 and fresh["validations_timed"] == 2  # eval_every=30: steps 30 and 40
    prepare(cfg)
    timed = bench_train(cfg, "sasrec")
    cached = timed["full_training"]
    assert cached["steps"] == 60 and cached["seconds"] > 0  # the prepared run, read from its training log
    at_this_speed = cached["steps"] * timed["seconds_per_100_steps"] / 100
    assert cached["seconds_at_this_speed"] == pytest.approx(at_this_speed, abs=1)


def test_policies_agree_on_what_shapes_evaluation_episodes_fields_added_later_read_as_defaults(tmp_path):
    from dataclasses import replace

    import experiments.config  # noqa: F401  (registers the experiments schema)
    from agents.llm import load_policy_settings, save_policy_settings
    from deeprec_env.config import compose
    from experiments.evaluate import policy_settings

    env = EnvConfig(protocol="chat", item_refs="handles")
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        save_policy_settings(tmp_path / name, "ml-100k", env, PolicyConfig())
    old = json.loads((tmp_path / "old" / "deeprec.json").read_text())
    for field in ("requests", "request_misleading", "train_cuts"):  # fields added after the old policy was trained
        del old["env"][field]
    (tmp_path / "old" / "deeprec.json").write_text(json.dumps(old))
    assert load_policy_settings(tmp_path / "old") == load_policy_settings(tmp_path / "new")
    save_policy_settings(tmp_path / "new", "ml-100k", replace(env, train_cuts=5), PolicyConfig())  # train split only
    trained_env, _ = policy_settings(compose("config", []), {"a": tmp_path / "old", "b": tmp_path / "new"})
    assert trained_env["item_refs"] == "handles" and trained_env["requests"] is False


def test_evaluation_compares_the_warm_start_with_the_last_grpo_stage_that_ran(tmp_path):
    from experiments.train import compared_models

    warm, stage1, stage2 = (tmp_path / name for name in ("warm", "stage1", "stage2"))
    both = {"warm-start": warm, "grpo-stage1": stage1, "grpo-stage2": stage2}
    assert compared_models(both) == {"warm-start": warm, "grpo-stage2": stage2}
    assert compared_models({"warm-start": warm, "grpo-stage1": stage1}) == {"warm-start": warm, "grpo-stage1": stage1}
    assert compared_models({"grpo-stage2": stage2}) == {"grpo-stage2": stage2}


def test_recgpt_preset_scores_stage1_with_the_recgpt_terms_and_no_hit_terms():
    import experiments.config  # noqa: F401  (registers the experiments schema)
    from deeprec_env.config import compose
    from rewards.hierarchical import load_reward_config

    cfg = compose("config", ["+preset=recgpt"])
    assert (cfg.reward.name, cfg.trainer.stage1.reward, cfg.trainer.validation.reward) == (
        "recgpt",
        "recgpt-cold",
        "recgpt",
    )
    stage1 = load_reward_config(compose("config", ["reward=recgpt-cold"]).reward)
    stage2 = load_reward_config(cfg.reward)
    assert stage1.hit_rank.weight == stage1.point.weight == 0 and stage2.hit_rank.weight > 0
    for name in ("format", "interest", "explanation", "invocation", "diversity"):
        assert getattr(stage1, name).weight == getattr(stage2, name).weight > 0, name


def test_recgpt_preset_gives_the_policy_a_turn_that_holds_the_teachers_answer_with_reasons(dataset, stack):
    """Ten answer lines with reasons are longer than the default turn: the preset's turn budget, counted with the
    policy's own tokenizer (its vocabulary size, trained on the preset's protocol), holds the teacher's answers."""
    import dataclasses

    import experiments.config  # noqa: F401  (registers the experiments schema)
    from agents.baselines import TRMAgent
    from agents.rollout import rollout
    from deeprec_env.config import compose

    cfg = compose("config", ["+preset=recgpt"])
    env = dict(cfg.trainer.env)
    protocol = dataclasses.replace(EnvConfig(), **env)
    policy_tokenizer = train_tokenizer(dataset, cfg.policy.vocab_size, protocol)
    vector_env = stack.make_vector_env(4, autoreset_mode="Disabled", **env)
    users = [int(u) for u in dataset.eval_users("valid")[:16]]
    episodes = rollout(vector_env, lambda: TRMAgent(dataset, "chat"), users, "valid", show_progress=False)
    answers = [e.transcript[-1]["content"] for e in episodes]
    assert all(len(e.answer_reasons) == 10 and all(e.answer_reasons) for e in episodes)
    lengths = [len(policy_tokenizer(answer)["input_ids"]) for answer in answers]
    assert max(lengths) <= cfg.policy.max_new_tokens, lengths
    assert max(lengths) > PolicyConfig().max_new_tokens * 0.75  # reasons take most of a default-length turn
