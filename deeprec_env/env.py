"""`DeepRecEnv`: the recommendation episode as a gymnasium environment, and its batched form `DeepRecVectorEnv`.

One episode: `reset` picks a user (seeded) and renders the prompt (instructions + the user's recent history as
item cards). The agent then writes text segments; `step(segment)` parses one with the configured codec
(`deeprec_env.protocol`):

* tool call: the TRM retrieves `recall_k` items for the user's full history and the preference text; the
  observation is the rendered tool result, and a `ToolCall` is recorded in the `Episode`;
* answer: the titles are matched to item ids (items retrieved in this episode win ties), the format is checked,
  the reward is paid and the episode terminates;
* malformed (neither): counted in `Episode.n_malformed`; the observation is a one-line hint saying what is
  expected; the episode goes on.

Observations and actions are plain strings (`TextSpace`: any str). Any string is a valid action (non-strings are
coerced with `str`); nothing an agent writes raises. Limits end the episode with `truncated=True`, never with an
exception: the (max_tool_calls + 1)-th tool call, the `max_turns`-th segment without an answer, and a segment or
observation that would take the episode past `max_episode_tokens`. A truncated episode is finalised like an
answered one (format checks run, the reward is paid): an unanswered episode fails the format check, so the
reward's format gate zeroes its outcome terms.

Transcript (`Episode.transcript`, what the format checks and rewards read), after the prompt:
* tags: one string: every segment cut at `action.end` (text written after the action block is dropped), each tool
  call followed by its rendered `<|begin_of_item_list|>` result. Malformed-segment hints are NOT part of it: they
  are environment messages, not protocol text; an over-budget segment is not appended either.
* chat: the messages after the prompt: `{"role": "assistant", "content": segment[:action.end]}` per segment, a
  `{"role": "tool", ...}` message after each executed tool call, and `{"role": "user", "content": hint}` after a
  malformed segment (format checks ignore user messages). `info["messages"]` is always prompt + transcript.

Observations: tags: the prompt, then each tool result / hint as the text to append after the segment. chat: a
JSON list of messages (`json.dumps`): the prompt messages at reset, then the messages to append after the agent's
own assistant message (one tool message, or one user hint); `info["messages"]` holds the whole conversation and
`info["tools"]` the tool schema. The step that ends an episode returns "" (the final tool result too if the token
cap was reached by it). After the end, `step` keeps returning ("", 0.0, terminated, truncated, info) without
raising; call `reset` to start again.

Rewards: `reward_fn(episode)` returns an object with `.total` and `.terms` (a `rewards.HierarchicalReward` with
its context bound; this module never imports `rewards`). `reward_mode="terminal"` pays the total when the episode
ends (reward_fn called once). `"per_turn"` pays process-level terms as they are earned: after every step the
breakdown of a provisional episode (the episode so far, with no format problem recorded yet) is computed and the
change of its process-level terms is paid; the final step pays the rest, so the per-step rewards always sum to the
terminal total. Terms missing from `reward_levels` count as outcome terms.

Token counting: `count_tokens(text)` (default `len(text) // 4`, or a tokenizer's length function) counts the
prompt, every kept segment, every tool result and hint; the episode may hold at most `max_episode_tokens`.

Everything is deterministic for a seed: the user sample uses `self.np_random`; retrieval is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium
import numpy as np
from gymnasium import spaces

from deeprec_env.data.dataset import SPLITS, RecDataset
from deeprec_env.episode import Episode, ToolCall
from deeprec_env.protocol import (
    INSTRUCTIONS,
    PREF_CLOSE,
    PREF_OPEN,
    REC_CLOSE,
    REC_OPEN,
    THINK_CLOSE,
    TOOL_NAME,
    TOOL_SCHEMA,
    Action,
    ProtocolConfig,
    TitleMatcher,
    format_problems,
    get_codec,
    item_cards,
)
from deeprec_env.trm.retriever import Retriever

REWARD_MODES = ("terminal", "per_turn")
MAX_TEXT_LENGTH = sys.maxsize


@dataclass
class EnvConfig:
    """Episode limits, rendering and reward timing (the `env` config group)."""

    protocol: str = "tags"  # "tags" (the paper's format) | "chat" (JSON tool calls)
    split: str = "test"  # default split of reset(); options={"split": ...} overrides it per episode
    recall_k: int = 20  # items per tool call
    rec_k: int = 10  # titles in the final answer
    max_tool_calls: int = 8  # one more call truncates the episode
    max_turns: int = 12  # agent segments; the max_turns-th segment without an answer truncates the episode
    max_episode_tokens: int = 8192  # prompt + agent segments + observations, as counted by `count_tokens`
    card_chars: int | None = 80  # per item card (None: uncut)
    history_items: int = 20  # most recent history items shown in the prompt
    instructions: str = "full"  # system instructions: "full" (the paper's) | "brief" (for small policies)
    fuzzy_threshold: float = 90.0  # rapidfuzz ratio a fuzzy title match needs
    exclude_history: bool = True  # tool calls never return the user's history items
    reward_mode: str = "terminal"  # "terminal" | "per_turn"

    def validate(self) -> None:
        """One clear error line for a bad value."""
        get_codec(self.protocol)  # raises for an unknown protocol
        if self.split not in SPLITS:
            raise ValueError(f"unknown env.split {self.split!r}; use one of {SPLITS}")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown env.reward_mode {self.reward_mode!r}; use one of {REWARD_MODES}")
        if self.instructions not in INSTRUCTIONS:
            raise ValueError(f"unknown env.instructions {self.instructions!r}; use one of {INSTRUCTIONS}")
        for name in ("recall_k", "rec_k", "max_tool_calls", "max_turns", "max_episode_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"env.{name} must be >= 1, got {getattr(self, name)}")
        if self.history_items < 0:
            raise ValueError(f"env.history_items must be >= 0, got {self.history_items}")

    def protocol_config(self) -> ProtocolConfig:
        return ProtocolConfig(
            recall_k=self.recall_k,
            rec_k=self.rec_k,
            max_tool_calls=self.max_tool_calls,
            card_chars=self.card_chars,
            history_items=self.history_items,
            fuzzy_threshold=self.fuzzy_threshold,
            instructions=self.instructions,
        )


class RewardBreakdown(Protocol):
    total: float
    terms: Mapping[str, float]


RewardFn = Callable[[Episode], RewardBreakdown]


def approx_tokens(text: str) -> int:
    """The default token count: about four characters per token."""
    return len(text) // 4


class TextSpace(spaces.Space[str]):
    """Any Python `str` of at most `max_length` characters, any characters (titles are unicode; gymnasium's
    `spaces.Text` would restrict the charset).

    `sample()` draws 0..`sample_length` characters from a mixed pool (letters, digits, punctuation, whitespace and
    some non-ASCII letters): random junk for fuzzing, never a protocol action.
    """

    _POOL = tuple(string.ascii_letters + string.digits + " \n.,;:!?-'\"()|/") + tuple("éßøçłжλ中文ا🙂")

    def __init__(self, max_length: int = MAX_TEXT_LENGTH, sample_length: int = 64, seed: Any = None):
        if max_length < 0 or sample_length < 0:
            raise ValueError("max_length and sample_length must be >= 0")
        self.max_length = max_length
        self.sample_length = min(sample_length, max_length)
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            raise NotImplementedError("TextSpace.sample takes no mask or probability")
        length = int(self.np_random.integers(0, self.sample_length + 1))
        return "".join(self._POOL[i] for i in self.np_random.integers(0, len(self._POOL), size=length))

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length

    __hash__ = None  # type: ignore[assignment]


@dataclass
class _Pending:
    """One step between parsing and retrieval (see `DeepRecEnv._prepare` / `_complete`).

    ended: the episode had already ended before this step. end: a limit ended it in this step (the reason).
    request: (full history, preference) to retrieve for; None when this step needs no retrieval.
    """

    action: Action | None = None
    ended: bool = False
    end: str | None = None
    request: tuple[np.ndarray, str] | None = None


def _serve(retriever: Retriever, config: EnvConfig, pending: Sequence[_Pending]) -> list[list[int] | None]:
    """Serve every retrieval request of `pending` with ONE batched retriever call: per pending step the returned
    item ids (padding dropped), None where it asked for nothing."""
    asked = [i for i, p in enumerate(pending) if p.request is not None]
    found: list[list[int] | None] = [None] * len(pending)
    if asked:
        histories = [pending[i].request[0] for i in asked]
        queries = [pending[i].request[1] for i in asked]
        ids, _ = retriever.retrieve(histories, queries, config.recall_k, exclude_history=config.exclude_history)
        for i, row in zip(asked, np.asarray(ids).reshape(len(asked), -1), strict=True):
            found[i] = [int(item) for item in row if int(item) > 0]
    return found


def _as_text(action: Any) -> str:
    if isinstance(action, str):
        return action
    try:
        return str(action)
    except Exception:  # an object whose __str__ fails is still a (malformed) action
        return ""


def _exact_remainder(total: float, paid: float) -> float:
    """r with paid + r == total in floating point (when such an r exists near total - paid)."""
    rest = total - paid
    for _ in range(4):
        got = paid + rest
        if got == total or not math.isfinite(got):
            break
        rest = math.nextafter(rest, math.inf if got < total else -math.inf)
    return rest


class DeepRecEnv(gymnasium.Env[str, str]):
    """The DeepRec recommendation episode (see the module docstring for the protocol, limits and rewards).

    dataset: a `RecDataset`; retriever: the TRM tool (`InProcessRetriever` / `RayRetriever`);
    reward_fn: episode -> breakdown (`.total`, `.terms`), None for zero rewards; reward_levels: term name ->
    "process" | "outcome" (needed for `reward_mode="per_turn"`; defaults to `reward_fn.levels` when present);
    count_tokens: text -> token count (default `len(text) // 4`); matcher: a shared `TitleMatcher` (built from the
    dataset when None).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}  # ansi: a text snapshot, no frame rate to speak of

    def __init__(
        self,
        dataset: RecDataset,
        retriever: Retriever,
        reward_fn: RewardFn | None = None,
        reward_levels: Mapping[str, str] | None = None,
        config: EnvConfig | None = None,
        count_tokens: Callable[[str], int] | None = None,
        matcher: TitleMatcher | None = None,
        render_mode: str | None = None,
    ):
        self.config = config = config if config is not None else EnvConfig()
        config.validate()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; use one of {self.metadata['render_modes']}")
        self.dataset = dataset
        self.retriever = retriever
        self.reward_fn = reward_fn
        levels = reward_levels if reward_levels is not None else getattr(reward_fn, "levels", None)
        self.reward_levels: dict[str, str] = dict(levels or {})
        if config.reward_mode == "per_turn" and reward_fn is not None and levels is None:
            raise ValueError("reward_mode='per_turn' needs reward_levels (term name -> 'process' | 'outcome')")
        self.count_tokens = count_tokens or approx_tokens
        self.codec = get_codec(config.protocol)
        self.protocol = config.protocol_config()
        self.matcher = matcher if matcher is not None else TitleMatcher(dataset, config.fuzzy_threshold)
        self.render_mode = render_mode
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self._eval_users: dict[str, np.ndarray] = {}
        self._episode: Episode | None = None
        self._prompt: str | list[dict[str, str]] = ""
        self._paid = 0.0
        self._terminated = self._truncated = False

    # -- gymnasium API ---------------------------------------------------------------------------------------

    @property
    def episode(self) -> Episode | None:
        """The current (or last) episode record."""
        return self._episode

    @property
    def prompt(self) -> str | list[dict[str, str]]:
        """The current episode's prompt: a string (tags) or the prompt messages (chat)."""
        return self._prompt

    @property
    def chat(self) -> bool:
        return self.codec.name == "chat"

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[str, dict]:
        """options: {"split": "train"|"valid"|"test", "user": int}; without a user one is drawn (seeded) from
        `dataset.eval_users(split)`."""
        super().reset(seed=seed)
        options = dict(options or {})
        split = options.get("split") or self.config.split
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        user = options.get("user")
        if user is None:
            if split not in self._eval_users:
                self._eval_users[split] = self.dataset.eval_users(split)
            users = self._eval_users[split]
            if len(users) == 0:
                raise ValueError(f"dataset {self.dataset.name!r} has no user with a {split!r} target")
            user = users[int(self.np_random.integers(len(users)))]
        user = int(user)
        history, target = self.dataset.history_and_target(user, split)
        shown = history[-self.config.history_items :] if self.config.history_items > 0 else history[:0]
        self._prompt = self.codec.render_prompt(item_cards(self.dataset, shown, self.config.card_chars), self.protocol)
        self._episode = Episode(
            user=user,
            split=split,
            history=history,
            target=target,
            rec_k=self.config.rec_k,
            codec=self.codec.name,
            prompt=self._prompt,
            transcript=[] if self.chat else "",
        )
        if self.chat:
            self._episode.n_tokens = sum(self.count_tokens(m["content"]) for m in self._prompt)
            obs = json.dumps(self._prompt, ensure_ascii=False)
        else:
            self._episode.n_tokens = self.count_tokens(self._prompt)
            obs = self._prompt
        self._paid = 0.0
        self._terminated = self._truncated = False
        info = self._info()
        if self.chat:
            info["tools"] = [TOOL_SCHEMA]
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """One agent segment; see the module docstring. Never raises for any action."""
        pending = self._prepare(action)
        return self._complete(pending, _serve(self.retriever, self.config, [pending])[0])

    def end(self, reason: str = "agent_stopped") -> dict:
        """End the current episode now, truncated, as when an agent stops without answering (a generation budget
        ran out); returns the final info with the reward. An episode that already ended keeps its result."""
        if self._episode is None:
            raise RuntimeError("call reset() before end()")
        if self._terminated or self._truncated:
            return self._info()
        return self._finish(truncated=True, reason=reason, kind="stop")[4]

    def render(self) -> str | None:
        """render_mode "ansi": the prompt and the transcript as text."""
        if self.render_mode != "ansi" or self._episode is None:
            return None
        if self.chat:
            return json.dumps(self._messages(), ensure_ascii=False, indent=1)
        return self._prompt + self._episode.transcript

    # -- the two halves of a step (DeepRecVectorEnv batches the retrieval between them) --------------------------

    def _prepare(self, raw: Any) -> _Pending:
        """Parse a segment and apply everything up to retrieval: turn and token accounting, the transcript, the
        limits. Returns what `_complete` needs, with the retrieval request if the segment is an executable call."""
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        if self._terminated or self._truncated:
            return _Pending(ended=True)
        ep, config = self._episode, self.config
        text = _as_text(raw)
        action = self.codec.parse(text)
        ep.n_turns += 1
        kept = text[: action.end]
        tokens = self.count_tokens(kept)
        if ep.n_tokens + tokens > config.max_episode_tokens:
            return _Pending(action, end="max_episode_tokens")  # the segment does not fit: it is not recorded
        ep.n_tokens += tokens
        if self.chat:
            ep.transcript.append({"role": "assistant", "content": kept})
        else:
            ep.transcript += kept
        if action.kind == "answer":
            return _Pending(action)
        if action.kind == "malformed":
            ep.n_malformed += 1
        if ep.n_turns >= config.max_turns:
            return _Pending(action, end="max_turns")
        if action.kind == "tool_call":
            if len(ep.tool_calls) >= config.max_tool_calls:
                return _Pending(action, end="max_tool_calls")
            return _Pending(action, request=(ep.history, action.preference))
        return _Pending(action)

    def _complete(self, pending: _Pending, item_ids: Sequence[int] | None) -> tuple[str, float, bool, bool, dict]:
        """Apply the retrieval result (for a tool call) and produce the step's return values."""
        if pending.ended:
            return "", 0.0, self._terminated, self._truncated, self._info()
        if pending.end is not None:
            return self._finish(truncated=True, reason=pending.end, kind=pending.action.kind)
        ep, action = self._episode, pending.action
        if action.kind == "answer":
            match = self.matcher.match_answer(action.answer_lines, preferred=ep.retrieved)
            ep.answer_lines = action.answer_lines
            ep.answer_ids = match.item_ids
            ep.ranked_ids = match.ranked_ids
            ep.n_invalid = match.n_invalid
            ep.n_duplicate = match.n_duplicate
            return self._finish(truncated=False, kind="answer")
        if pending.request is not None:
            ids = tuple(int(i) for i in (item_ids or ()))
            ep.tool_calls.append(ToolCall(action.preference, ids, ep.n_turns - 1))
            cards = item_cards(self.dataset, ids, self.config.card_chars)
            if self.chat:
                message = self.codec.tool_message(cards)
                content = message["content"]
            else:
                content = self.codec.render_tool_result(cards)
                ep.transcript += content
        else:  # malformed: a one-line hint, not protocol text (see the module docstring)
            content = self._hint(action)
            message = {"role": "user", "content": content}
        if self.chat:
            ep.transcript.append(message)
            obs = json.dumps([message], ensure_ascii=False)
        else:
            obs = content
        ep.n_tokens += self.count_tokens(content)
        if ep.n_tokens > self.config.max_episode_tokens:
            return self._finish(truncated=True, reason="max_episode_tokens", kind=action.kind, obs=obs)
        info = self._info()
        info["action"] = action.kind
        if action.error:
            info["error"] = action.error
        return obs, self._turn_reward(), False, False, info

    def _hint(self, action: Action) -> str:
        if self.chat:
            return (
                f"Expected a `{TOOL_NAME}` tool call or a final message ending with the {REC_OPEN} ... {REC_CLOSE} "
                f"list ({action.error})."
            )
        return (
            f"Expected a tool call {PREF_OPEN} phrases {PREF_CLOSE} or the final {THINK_CLOSE} and "
            f"{REC_OPEN} ... {REC_CLOSE} list ({action.error})."
        )

    # -- ending and rewards ----------------------------------------------------------------------------------

    def _format_input(self) -> str | list[dict]:
        ep = self._episode
        return [*self._prompt, *ep.transcript] if self.chat else self._prompt + ep.transcript

    def _finish(
        self, truncated: bool, reason: str | None = None, kind: str = "answer", obs: str = ""
    ) -> tuple[str, float, bool, bool, dict]:
        """End the episode: format checks, the reward (the rest of it in per_turn mode), the final info."""
        ep = self._episode
        ep.truncated = truncated
        problems = format_problems(self._format_input(), len(ep.tool_calls), self.config.rec_k, self.codec)
        ep.format_problems = tuple(problems)
        terms: dict[str, float] = {}
        unweighted: dict[str, float] = {}
        total = 0.0
        if self.reward_fn is not None:
            breakdown = self.reward_fn(ep)
            total = float(breakdown.total)
            terms = {str(k): float(v) for k, v in dict(breakdown.terms).items()}
            unweighted = {str(k): float(v) for k, v in dict(getattr(breakdown, "unweighted", terms)).items()}
        reward = _exact_remainder(total, self._paid) if self.config.reward_mode == "per_turn" else total
        self._paid += reward
        self._terminated, self._truncated = not truncated, truncated
        info = self._info()
        info.update(
            {
                "action": kind,
                "episode": ep,
                "reward_terms": terms,
                "reward_unweighted": unweighted,
                "reward_total": total,
                "answer": {"item_ids": list(ep.answer_ids), "ranked_ids": list(ep.ranked_ids)},
                "n_invalid": ep.n_invalid,
                "n_duplicate": ep.n_duplicate,
                "format_problems": list(ep.format_problems),
                "retrieved": list(ep.retrieved),
                "truncated_by": reason,
            }
        )
        return obs, reward, not truncated, truncated, info

    def _turn_reward(self) -> float:
        """per_turn: the change of the process-level terms of the provisional episode since the last payment."""
        if self.config.reward_mode != "per_turn" or self.reward_fn is None:
            return 0.0
        ep = self._episode
        provisional = dataclasses.replace(
            ep,
            format_problems=(),
            tool_calls=list(ep.tool_calls),
            transcript=list(ep.transcript) if self.chat else ep.transcript,
        )
        terms = self.reward_fn(provisional).terms
        process = sum(float(v) for k, v in dict(terms).items() if self.reward_levels.get(k) == "process")
        reward = process - self._paid
        self._paid += reward
        return reward

    # -- info ------------------------------------------------------------------------------------------------

    def _messages(self) -> list[dict]:
        return [dict(m) for m in (*self._prompt, *self._episode.transcript)]

    def _info(self) -> dict[str, Any]:
        ep = self._episode
        info: dict[str, Any] = {
            "user": ep.user,
            "split": ep.split,
            "turn": ep.n_turns,
            "tool_calls": [{"preference": c.preference, "item_ids": list(c.item_ids)} for c in ep.tool_calls],
            "n_tool_calls": len(ep.tool_calls),
            "n_tokens": ep.n_tokens,
        }
        if self.chat:
            info["messages"] = self._messages()
        return info


