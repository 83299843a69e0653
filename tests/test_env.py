"""DeepRecEnv / DeepRecVectorEnv: the Gymnasium API and its wrappers, the scripted protocol for both codecs, limits,
fuzzing, any unicode end to end (step, the vector env, the GRPO reward path), failing retrievals, the format check of
what the env parsed, reward timing on every ending path, framework-driven episodes, batched retrieval that does not
depend on the batch, and registration."""

import json
import logging
import math
import time
import unicodedata
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import torch
from fakes import HashEncoder, synthetic_config
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import RecordEpisodeStatistics, TimeLimit
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import deeprec_env  # noqa: F401  (registers deeprec/DeepRec-v0)
from agents.baselines import ScriptedAgent
from agents.rollout import rollout
from agents.training.grpo import DeepRecToolEnv, component_rewards
from deeprec_env.data.source import load_dataset
from deeprec_env.env import DeepRecEnv, EnvConfig
from deeprec_env.protocol import (
    ITEMS_CLOSE,
    ITEMS_OPEN,
    PREF_CLOSE,
    PREF_OPEN,
    PROBLEM_NO_ANSWER,
    PROMPT_END,
    REC_CLOSE,
    REC_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_OPEN,
    TOOL_SCHEMA,
    ChatCodec,
    TagsCodec,
    normalize_preference,
    structured_call,
)
from deeprec_env.protocol.text import blocks
from deeprec_env.spaces import TextSpace
from deeprec_env.trm.model import ModelConfig, SequentialRecommender
from deeprec_env.trm.queries import item_aspects
from deeprec_env.trm.retriever import InProcessRetriever
from deeprec_env.vector import DeepRecVectorEnv, unbatch_info
from deeprec_env.wrappers import PerTurnReward, ScoreTruncated
from rewards import quantize

TEXT_DIM = 8
TAGS, CHAT = TagsCodec(), ChatCodec()
SYNTHETIC = synthetic_config(n_users=60, n_items=80, n_categories=4, min_len=6, max_len=15, seed=0)