class DeepRecVectorEnv:
    """`n_envs` DeepRecEnv copies sharing one retriever and title matcher; each step serves all tool calls of the
    batch with ONE `retriever.retrieve` call.

    `reset(seed, options)`: env i is reset with seed + i (None stays None); options: {"split": ..., "users": [one
    user id or None per env]}. `step(actions)` takes one string per env and returns lists (obs, rewards,
    terminated, truncated, infos). There is no auto-reset: a finished sub-env keeps returning ("", 0.0, its
    terminated, its truncated, info) until the next `reset`.

    Note: the retriever clamps k to the fewest eligible items over a batch, so when some user's history leaves
    fewer than recall_k items in the catalogue, batched calls return fewer items for every row of that batch.
    """

    def __init__(
        self,
        dataset: RecDataset,
        retriever: Retriever,
        n_envs: int,
        reward_fn: RewardFn | None = None,
        reward_levels: Mapping[str, str] | None = None,
        config: EnvConfig | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ):
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        config = config if config is not None else EnvConfig()
        config.validate()
        matcher = TitleMatcher(dataset, config.fuzzy_threshold)
        self.config = config
        self.retriever = retriever
        self.envs = [
            DeepRecEnv(dataset, retriever, reward_fn, reward_levels, config, count_tokens, matcher)
            for _ in range(n_envs)
        ]
        self.num_envs = n_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space

    def reset(self, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[list[str], list[dict]]:
        options = dict(options or {})
        users = options.pop("users", None)
        if users is not None and len(users) != self.num_envs:
            raise ValueError(f"options['users'] needs {self.num_envs} entries, got {len(users)}")
        results = []
        for i, env in enumerate(self.envs):
            env_options = dict(options)
            if users is not None and users[i] is not None:
                env_options["user"] = users[i]
            results.append(env.reset(seed=None if seed is None else seed + i, options=env_options))
        return [obs for obs, _ in results], [info for _, info in results]

    def step(self, actions: Sequence[str]) -> tuple[list[str], list[float], list[bool], list[bool], list[dict]]:
        if isinstance(actions, str) or len(actions) != self.num_envs:
            raise ValueError(f"step needs a sequence of {self.num_envs} actions, one per env")
        pending = [env._prepare(action) for env, action in zip(self.envs, actions, strict=True)]
        found = _serve(self.retriever, self.config, pending)
        results = [env._complete(p, ids) for env, p, ids in zip(self.envs, pending, found, strict=True)]
        obs, rewards, terminated, truncated, infos = (list(column) for column in zip(*results, strict=True))
        return obs, rewards, terminated, truncated, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()