class CountingRetriever:
    """Delegates to a retriever and records the batch size of every call."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[int] = []

    @property
    def n_items(self):
        return self.inner.n_items

    def retrieve(self, histories, queries, k, exclude_history=True):
        self.batches.append(len(histories))
        return self.inner.retrieve(histories, queries, k, exclude_history)


class FakeReward:
    """Process terms: `calls` (0.5 per tool call, at most 2 paid) and `format` (-1 unless the format is valid);
    outcome terms (gated by the format): `listed` (0.125 per valid listed item) and `hit` (1 if the target is
    listed). Dyadic values, so sums are exact. Counts its calls."""

    levels = {"calls": "process", "format": "process", "listed": "outcome", "hit": "outcome"}

    def __init__(self):
        self.calls = 0

    def __call__(self, episode):
        self.calls += 1
        ok = episode.format_ok
        terms = {
            "calls": 0.5 * min(len(episode.tool_calls), 2),
            "format": 0.0 if ok else -1.0,
            "listed": 0.125 * len(episode.ranked_ids) if ok else 0.0,
            "hit": 1.0 if ok and episode.target in episode.ranked_ids else 0.0,
        }
        return SimpleNamespace(total=sum(terms.values()), terms=terms)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(SYNTHETIC, tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def retriever(dataset):
    torch.manual_seed(0)
    item_text = torch.randn(dataset.n_items + 1, TEXT_DIM)
    item_text[0] = 0
    config = ModelConfig(max_len=10, hidden=16, n_layers=1, fuse_item_text=True, fuse_query=True)
    model = SequentialRecommender(dataset.n_items, config, item_text).eval()
    return InProcessRetriever(model, HashEncoder(TEXT_DIM))


def make_env(dataset, retriever, reward=None, render_mode=None, **config):
    return DeepRecEnv(dataset, retriever, reward, EnvConfig(**config), render_mode=render_mode)


def title(dataset, item):
    meta = dataset.items[item]
    return f"{meta.title} ({meta.year})" if meta.year is not None else meta.title


def answer_titles(dataset, info, n_valid=8):
    """n_valid titles of retrieved items, one unknown title, one repeat of the first: rec_k = n_valid + 2 lines."""
    pool = list(dict.fromkeys(i for call in info["tool_calls"] for i in call["item_ids"]))
    chosen = pool[:n_valid]
    lines = [title(dataset, i) for i in chosen] + ["Zzyzx Qqwerty Unfindable", title(dataset, chosen[0])]
    return chosen, lines


# --- gymnasium API --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_check_env_passes(dataset, retriever, protocol):
    env = make_env(dataset, retriever, FakeReward(), protocol=protocol)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_check_env_passes_through_gymnasium_make(dataset, retriever, protocol):
    """With a spec, check_env also runs the seeded-determinism, render-mode and close checks."""
    env_id = f"deeprec-test/Local-{protocol}-v0"
    gymnasium.register(env_id, entry_point=lambda **kw: make_env(dataset, retriever, FakeReward(), **kw))
    try:
        env = gymnasium.make(env_id, protocol=protocol)
        check_env(env.unwrapped)
        env = gymnasium.make(env_id, protocol=protocol, render_mode="ansi")
        obs, _ = env.reset(seed=0)
        env.step("thinking")
        text = env.render()
        assert isinstance(text, str) and ("thinking" in text) and (protocol == "chat" or text.startswith(obs))
    finally:
        gymnasium.registry.pop(env_id, None)


def test_text_space_accepts_any_string():
    space = TextSpace(max_length=10)
    assert "Amélie 中文 🙂 <|x|>" not in space  # 17 characters
    assert "Amélie 🙂" in space and "" in space and 3 not in space and b"abc" not in space
    space = TextSpace()
    space.seed(0)
    samples = [space.sample() for _ in range(20)]
    space.seed(0)
    assert samples == [space.sample() for _ in range(20)] and all(s in space for s in samples)


def test_reset_is_seeded_defaults_to_train_and_renders_history(dataset, retriever):
    env = make_env(dataset, retriever)
    users = [env.reset(seed=7)[1]["user"] for _ in range(3)]
    assert len(set(users)) == 1
    sampled = [env.reset()[1] for _ in range(20)]
    assert len({i["user"] for i in sampled}) > 1 and {i["split"] for i in sampled} == {"train"}
    assert {i["user"] for i in sampled} <= set(dataset.eval_users("train").tolist())
    obs, info = env.reset(options={"user": 5, "split": "valid"})
    history, target = dataset.history_and_target(5, "valid")
    assert (info["user"], info["split"], info["turn"], info["n_tool_calls"]) == (5, "valid", 0, 0)
    assert "target" not in info and "deeprec" not in info and "episode" not in info
    for i, item in enumerate(history[-20:], start=1):
        assert f"{i}. {dataset.item_card(int(item), 80)}" in obs
    assert obs.endswith(f"{THINK_OPEN}\n")


def test_train_episodes_draw_seeded_cut_points_and_take_a_given_one(dataset, retriever):
    env = make_env(dataset, retriever, train_cuts=4)
    user = next(int(u) for u in dataset.eval_users("train") if dataset.n_cuts(int(u), 4) == 4)
    cuts = [env.reset(options={"user": user})[0] and env.episode.cut for _ in range(40)]
    assert set(cuts) == {0, 1, 2, 3}
    again = make_env(dataset, retriever, train_cuts=4)
    again.reset(seed=3, options={"user": user})
    first = again.episode.cut
    assert all(again.reset(seed=3, options={"user": user})[0] and again.episode.cut == first for _ in range(3))
    for cut in range(4):
        obs, _ = env.reset(options={"user": user, "cut": cut})
        history, target = dataset.history_and_target(user, "train", cut)
        assert (env.episode.cut, env.episode.target) == (cut, target)
        assert obs.endswith(f"{dataset.item_card(int(history[-1]), 80)}{PROMPT_END}")
    env.reset(options={"user": user, "split": "valid"})  # evaluation splits never move their target
    assert (env.episode.cut, env.episode.target) == (0, dataset.history_and_target(user, "valid")[1])
    single = make_env(dataset, retriever)
    assert {single.reset(options={"user": user})[0] and single.episode.cut for _ in range(10)} == {0}


# --- scripted episodes ----------------------------------------------------------------------------------------


def test_tags_happy_path(dataset, retriever):
    reward = FakeReward()
    env = make_env(dataset, retriever, reward, protocol="tags")
    obs, info = env.reset(seed=0, options={"user": 3, "split": "test"})
    history, target = dataset.history_and_target(3, "test")

    segment = f"The user likes westerns. {PREF_OPEN} western; showdown {PREF_CLOSE} trailing junk the env drops"
    obs, r, term, trunc, info = env.step(segment)
    assert (r, term, trunc) == (0.0, False, False) and info["action"] == "tool_call"
    assert obs.startswith(f"\n{ITEMS_OPEN}\n1. ") and obs.rstrip().endswith(ITEMS_CLOSE)
    assert len([line for line in obs.splitlines() if line[:1].isdigit()]) == 20
    assert info["n_tool_calls"] == 1 and info["tool_calls"][0]["preference"] == "western; showdown"
    first = info["tool_calls"][0]["item_ids"]
    assert len(first) == 20 and not set(first) & set(history.tolist())
    assert "trailing junk" not in env.episode.transcript

    obs, r, term, trunc, info = env.step(f"Good. Now cooking. {PREF_OPEN} cooking; market {PREF_CLOSE}")
    assert not term and not trunc and len(info["tool_calls"][1]["item_ids"]) == 20
    assert [c.turn for c in env.episode.tool_calls] == [0, 1]
    assert [c.preference for c in env.episode.tool_calls] == ["western; showdown", "cooking; market"]
    assert reward.calls == 0  # the reward is computed once, at the end

    chosen, lines = answer_titles(dataset, info)
    obs, r, term, trunc, info = env.step(f"Ranking the westerns first.\n{THINK_CLOSE}\n{TAGS.render_answer(lines)}")
    assert (obs, term, trunc) == ("", True, False) and info["action"] == "answer"
    episode = info["deeprec"]
    assert list(episode.ranked_ids) == chosen and list(episode.answer_ids) == [*chosen, None, None]
    assert (episode.n_invalid, episode.n_duplicate) == (1, 1) and episode.format_ok and episode.target == target
    assert reward.calls == 1 and r == episode.reward_total == sum(episode.reward_terms.values())
    assert episode.reward_terms["calls"] == 1.0 and episode.reward_terms["listed"] == 1.0
    assert episode.n_turns == 3 and episode.n_malformed == 0 and not episode.truncated and episode.truncated_by is None


def test_chat_happy_path(dataset, retriever):
    reward = FakeReward()
    env = make_env(dataset, retriever, reward, protocol="chat")
    obs, info = env.reset(seed=0, options={"user": 3, "split": "test"})
    messages = json.loads(obs)
    assert messages == info["messages"] and [m["role"] for m in messages] == ["system", "user"]
    assert info["tools"] == [TOOL_SCHEMA]
    history, _ = dataset.history_and_target(3, "test")
    assert dataset.item_card(int(history[-1]), 80) in messages[1]["content"]

    obs, r, term, trunc, info = env.step("The user likes westerns. " + CHAT.render_tool_call("western; showdown"))
    (tool,) = json.loads(obs)
    assert tool["role"] == "tool" and len(tool["content"].splitlines()) == 20
    assert info["messages"][-2]["role"] == "assistant" and info["messages"][-1] == tool
    assert not term and not trunc and info["n_tool_calls"] == 1

    obs, r, term, trunc, info = env.step("Now cooking. " + CHAT.render_tool_call("cooking; market"))
    chosen, lines = answer_titles(dataset, info)
    obs, r, term, trunc, info = env.step("Westerns first, they fit best.\n" + CHAT.render_answer(lines))
    episode = info["deeprec"]
    assert term and not trunc and episode.format_ok
    assert list(episode.ranked_ids) == chosen and (episode.n_invalid, episode.n_duplicate) == (1, 1)
    assert reward.calls == 1 and r == episode.reward_total
    assert [m["role"] for m in episode.transcript] == ["assistant", "tool", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_item_handles_lead_results_and_name_answer_items_exactly(dataset, retriever, protocol):
    codec = TAGS if protocol == "tags" else CHAT
    env = make_env(dataset, retriever, FakeReward(), protocol=protocol, item_refs="handles", recall_k=10)
    obs, info = env.reset(seed=0, options={"user": 3, "split": "test"})
    assert "handle (#N)" in (obs if protocol == "tags" else json.loads(obs)[0]["content"])
    obs, *_, info = env.step("Westerns. " + codec.render_tool_call("western; showdown"))
    first = info["tool_calls"][0]["item_ids"]
    result = obs if protocol == "tags" else json.loads(obs)[0]["content"]
    cards = [dataset.item_card(i, 80) for i in first]
    assert [f"#{n} {card}" for n, card in enumerate(cards, start=1)] == [
        line for line in result.splitlines() if line.startswith("#")
    ]
    obs, *_, info = env.step("Romance. " + codec.render_tool_call("romance; paris"))
    second = info["tool_calls"][1]["item_ids"]
    handles = env.episode.handles
    assert sorted(handles.values(), key=lambda h: int(h[1:])) == [f"#{n}" for n in range(1, len(handles) + 1)]
    assert all(handles[i] == f"#{n}" for n, i in enumerate(first, start=1))  # a repeated item keeps its handle
    result = obs if protocol == "tags" else json.loads(obs)[0]["content"]
    assert [line.split(" ", 1)[0] for line in result.splitlines() if line.startswith("#")] == [
        handles[i] for i in second
    ]
    new = [i for i in second if i not in first]
    assert handles[new[0]] == f"#{len(first) + 1}"

    chosen = [new[0], first[2], first[0], first[3], first[4], first[5]]
    lines = [handles[chosen[0]], f"{handles[chosen[1]]} a title that is wrong", title(dataset, chosen[2])]
    lines += [f"{handles[i]}." for i in chosen[3:]] + ["#999", handles[chosen[0]], f"#998 {title(dataset, first[9])}"]
    lines.append(title(dataset, first[8]))
    close = f"\n{THINK_CLOSE}" if protocol == "tags" else ""
    *_, info = env.step(f"Mixed.{close}\n" + codec.render_answer(lines))
    episode = info["deeprec"]
    assert episode.format_ok and len(lines) == 10
    assert list(episode.ranked_ids) == [*chosen, first[9], first[8]]
    assert (episode.n_invalid, episode.n_duplicate) == (1, 1)  # "#999" names nothing; the second handle repeats


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_new_results_return_the_next_items_of_each_ranking_and_number_them_on(dataset, retriever, protocol):
    codec = TAGS if protocol == "tags" else CHAT
    fields = {"protocol": protocol, "item_refs": "handles", "recall_k": 5, "new_results": True}
    env = make_env(dataset, retriever, FakeReward(), **fields)
    env.reset(seed=0, options={"user": 3, "split": "test"})
    history = env.episode.history
    *_, info = env.step("Westerns. " + codec.render_tool_call("western"))
    if protocol == "chat":  # two calls of one message: the second leaves out what the first returned
        *_, info = env.step(
            "Again, and cooking. " + CHAT.render_tool_call("western") + "\n" + CHAT.render_tool_call("cooking")
        )
    else:
        for query in ("western", "cooking"):
            *_, info = env.step("More. " + TAGS.render_tool_call(query))
    first, again, cooking = (tuple(call["item_ids"]) for call in info["tool_calls"])
    deep = retriever.retrieve([history], ["western"], 10)[0][0].tolist()
    assert list(first + again) == deep  # the same query asked again: its next five items
    ranked = retriever.retrieve([history], ["cooking"], 20)[0][0].tolist()
    assert list(cooking) == [i for i in ranked if i not in first + again][:5]
    assert [env.episode.handles[i] for i in first + again + cooking] == [f"#{n}" for n in range(1, 16)]

    tool_env = DeepRecToolEnv(make_env(dataset, retriever, FakeReward(), **fields | {"protocol": "chat"}))
    tool_env.reset(user=3, split="test")
    served = "\n".join(tool_env.retrieve("western") for _ in range(2))
    assert [line.split(" ", 1)[0] for line in served.splitlines() if line.startswith("#")] == [
        f"#{n}" for n in range(1, 11)
    ]
    vec = DeepRecVectorEnv(dataset, retriever, 2, FakeReward(), EnvConfig(**fields), autoreset_mode="Disabled")
    vec.reset(options={"users": [3, 3], "split": "test"})
    for _ in range(2):
        *_, infos = vec.step(["W. " + codec.render_tool_call("western")] * 2)
    for sub in range(2):
        assert [item for call in unbatch_info(infos, sub)["tool_calls"] for item in call["item_ids"]] == deep


def test_item_refs_must_be_known(dataset, retriever):
    with pytest.raises(ValueError, match="env.item_refs"):
        make_env(dataset, retriever, item_refs="ids")


def test_chat_runs_every_call_of_a_message_in_one_retrieval(dataset, retriever):
    counting = CountingRetriever(retriever)
    env = make_env(dataset, counting, FakeReward(), protocol="chat")
    env.reset(seed=0)
    two = "Both sides. " + CHAT.render_tool_call("western") + "\n" + CHAT.render_tool_call("cooking")
    obs, r, term, trunc, info = env.step(two)
    assert counting.batches == [2] and [m["role"] for m in json.loads(obs)] == ["tool", "tool"]
    assert [c["preference"] for c in info["tool_calls"]] == ["western", "cooking"]
    assert [c.turn for c in env.episode.tool_calls] == [0, 0]
    message = {"role": "assistant", "content": "Structured.", "tool_calls": [structured_call("racing")]}
    obs, *_, info = env.step(message)  # an assistant message dict: its structured calls run as they are
    assert counting.batches == [2, 1] and info["tool_calls"][-1]["preference"] == "racing"
    assert env.episode.transcript[-2] == message


def test_failed_tool_call_gets_an_error_result_and_fails_the_format(dataset, retriever):
    env = make_env(dataset, retriever, FakeReward(), protocol="chat")
    env.reset(seed=0)
    bad = f'{TOOL_CALL_OPEN}{{"name": "search", "arguments": {{"preference": "x"}}}}{TOOL_CALL_CLOSE}'
    obs, *_ = env.step("Trying. " + bad)
    (tool,) = json.loads(obs)
    assert tool["role"] == "tool" and tool["content"].startswith("Error: unknown tool 'search'")
    assert env.episode.n_failed_calls == 1 and env.episode.tool_calls == []
    env.step(CHAT.render_tool_call("western"))
    _, lines = answer_titles(dataset, env._info())
    *_, info = env.step("Ranked.\n" + CHAT.render_answer(lines))
    assert "tool results do not match tool calls" in info["deeprec"].format_problems


def test_malformed_segment_gets_a_hint_and_counts(dataset, retriever):
    for protocol in ("tags", "chat"):
        env = make_env(dataset, retriever, protocol=protocol)
        env.reset(seed=1)
        obs, r, term, trunc, info = env.step("I am just thinking out loud")
        text = json.loads(obs)[0]["content"] if protocol == "chat" else obs
        assert "\n" not in text and "Expected" in text and REC_OPEN in text
        assert (r, term, trunc, info["action"], info["error"]) == (0.0, False, False, "malformed", "no action")
        assert env.episode.n_malformed == 1 and info["turn"] == 1


# --- limits ---------------------------------------------------------------------------------------------------


def call(protocol, preference="comedy"):
    return (TAGS if protocol == "tags" else CHAT).render_tool_call(preference)


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_tool_call_limit_truncates(dataset, retriever, protocol):
    reward = FakeReward()
    env = make_env(dataset, retriever, reward, protocol=protocol, max_tool_calls=2)
    env.reset(seed=0)
    for preference in ("comedy", "drama"):
        assert env.step(call(protocol, preference))[2:4] == (False, False)
    obs, r, term, trunc, info = env.step(call(protocol, "one too many"))
    episode = info["deeprec"]
    assert (obs, term, trunc, episode.truncated_by) == ("", False, True, "max_tool_calls")
    assert info["n_tool_calls"] == 2 and episode.truncated and episode.format_problems
    assert r == reward(episode).total == 1.0 + -1.0  # calls paid, format failed, outcome gated
    assert env.step("after the end") == ("", 0.0, False, True, env._info())
    assert env.step(call(protocol))[1:4] == (0.0, False, True)


def test_turn_limit_processes_the_last_segment_then_truncates(dataset, retriever):
    env = make_env(dataset, retriever, max_turns=3)
    env.reset(seed=0)
    assert env.step("thinking")[2:4] == (False, False)
    assert env.step("still thinking")[2:4] == (False, False)
    obs, r, term, trunc, info = env.step(call("tags"))
    assert (term, trunc, info["deeprec"].truncated_by, info["turn"]) == (False, True, "max_turns", 3)
    assert info["n_tool_calls"] == 1 and obs.startswith(f"\n{ITEMS_OPEN}")  # the last call ran
    assert env.episode.n_malformed == 2 and "no tool call" not in info["deeprec"].format_problems


def test_answer_on_the_last_turn_is_accepted(dataset, retriever):
    env = make_env(dataset, retriever, max_turns=2)
    env.reset(seed=0)
    env.step(call("tags"))
    obs, r, term, trunc, info = env.step(f"Done.\n{THINK_CLOSE}\n{TAGS.render_answer(['A'])}")
    assert (term, trunc) == (True, False)


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_huge_action_truncates_via_token_cap(dataset, retriever, protocol):
    env = make_env(dataset, retriever, FakeReward(), protocol=protocol)
    env.reset(seed=0)
    for huge in ("x" * 1_000_000, call(protocol, "y " * 500_000)):
        env.reset(seed=0)
        started = time.perf_counter()
        obs, r, term, trunc, info = env.step(huge)
        assert time.perf_counter() - started < 10
        assert (obs, term, trunc, info["deeprec"].truncated_by) == ("", False, True, "max_episode_tokens")
        assert math.isfinite(r) and info["n_tool_calls"] == 0 and env.episode.n_tokens <= 8192
        assert env.step(huge)[1:4] == (0.0, False, True)


def test_token_cap_counts_observations_with_a_custom_counter(dataset, retriever):
    words = lambda text: len(text.split())  # noqa: E731
    env = DeepRecEnv(dataset, retriever, config=EnvConfig(max_episode_tokens=1000), count_tokens=words)
    _, info = env.reset(seed=0)
    prompt_tokens = info["n_tokens"]
    obs, r, term, trunc, info = env.step(call("tags"))
    assert info["n_tokens"] == prompt_tokens + words(call("tags")) + words(obs)
    for _ in range(6):
        obs, r, term, trunc, info = env.step(call("tags", "more"))
        if trunc:
            break
    assert trunc and info["deeprec"].truncated_by == "max_episode_tokens" and obs.startswith(f"\n{ITEMS_OPEN}")


def test_non_string_actions_are_coerced(dataset, retriever):
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    env = make_env(dataset, retriever)
    env.reset(seed=0)
    for action in (None, 42, b"\xff", ["a", PREF_OPEN], Unprintable()):
        obs, r, term, trunc, info = env.step(action)
        assert isinstance(obs, str) and info["action"] == "malformed"
    env = make_env(dataset, retriever, protocol="chat")
    env.reset(seed=0)
    for message in ({"content": Unprintable()}, {"content": [Unprintable(), {"text": 5}]}, {"content": ["a", None]}):
        obs, r, term, trunc, info = env.step(message)
        assert isinstance(obs, str) and info["action"] == "malformed"


def test_step_before_reset_is_a_clear_error(dataset, retriever):
    with pytest.raises(RuntimeError, match="reset"):
        make_env(dataset, retriever).step("x")


def test_bad_config_is_one_clear_error(dataset, retriever):
    with pytest.raises(ValueError, match="protocol"):
        make_env(dataset, retriever, protocol="xml")
    with pytest.raises(ValueError, match="env.instructions"):
        make_env(dataset, retriever, instructions="short")
    with pytest.raises(ValueError, match="env.split"):
        make_env(dataset, retriever, split="all")
    with pytest.raises(ValueError, match="levels"):
        PerTurnReward(make_env(dataset, retriever, lambda ep: None))


# --- Gymnasium wrappers ---------------------------------------------------------------------------------------


def play(env, agent, **reset):
    """One episode of `agent` in a (wrapped) env: the final info and the rewards of every step."""
    obs, info = env.reset(**reset)
    agent.reset(obs, info)
    rewards = []
    while True:
        obs, r, term, trunc, info = env.step(agent.act(obs, info))
        rewards.append(r)
        if term or trunc:
            return info, rewards


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_standard_wrappers_stack_on_gymnasium_make(dataset, retriever, protocol):
    env_id = f"deeprec-test/Wrapped-{protocol}-v0"
    gymnasium.register(env_id, entry_point=lambda **kw: make_env(dataset, retriever, FakeReward(), **kw))
    try:
        made = gymnasium.make(env_id, protocol=protocol, max_episode_steps=10, disable_env_checker=False)
        assert "PassiveEnvChecker" in str(made) and "TimeLimit" in str(made)
        env = RecordEpisodeStatistics(ScoreTruncated(made))
        agent = ScriptedAgent(dataset, protocol=protocol)
        for seed in range(4):
            info, rewards = play(env, agent, seed=seed)
            episode = info["deeprec"]
            assert episode.format_ok and episode.truncated_by is None  # complete, answered episodes
            assert info["episode"]["r"] == pytest.approx(episode.reward_total) == pytest.approx(sum(rewards))
            assert info["episode"]["l"] == episode.n_turns == len(rewards)
    finally:
        gymnasium.registry.pop(env_id, None)


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_time_limit_and_max_turns_score_the_same_text_alike(dataset, retriever, protocol):
    segments = ["thinking", call(protocol, "comedy"), call(protocol, "drama")]
    results = {}
    for name, env in {
        "max_turns": make_env(dataset, retriever, FakeReward(), protocol=protocol, max_turns=3),
        "time_limit": ScoreTruncated(TimeLimit(make_env(dataset, retriever, FakeReward(), protocol=protocol), 3)),
    }.items():
        env.reset(seed=4)
        total = sum(env.step(segment)[1] for segment in segments[:-1])
        _, r, term, trunc, info = env.step(segments[-1])
        results[name] = (total + r, trunc, info["deeprec"].format_problems, info["deeprec"].reward_terms)
    assert results["max_turns"][:3] == results["time_limit"][:3] and results["max_turns"][1]
    assert results["max_turns"][3] == results["time_limit"][3] and results["max_turns"][0] == 0.5 * 2 - 1.0


# --- fuzzing --------------------------------------------------------------------------------------------------

FRAGMENTS = [
    THINK_OPEN, THINK_CLOSE, PREF_OPEN, PREF_CLOSE, ITEMS_OPEN, ITEMS_CLOSE, REC_OPEN, REC_CLOSE, TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, '{"name": "retrieve", "arguments": {"preference": ', '"comedy"}}', '"}',
    "{", "}", "[" * 2000, "\n", "1. ", "Kitchen Feast (1986)", "Coyote Showdown", "\x00", "🙂", "Assistant:", "…",
]  # fmt: skip
EXPANSIONS = {
    "<HUGE>": "x" * 300_000,
    "<HUGE_CALL>": TAGS.render_tool_call("y " * 100_000),
    "<MANY_TAGS>": PREF_OPEN * 5000 + PREF_CLOSE + REC_OPEN + "\n" * 1000 + REC_CLOSE,
}
SEGMENTS = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=40).map("".join),
    st.sampled_from(["", " ", "<HUGE>", "<HUGE_CALL>", "<MANY_TAGS>"]),  # expanded in the test (short reprs)
    st.builds(lambda p: TAGS.render_tool_call(p), st.text(max_size=50)),
    st.builds(lambda p: CHAT.render_tool_call(p), st.text(max_size=50)),
)


@pytest.fixture(scope="module")
def fuzz_envs(dataset, retriever):
    return {p: PerTurnReward(make_env(dataset, retriever, FakeReward(), protocol=p)) for p in ("tags", "chat")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protocol=st.sampled_from(["tags", "chat"]), segments=st.lists(SEGMENTS, min_size=1, max_size=7))
def test_arbitrary_text_never_raises(fuzz_envs, protocol, segments):
    env = fuzz_envs[protocol]
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    total, ended = 0.0, False
    for segment in segments:
        segment = EXPANSIONS.get(segment, segment)
        obs, reward, term, trunc, info = env.step(segment)
        assert obs in env.observation_space and isinstance(obs, str)
        assert isinstance(reward, float) and math.isfinite(reward)
        assert type(term) is bool and type(trunc) is bool and isinstance(info, dict)
        if ended:  # steps after the end are inert
            assert (obs, reward, term or trunc) == ("", 0.0, True)
            continue
        total += reward
        if term or trunc:
            ended = True
            assert total == info["deeprec"].reward_total
            assert info["deeprec"].n_turns <= env.unwrapped.config.max_turns


# --- any text, end to end -----------------------------------------------------------------------------------

# Any code point, unpaired surrogates and invisible and control characters included; the explicit examples are a
# lone high surrogate (what the JSON escape "\\ud83d" decodes to), a zero-width space and a word joiner.
ANY_TEXT = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),
    st.text(alphabet=st.characters(categories=["Cs", "Cf", "Cc"]), max_size=10),
    st.lists(st.sampled_from(["\ud83d", "\u200b", "\u2060", "\ufeff", "\x00", "\r", "jazz", " ", ";"]), max_size=8).map(
        "".join
    ),
)
EXAMPLES = ["\ud83d", "\u200b", "\u2060", "jazz \ud83d\u200b; blues\r\n"]


class EncodingReward(FakeReward):
    """FakeReward that also embeds the preferences and answer lines, as the diversity reward embeds preferences,
    with a hash encoder (which, like a tokenizer, raises on an unpaired surrogate)."""

    def __init__(self):
        super().__init__()
        self.encoder = HashEncoder(TEXT_DIM)

    def __call__(self, episode):
        self.encoder.encode([*episode.preferences, *(episode.answer_lines or ())])
        return super().__call__(episode)


def is_clean(text: str) -> bool:
    """No unpaired surrogate, format character or control character other than newline and tab."""
    categories = [(unicodedata.category(c), c) for c in text]
    return not any(cat in ("Cs", "Cf") or (cat == "Cc" and c not in "\n\t") for cat, c in categories)


def calls_holding(protocol: str, text: str) -> list:
    """A tool call with `text` as its preference in every form an agent can write one."""
    if protocol == "tags":
        return [TAGS.render_tool_call(text)]
    payload = {"name": "retrieve", "arguments": {"preference": text}}
    as_json_string = {
        "type": "function",
        "function": {"name": "retrieve", "arguments": json.dumps(payload["arguments"])},
    }
    return [
        CHAT.render_tool_call(text),  # the raw characters inside the JSON
        f"{TOOL_CALL_OPEN}{json.dumps(payload)}{TOOL_CALL_CLOSE}",  # ASCII JSON: a surrogate as its escape
        {"role": "assistant", "content": text, "tool_calls": [structured_call(text)]},
        {"role": "assistant", "content": text, "tool_calls": [as_json_string]},
    ]


def answer_holding(protocol: str, text: str) -> str:
    close = f"{THINK_CLOSE}\n" if protocol == "tags" else ""
    return f"{text}\n{close}{(TAGS if protocol == 'tags' else CHAT).render_answer([text, 'Coyote Showdown'])}"


def assert_readable(episode) -> None:
    """Every string the episode keeps can be written as UTF-8 (a tokenizer, a log or a file can take it)."""
    json.dumps([episode.transcript, episode.preferences, episode.answer_lines], ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("protocol", ["tags", "chat"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
@example(text=EXAMPLES[0])
@example(text=EXAMPLES[1])
@example(text=EXAMPLES[2])
@example(text=EXAMPLES[3])
def test_any_unicode_is_safe_through_step(dataset, retriever, protocol, text):
    """Every form of tool call and an answer holding any text: the call runs (its retrieval never fails), the kept
    text is clean, and a preference that shows nothing is the empty query."""
    env = make_env(dataset, retriever, EncodingReward(), protocol=protocol)
    for action in calls_holding(protocol, text):
        env.reset(seed=0)
        obs, r, term, trunc, info = env.step(action)
        assert info["action"] == "tool_call" and env.episode.n_failed_calls == 0 and not (term or trunc)
        (made,) = env.episode.tool_calls
        assert is_clean(made.preference) and len(made.item_ids) == env.config.recall_k
        assert (made.preference == "") == (normalize_preference(text) == "")
        obs, r, term, trunc, info = env.step(answer_holding(protocol, text))
        assert term and math.isfinite(r) and all(is_clean(line) for line in info["deeprec"].answer_lines)
        assert_readable(info["deeprec"])


@pytest.mark.parametrize("protocol", ["tags", "chat"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
@example(text=EXAMPLES[0])
def test_one_odd_action_leaves_the_other_sub_envs_their_results(dataset, retriever, protocol, text):
    counting = CountingRetriever(retriever)
    config = EnvConfig(protocol=protocol)
    vec = DeepRecVectorEnv(dataset, counting, 3, EncodingReward(), config, autoreset_mode="Disabled")
    users = [0, 7, 21]
    vec.reset(options={"users": users, "split": "test"})
    actions = [call(protocol, "western"), calls_holding(protocol, text)[-1], call(protocol, "cooking")]
    obs, rewards, term, trunc, infos = vec.step(actions)
    assert counting.batches == [3] and [env.episode.n_failed_calls for env in vec.envs] == [0, 0, 0]
    single = make_env(dataset, retriever, EncodingReward(), protocol=protocol)
    for i, user in enumerate(users):
        single.reset(options={"user": user, "split": "test"})
        assert obs[i] == single.step(actions[i])[0] and len(unbatch_info(infos, i)["tool_calls"]) == 1
    *_, infos = vec.step([answer_holding(protocol, text)] * 3)
    assert all(term for term in infos["_deeprec"]) and all(is_clean(line) for line in infos["deeprec"][1].answer_lines)


class FailingRetriever(CountingRetriever):
    """Raises for every call that holds a query containing 'boom', as a retriever may for input it cannot take."""

    def retrieve(self, histories, queries, k, exclude_history=True):
        if any("boom" in q for q in queries):
            self.batches.append(len(histories))
            raise RuntimeError("boom")
        return super().retrieve(histories, queries, k, exclude_history)


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_a_query_the_retriever_fails_on_fails_only_its_own_tool_call(dataset, retriever, protocol, caplog):
    failing = FailingRetriever(retriever)
    vec = DeepRecVectorEnv(dataset, failing, 3, FakeReward(), EnvConfig(protocol=protocol), autoreset_mode="Disabled")
    vec.reset(options={"users": [0, 7, 21], "split": "test"})
    actions = [call(protocol, "western"), call(protocol, "boom"), call(protocol, "cooking")]
    with caplog.at_level(logging.WARNING, logger="deeprec_env.env"):
        obs, rewards, term, trunc, infos = vec.step(actions)
    assert failing.batches == [3, 1, 1, 1]  # the batch, then each row on its own
    assert [len(unbatch_info(infos, i)["tool_calls"]) for i in range(3)] == [1, 0, 1]
    assert [env.episode.n_failed_calls for env in vec.envs] == [0, 1, 0] and not term.any() and not trunc.any()
    result = obs[1] if protocol == "tags" else json.loads(obs[1])[0]["content"]
    assert result.startswith("Error: the retriever failed") and "RuntimeError: boom" in caplog.text

    env = make_env(dataset, failing, FakeReward(), protocol="chat")
    env.reset(seed=0)
    failed, found = env.run_tool("boom"), env.run_tool("western")
    assert failed.startswith("Error: the retriever failed") and len(env.episode.tool_calls) == 1
    _, lines = answer_titles(dataset, env._info())
    reward, info = env.finish(
        [
            {
                "role": "assistant",
                "content": "Two.",
                "tool_calls": [structured_call("boom"), structured_call("western")],
            },
            {"role": "tool", "name": "retrieve", "content": failed},
            {"role": "tool", "name": "retrieve", "content": found},
            {"role": "assistant", "content": "Ranked.\n" + CHAT.render_answer(lines)},
        ]
    )
    assert info["deeprec"].n_failed_calls == 1 and [c.preference for c in info["deeprec"].tool_calls] == ["western"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
@example(text=EXAMPLES[0])
@example(text=EXAMPLES[1])
def test_any_unicode_is_safe_through_the_grpo_reward_path(dataset, retriever, text):
    """TRL's side: the tool function with any preference, then every component's reward function on a completion
    holding the text (structured calls, a call in the content, the answer)."""
    adapter = DeepRecToolEnv(make_env(dataset, retriever, EncodingReward(), protocol="chat"))
    adapter.reset(user=3, split="train")
    results = [adapter.retrieve(text), adapter.retrieve(text + " western")]
    assert all(not r.startswith("Error") for r in results) and adapter.env.episode.n_failed_calls == 0
    completion = [
        {
            "role": "assistant",
            "content": text,
            "tool_calls": [structured_call(text), structured_call(text + " western")],
        },
        *({"role": "tool", "name": "retrieve", "content": r} for r in results),
        {"role": "assistant", "content": text + " " + CHAT.render_tool_call(text)},
        {"role": "assistant", "content": answer_holding("chat", text)},
    ]
    rewards = [fn([completion], [adapter])[0] for fn in component_rewards(list(FakeReward.levels))]
    episode = adapter._finish(completion)
    assert all(math.isfinite(r) for r in rewards) and len(episode.tool_calls) == 2
    assert all(is_clean(m.get("content", "")) for m in episode.transcript if m["role"] == "assistant")
    assert_readable(episode)


# --- the format check reads what the env parsed ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tags", "chat"])
@pytest.mark.parametrize("ending", ["max_turns", "end"])
def test_an_answer_split_over_segments_never_passes_the_format_check(dataset, retriever, protocol, ending):
    """Opening tag and lines 1-5 in one segment, lines 6-10 and the closing tag in the next: each segment is
    malformed, the episode never answered; the joined text holds one well-formed block, and the check still fails."""
    codec = TAGS if protocol == "tags" else CHAT
    env = make_env(dataset, retriever, FakeReward(), protocol=protocol, max_turns=3 if ending == "max_turns" else 4)
    env.reset(seed=0)
    env.step("Westerns. " + call(protocol, "western"))
    lines = [f"{i}. {title}" for i, title in enumerate("abcdefghij", start=1)]
    close = f"{THINK_CLOSE}\n" if protocol == "tags" else ""
    assert env.step(f"Ranking the pool.\n{close}{REC_OPEN}\n" + "\n".join(lines[:5]))[4]["action"] == "malformed"
    obs, r, term, trunc, info = env.step("\n".join(lines[5:]) + f"\n{REC_CLOSE}")
    if ending == "end":
        assert info["action"] == "malformed" and not trunc
        r, info = env.end()
    episode = info["deeprec"]
    text = codec.solution([*env.prompt, *episode.transcript] if protocol == "chat" else env.prompt + episode.transcript)
    assert len(blocks(text, REC_OPEN, REC_CLOSE)) == 1  # what a re-parse of the joined text would have accepted
    assert episode.answer_lines is None and PROBLEM_NO_ANSWER in episode.format_problems and not episode.format_ok
    assert r == episode.reward_total == 0.5 - 1.0  # one call paid, the format failed


# --- reward timing --------------------------------------------------------------------------------------------


def scripted(env, dataset, protocol, queries=("western", "cooking")):
    codec = TAGS if protocol == "tags" else CHAT
    env.reset(seed=0, options={"user": 11})
    rewards = []
    for step_text in ("thinking first", *(codec.render_tool_call(q) for q in queries)):
        _, r, _, _, info = env.step("Reasoning. " + step_text)
        rewards.append(r)
    _, lines = answer_titles(dataset, info)
    close = f"{THINK_CLOSE}\n" if protocol == "tags" else ""
    _, r, term, _, info = env.step(f"Final ranking.\n{close}{codec.render_answer(lines)}")
    assert term and info["deeprec"].format_ok
    return rewards + [r], info


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_per_turn_wrapper_pays_process_terms_early_and_sums_to_terminal(dataset, retriever, protocol):
    terminal, info_t = scripted(make_env(dataset, retriever, FakeReward(), protocol=protocol), dataset, protocol)
    levels_env = make_env(dataset, retriever, FakeReward(), protocol=protocol)
    per_turn, info_p = scripted(PerTurnReward(levels_env), dataset, protocol)
    assert terminal[:3] == [0.0, 0.0, 0.0] and terminal[3] == info_t["deeprec"].reward_total
    assert per_turn[:3] == [0.0, 0.5, 0.5]  # the calls term, paid at the tool-call steps
    assert sum(per_turn) == sum(terminal) == info_p["deeprec"].reward_total
    assert info_p["deeprec"].reward_terms == info_t["deeprec"].reward_terms


class GridReward:
    """Terms off the dyadic grid (tenths, sevenths, thirds), each quantised as `rewards.HierarchicalReward` quantises
    its terms. Process: `calls` (0.1 per call, at most 3), `spread` (1/7 per distinct preference), `format` (-0.3
    unless valid); outcome (gated): `listed` (1/3 per valid listed item)."""

    levels = {"calls": "process", "spread": "process", "format": "process", "listed": "outcome"}

    def __call__(self, episode):
        ok = episode.format_ok
        raw = {
            "calls": 0.1 * min(len(episode.tool_calls), 3),
            "spread": len(set(episode.preferences)) / 7,
            "format": 0.0 if ok else -0.3,
            "listed": len(episode.ranked_ids) / 3 if ok else 0.0,
        }
        terms = {name: quantize(value) for name, value in raw.items()}
        return SimpleNamespace(total=sum(terms.values()), terms=terms)


ENDINGS = [
    "answer",
    "max_turns",
    "max_tool_calls",
    "max_episode_tokens",
    "time_limit",
    "time_limit_inside",  # ScoreTruncated(TimeLimit(PerTurnReward(env))): the wrapper's own `end` pays the rest
    "unwrapped_end",
    "wrapper_end",
]
PLANS = st.lists(st.one_of(st.just(None), st.text(max_size=12)), max_size=6)  # None: a thinking segment


@pytest.mark.parametrize("protocol", ["tags", "chat"])
@pytest.mark.parametrize("ending", ENDINGS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=PLANS)
def test_per_turn_rewards_sum_exactly_to_the_total_on_every_ending_path(dataset, retriever, protocol, ending, plan):
    """A scripted prefix of thinking segments and tool calls, then one way to end: the step rewards (and `end`'s)
    sum to `Episode.reward_total` with ==, and nothing is paid after that."""
    limits = {"max_turns": len(plan) + 1} if ending == "max_turns" else {}
    limits |= {"max_tool_calls": max(sum(p is not None for p in plan), 1)} if ending == "max_tool_calls" else {}
    inner = make_env(dataset, retriever, GridReward(), protocol=protocol, **limits)
    if ending == "time_limit":
        env = PerTurnReward(ScoreTruncated(TimeLimit(inner, len(plan) + 1)))
    elif ending == "time_limit_inside":
        env = ScoreTruncated(TimeLimit(PerTurnReward(inner), len(plan) + 1))
    else:
        env = PerTurnReward(inner)
    env.reset(seed=len(plan), options={"split": "test"})
    paid = [env.step("Thinking." if p is None else "Searching. " + call(protocol, p))[1] for p in plan]
    assert not inner.done
    close = f"{THINK_CLOSE}\n" if protocol == "tags" else ""
    final = {
        "answer": f"Ranked.\n{close}{(TAGS if protocol == 'tags' else CHAT).render_answer(['Coyote Showdown'] * 10)}",
        "max_turns": "Still thinking.",
        "max_tool_calls": call(protocol, "one too many"),
        "max_episode_tokens": "x" * 40_000,
        "time_limit": "Still thinking.",
        "time_limit_inside": "Still thinking.",
    }
    if ending == "unwrapped_end":
        inner.end()
        paid.append(env.step("after the end")[1])  # the first step after an end outside the wrapper pays the rest
    elif ending == "wrapper_end":
        paid.append(env.end()[0])
    else:
        while not inner.done:  # one step ends it; two for max_tool_calls after a plan without calls
            paid.append(env.step(final[ending])[1])
    episode = inner.episode
    assert episode.truncated_by == {
        "answer": None,
        "wrapper_end": "agent_stopped",
        "unwrapped_end": "agent_stopped",
    }.get(ending, "time_limit" if ending.startswith("time_limit") else ending)
    assert sum(paid) == episode.reward_total
    assert env.step("and again")[1] == 0.0
    if ending == "wrapper_end":
        assert env.end()[0] == 0.0


# --- framework-driven episodes (TRL) --------------------------------------------------------------------------


@pytest.mark.parametrize("item_refs", ["titles", "handles"])
def test_run_tool_and_finish_score_the_live_episode_like_stepping(dataset, retriever, item_refs):
    stepped = make_env(dataset, retriever, FakeReward(), protocol="chat", item_refs=item_refs)
    obs, info = stepped.reset(options={"user": 9})
    agent = ScriptedAgent(dataset, protocol="chat")
    agent.reset(obs, info)
    while True:
        obs, r, term, trunc, info = stepped.step(agent.act(obs, info))
        if term or trunc:
            break
    reference = info["deeprec"]
    completion = []  # as TRL records it: assistant messages with structured calls, then the tool messages
    for message in reference.transcript:
        action = CHAT.parse(message) if message["role"] == "assistant" else None
        if action is not None and action.kind == "tool_call":
            calls = [structured_call(c.preference) for c in action.calls]
            completion.append({"role": "assistant", "content": action.reasoning, "tool_calls": calls})
        else:
            completion.append(message)

    counting = CountingRetriever(retriever)
    live = make_env(dataset, counting, FakeReward(), protocol="chat", item_refs=item_refs)
    live.reset(options={"user": 9})
    results = [live.run_tool(c.preference) for c in reference.tool_calls]
    assert results == [m["content"] for m in reference.transcript if m["role"] == "tool"]
    reward, final = live.finish(completion)
    episode = final["deeprec"]
    assert counting.batches == [1] * len(reference.tool_calls)  # nothing is retrieved again when scoring
    assert reward == reference.reward_total and episode.ranked_ids == reference.ranked_ids
    assert episode.format_problems == reference.format_problems and episode.n_turns == reference.n_turns
    assert [c.turn for c in episode.tool_calls] == [c.turn for c in reference.tool_calls]
    again = live.finish(completion)  # an ended episode keeps its result
    assert again[0] == 0.0 and again[1]["deeprec"] is episode


def test_finish_without_an_answer_is_a_truncated_format_failure(dataset, retriever):
    env = make_env(dataset, retriever, FakeReward(), protocol="chat", max_tool_calls=1)
    env.reset(seed=3)
    first = env.run_tool("western")
    assert env.run_tool("again").startswith("No more tool calls")
    reward, info = env.finish(
        [
            {"role": "assistant", "content": "", "tool_calls": [structured_call("western")]},
            {"role": "tool", "name": "retrieve", "content": first},
            {"role": "assistant", "content": "I think the user likes"},
        ]
    )
    assert info["deeprec"].truncated_by == "max_tool_calls" and reward == 0.5 - 1.0
    with pytest.raises(ValueError, match="chat codec"):
        make_env(dataset, retriever, protocol="tags").run_tool("x")


# --- vector env -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_vector_env_batches_tool_calls(dataset, retriever, protocol):
    counting = CountingRetriever(retriever)
    vec = DeepRecVectorEnv(dataset, counting, 4, FakeReward(), EnvConfig(protocol=protocol), autoreset_mode="Disabled")
    users = [0, 7, 21, 33]
    obs, infos = vec.reset(seed=0, options={"users": users, "split": "test"})
    assert list(infos["user"]) == users and infos["_user"].all()
    actions = [call(protocol, "western"), call(protocol, "cooking"), "only thinking", call(protocol, "racing")]
    obs, rewards, term, trunc, infos = vec.step(actions)
    assert counting.batches == [3] and isinstance(rewards, np.ndarray)
    single = make_env(dataset, retriever, FakeReward(), protocol=protocol)
    for i, user in enumerate(users):
        single.reset(options={"user": user, "split": "test"})
        s_obs, s_r, s_term, s_trunc, s_info = single.step(actions[i])
        assert obs[i] == s_obs and (rewards[i], term[i], trunc[i]) == (s_r, s_term, s_trunc)
        assert unbatch_info(infos, i)["tool_calls"] == s_info["tool_calls"]

    finish = [f"{THINK_CLOSE}\n{REC_OPEN}\n1. x\n{REC_CLOSE}" if protocol == "tags" else CHAT.render_answer(["x"])]
    obs, rewards, term, trunc, infos = vec.step(finish + [call(protocol, "again")] * 3)
    assert counting.batches == [3, 3] and term[0] and not any(term[1:])
    assert "deeprec" in unbatch_info(infos, 0) and "deeprec" not in unbatch_info(infos, 1)
    obs, rewards, term, trunc, infos = vec.step([call(protocol, "after end")] + ["thinking"] * 3)
    assert counting.batches == [3, 3] and (obs[0], rewards[0], term[0]) == ("", 0.0, True)  # disabled: inert
    obs, infos = vec.reset(
        options={"reset_mask": np.array([True, False, False, False]), "users": [5, None, None, None]}
    )
    assert unbatch_info(infos, 0)["user"] == 5 and "_user" in infos and not infos["_user"][1:].any()
    with pytest.raises(ValueError, match="4 actions"):
        vec.step(["a"])


def test_vector_env_autoreset_modes_follow_gymnasium(dataset, retriever):
    answer = f"{THINK_CLOSE}\n{REC_OPEN}\n1. x\n{REC_CLOSE}"
    next_step = DeepRecVectorEnv(dataset, retriever, 2, FakeReward())
    next_step.reset(seed=0)
    _, _, term, _, _ = next_step.step([answer, "thinking"])
    assert term[0] and next_step.metadata["autoreset_mode"].value == "NextStep"
    obs, rewards, term, trunc, infos = next_step.step([call("tags"), "thinking"])  # sub-env 0 resets, action ignored
    assert obs[0].endswith(f"{THINK_OPEN}\n") and (rewards[0], term[0], trunc[0]) == (0.0, False, False)
    assert unbatch_info(infos, 0)["turn"] == 0

    same_step = DeepRecVectorEnv(dataset, retriever, 2, FakeReward(), autoreset_mode="SameStep")
    same_step.reset(seed=0)
    obs, _, term, _, infos = same_step.step([answer, "thinking"])
    assert term[0] and obs[0].endswith(f"{THINK_OPEN}\n") and infos["_final_info"][0] and not infos["_final_info"][1]
    assert "deeprec" in infos["final_info"] and infos["final_obs"][0] == ""


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_results_do_not_depend_on_how_many_envs_run_together(dataset, retriever, protocol):
    """The scripted teacher on every test user with 1 and with 64 sub-envs: the same tool results (item ids, in
    order), answers and rewards, exactly."""
    users = [int(u) for u in dataset.eval_users("test")]
    played = []
    for n_envs in (1, 64):
        vec = DeepRecVectorEnv(
            dataset, retriever, n_envs, GridReward(), EnvConfig(protocol=protocol), autoreset_mode="Disabled"
        )
        episodes = rollout(vec, lambda: ScriptedAgent(dataset, protocol=protocol), users, "test", show_progress=False)
        played.append([(e.user, e.tool_calls, e.ranked_ids, e.reward_total) for e in episodes])
    assert played[0] == played[1] and len(users) > 32


def test_vector_env_is_deterministic_for_a_seed(dataset, retriever):
    runs = []
    for _ in range(2):
        vec = DeepRecVectorEnv(dataset, retriever, 3)
        obs, infos = vec.reset(seed=123)
        step = vec.step([call("tags", "western"), call("tags", "sci-fi"), "hmm"])
        runs.append((obs, list(infos["user"]), step[0], list(step[1]), list(step[4]["tool_calls"])))
    assert runs[0] == runs[1]
    assert len(set(runs[0][1])) > 1  # sub-envs get different seeds


# --- registration ---------------------------------------------------------------------------------------------


def test_registered_with_gymnasium():
    spec = gymnasium.spec("deeprec/DeepRec-v0")
    assert spec.entry_point == "deeprec_env.stack:make_env"
    assert spec.vector_entry_point == "deeprec_env.stack:make_vector_env"


SMALL = [
    "dataset.synthetic.n_users=60",
    "dataset.synthetic.n_items=80",
    "trm.train.max_steps=20",
    "trm.train.eval_every=10",
    "trm.train.valid_users=50",
    "sasrec.train.max_steps=20",  # the TRM's backbone
    "sasrec.train.eval_every=10",
    "sasrec.train.valid_users=50",
]


@pytest.fixture(scope="module")
def small_artifacts(tmp_path_factory):
    return str(tmp_path_factory.mktemp("make-env-artifacts"))


def test_make_env_rejects_unknown_arguments(small_artifacts):
    with pytest.raises(TypeError, match="recal_k"):
        gymnasium.make("deeprec/DeepRec-v0", dataset="synthetic", artifacts=small_artifacts, overrides=SMALL, recal_k=5)


def test_make_env_builds_a_working_env_on_synthetic(small_artifacts):
    """The registered factory end to end (loads the bundled sentence encoder, trains a 20-step TRM: ~15 s)."""
    env = gymnasium.make(
        "deeprec/DeepRec-v0", dataset="synthetic", reward=None, artifacts=small_artifacts, overrides=SMALL, recall_k=5
    )
    raw = env.unwrapped
    assert isinstance(raw, DeepRecEnv) and isinstance(raw.retriever, InProcessRetriever)
    assert (raw.config.recall_k, raw.config.protocol, raw.config.split, raw.dataset.n_items) == (5, "tags", "train", 80)
    obs, info = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(f"Westerns. {PREF_OPEN} western; showdown {PREF_CLOSE}")
    assert len(info["tool_calls"][0]["item_ids"]) == 5 and obs.count("\n") >= 5 and r == 0.0


def test_make_vec_equals_single_envs_with_one_retrieval_per_step(small_artifacts):
    """`gymnasium.make_vec(num_envs=8)`: the same per-episode rewards as 8 single envs for the same seeds, and one
    batched retrieval per step."""
    kwargs = {"dataset": "synthetic", "reward": "rec", "artifacts": small_artifacts, "overrides": SMALL}
    envs = gymnasium.make_vec("deeprec/DeepRec-v0", num_envs=8, **kwargs)
    assert isinstance(envs, DeepRecVectorEnv)
    envs.retriever = counting = CountingRetriever(envs.retriever)
    dataset = envs.envs[0].dataset
    agents = [ScriptedAgent(dataset) for _ in range(8)]
    obs, infos = envs.reset(seed=10)
    for i, agent in enumerate(agents):
        agent.reset(obs[i], unbatch_info(infos, i))
    first = [None] * 8
    while any(f is None for f in first):
        actions = [agent.act(obs[i], unbatch_info(infos, i)) for i, agent in enumerate(agents)]
        obs, rewards, term, trunc, infos = envs.step(actions)
        for i in range(8):
            if first[i] is None and (term[i] or trunc[i]):
                first[i] = (unbatch_info(infos, i)["user"], float(rewards[i]))
    assert len(counting.batches) == 4 and max(counting.batches) == 8  # scripted: four calls, batched per step
    for i, (user, reward) in enumerate(first):
        single = gymnasium.make("deeprec/DeepRec-v0", **kwargs)
        info, step_rewards = play(single, ScriptedAgent(dataset), seed=10 + i)
        assert info["user"] == user and sum(step_rewards) == reward != 0.0


def test_make_env_binds_the_hierarchical_reward(small_artifacts):
    env = gymnasium.make(
        "deeprec/DeepRec-v0", dataset="synthetic", reward="cold", artifacts=small_artifacts, overrides=SMALL
    )
    assert env.unwrapped.reward_fn.levels["format"] == "process"
    dataset = env.unwrapped.dataset
    history, _ = dataset.history_and_target(11, "train")
    aspects = list(dict.fromkeys(a for item in history for a in item_aspects(dataset, int(item))))
    queries = (aspects[0], aspects[1])  # two aspects of the user's history: two informative calls
    terminal, info = scripted(env, dataset, "tags", queries)
    per_turn, _ = scripted(PerTurnReward(env), dataset, "tags", queries)
    assert info["deeprec"].reward_terms["invocation"] > 0 and sum(per_turn) == sum(terminal)
    # cold: invocation pays from the second informative call on, which the per-turn wrapper pays at that step
    assert terminal[2] == 0.0 and per_turn[2] >= 0.5


def test_compose_keeps_a_running_hydra_app():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from deeprec_env.config import CONFIG_DIR, compose

    with initialize_config_dir(config_dir=str(CONFIG_DIR / "dataset"), version_base=None):
        before = GlobalHydra.instance().hydra
        cfg = compose("env_config", ["dataset=synthetic"])
        assert cfg.dataset.name == "synthetic" and GlobalHydra.instance().hydra is before
    assert compose("env_config", ["dataset=games"]).dataset.name == "games"
    assert not GlobalHydra.instance().is_initialized()
