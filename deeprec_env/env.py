"""`DeepRecEnv`: the recommendation episode as a `gymnasium.Env` of text observations and text actions.

One episode: `reset` picks a user (seeded; `options={"split": ..., "user": ..., "cut": ...}`, the split defaulting to
`config.split`, "train", the train cut point drawn among `config.train_cuts`) and renders the prompt: instructions, the
user's recent history as item cards, with `config.profile` the user's profile card (`deeprec_env.data.profiles`) and,
with `config.requests`, the user's request (`deeprec_env.requests`). The agent
then writes segments; `step(segment)` cleans one (`protocol.clean_text`: invalid code points replaced, invisible and
control characters removed, before anything is parsed or "empty") and parses it with the configured codec
(`deeprec_env.protocol`):

* tool call: the TRM retrieves `recall_k` items for the user's full history and each preference (a chat message may
  hold several calls: every one runs, as in TRL; with `new_results`, the top `recall_k` of the items no earlier call
  of the episode returned); the observation is the rendered result, and a `ToolCall` is
  recorded in the `Episode`. A call that cannot run (another tool's name, other arguments) or that the retriever
  fails on (logged) gets an error result and counts in `Episode.n_failed_calls`;
* answer: the lines are matched to item ids (titles: items retrieved in this episode win ties; with `item_refs:
  handles` tool results lead each item with its handle `#N` and a line starting with one names that item exactly,
  `deeprec_env.protocol.handles`; with `explanations` each line's reason after " -- " is split off first and kept in
  `Episode.answer_reasons`), the format is checked, the episode is scored and terminates (with `interests`, the last
  interest block the agent wrote is parsed into `Episode.interests` first);
* malformed (neither): counted in `Episode.n_malformed`; the observation is a one-line hint; the episode goes on.

Any string is a valid action (the chat codec also takes an assistant message dict, every string in it cleaned);
nothing an agent writes raises.
Limits truncate the episode (`truncated=True`), never raise: a tool call past `max_tool_calls` (it does not run), a
segment or observation that takes the episode past `max_episode_tokens`, and the `max_turns`-th segment without an
answer (the segment is processed, then the episode ends). A truncated episode is scored like an answered one: an
unanswered episode fails the format check, so the reward's format gate zeroes its outcome terms. `end(reason)` ends
an episode the same way from outside (an agent out of budget, a time limit: see `deeprec_env.wrappers`).

Transcript (`Episode.transcript`, the text the format checks read with the answer the env parsed and the calls it
ran), after the prompt:
* tags: one string: every segment cut at `action.end` (text after the action block is dropped), each tool call
  followed by its rendered `<|begin_of_item_list|>` result. Malformed-segment hints are not part of it.
* chat: the messages after the prompt: the assistant message per segment, a tool message per tool call, and a
  user message holding the hint after a malformed segment (format checks ignore user messages).

Observations: tags: the prompt, then each tool result or hint as the text to append after the segment. chat: a JSON
list of messages (`json.dumps`): the prompt messages at reset, then the messages to append after the agent's own.
The step that ends an episode returns "" (or the final tool result when a limit was reached by it).

Info: every step has `user`, `split`, `turn`, `n_tool_calls`, `tool_calls` ([{"preference", "item_ids"}]), `n_tokens`,
`item_refs`, `request` (the user's request, "" without `requests`), `interests` and `explanations` (the options); chat
adds `messages` (the whole conversation) and, at reset, `tools` (the tool schema). The step that ends an episode adds
`deeprec`: the scored `Episode` record. No key collides with Gymnasium's wrappers.

Rewards: `reward_fn(episode)` returns an object with `.total`, `.terms` and optionally `.unweighted` (a
`rewards.HierarchicalReward` with its context bound; this module never imports `rewards`). The total is paid by the
step that ends the episode; `deeprec_env.wrappers.PerTurnReward` pays process terms as they are earned instead.

Token counting: `count_tokens(text)` (default `len(text) // 4`, or a tokenizer's length function) counts the
prompt, every kept segment, every tool result and hint.

Framework-driven chat episodes: a tool-calling framework such as TRL runs the tool functions itself and hands over
the assistant messages only when generation is over. For it, `run_tool(preference)` runs one tool call of the live
episode (limits, retrieval, the record) and returns the tool result, and `finish(messages)` ends the episode with the
conversation the framework recorded and scores it. The retrievals are the ones the policy saw; nothing is replayed.
Both clean what the policy wrote as `step` does (the tool messages hold the env's own results and stay as they are).

`begin_step` and `end_step` are the two halves of `step`, around the retrieval, so that `DeepRecVectorEnv` serves the
tool calls of many envs with one batched retriever call (`serve`: when that call raises, each row is retried alone,
so a query the retriever fails on fails only its own tool call).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium
import numpy as np

from deeprec_env.data.dataset import SPLITS, RecDataset
from deeprec_env.episode import Episode, ToolCall
from deeprec_env.protocol import (
    INSTRUCTIONS,
    ITEM_REFS,
    PREF_CLOSE,
    PREF_OPEN,
    REC_CLOSE,
    REC_OPEN,
    REQUEST_HANDLE,
    THINK_CLOSE,
    TOOL_NAME,
    TOOL_SCHEMA,
    Action,
    TitleMatcher,
    clean_text,
    clean_value,
    format_problems,
    get_codec,
    item_cards,
    parse_interests,
    render_assistant_message,
    split_reason,
)
from deeprec_env.protocol.text import hollow_blocks, normalize_preference
from deeprec_env.protocol.tool import content_text, requests_of_message, tool_request
from deeprec_env.requests import user_request
from deeprec_env.spaces import TextSpace
from deeprec_env.trm.retriever import Retriever

log = logging.getLogger(__name__)
RETRIEVAL_FAILED = "the retriever failed on this preference"  # the error of a tool call whose retrieval raised


@dataclass
class EnvConfig:
    """Episode protocol, limits and rendering (the `env` config node)."""

    protocol: str = "tags"  # "tags" (the paper's format) | "chat" (JSON tool calls)
    split: str = "train"  # default split of reset(); evaluation always names its split
    recall_k: int = 20  # items per tool call
    rec_k: int = 10  # titles in the final answer
    max_tool_calls: int = 8  # a call past this many truncates the episode
    max_turns: int = 12  # agent segments; the max_turns-th segment without an answer truncates the episode
    max_episode_tokens: int = 8192  # prompt + agent segments + observations, as counted by `count_tokens`
    card_chars: int | None = 80  # per item card (None: uncut)
    history_items: int = 20  # most recent history items shown in the prompt
    instructions: str = "full"  # system instructions: "full" (the paper's) | "brief" (for small policies)
    fuzzy_threshold: float = 90.0  # rapidfuzz ratio a fuzzy title match needs
    exclude_history: bool = True  # tool calls never return the user's history items
    new_results: bool = False  # a tool call returns only items no earlier call of the episode returned
    item_refs: str = "titles"  # answers name items by "titles" (the paper's protocol) | "handles" (#N) or titles
    train_cuts: int = 1  # train-split targets per user: its last train_cuts training items (1: the third to last)
    requests: bool = False  # the prompt carries a user request synthesized from the target (deeprec_env.requests)
    request_uninformative: float = 0.2  # share of requests that say nothing about any item
    request_misleading: float = 0.2  # share of requests that state another item's aspects
    profile: bool = False  # the prompt carries the user's profile card (datasets with user features)
    interests: bool = False  # the agent states the user's interests as weighted tags (protocol.interests)
    explanations: bool = False  # answer lines may carry a reason after " -- " (protocol.reasons)

    def validate(self) -> None:
        """One clear error line for a bad value."""
        get_codec(self.protocol)  # raises for an unknown protocol
        if self.split not in SPLITS:
            raise ValueError(f"unknown env.split {self.split!r}; use one of {SPLITS}")
        if self.item_refs not in ITEM_REFS:
            raise ValueError(f"unknown env.item_refs {self.item_refs!r}; use one of {ITEM_REFS}")
        if self.instructions not in INSTRUCTIONS:
            raise ValueError(f"unknown env.instructions {self.instructions!r}; use one of {INSTRUCTIONS}")
        for name in ("recall_k", "rec_k", "max_tool_calls", "max_turns", "max_episode_tokens", "train_cuts"):
            if getattr(self, name) < 1:
                raise ValueError(f"env.{name} must be >= 1, got {getattr(self, name)}")
        shares = (self.request_uninformative, self.request_misleading)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError(f"env.request_uninformative, env.request_misleading must be >= 0, sum <= 1: {shares}")
        if self.history_items < 0:
            raise ValueError(f"env.history_items must be >= 0, got {self.history_items}")


class RewardBreakdown(Protocol):
    total: float
    terms: Mapping[str, float]


RewardFn = Callable[[Episode], RewardBreakdown]


def approx_tokens(text: str) -> int:
    """The default token count: about four characters per token."""
    return len(text) // 4


@dataclass
class PendingStep:
    """A step between `begin_step` and `end_step`.

    ended: the episode had already ended before this step. end: the limit that ends the episode in this step.
    queries: the preferences to retrieve for, one per tool call that runs, in order; history: the user's full
    history they are retrieved for; shown: the items earlier calls of the episode returned (`new_results` leaves
    them out).
    """

    action: Action | None = None
    ended: bool = False
    end: str | None = None
    queries: tuple[str, ...] = ()
    history: np.ndarray | None = None
    shown: tuple[int, ...] = ()


def serve(retriever: Retriever, config: EnvConfig, pending: Sequence[PendingStep]) -> list[list[list[int] | None]]:
    """Serve every retrieval of `pending` with ONE batched retriever call: per step, one list of item ids per query
    (padding dropped). When the batched call raises, every query is retried on its own; one that still fails gets
    None (a failed tool call) and the others their results. Failures are logged as warnings. With `new_results` a
    step's lists leave out its `shown` items and each other's, in call order."""
    rows = [(i, q) for i, p in enumerate(pending) for q in p.queries]
    found: list[list[list[int] | None]] = [[] for _ in pending]
    if not rows:
        return found
    histories = [pending[i].history for i, _ in rows]
    queries = [q for _, q in rows]
    depth = config.recall_k  # with new_results, deep enough to fill each list after what it must leave out
    if config.new_results:
        depth += max(len(p.shown) + config.recall_k * (len(p.queries) - 1) for p in pending if p.queries)
    try:
        results: list[list[int] | None] = list(_retrieve(retriever, config, histories, queries, depth))
    except Exception as err:  # the retriever's failure must not end the episodes of every row
        log.warning("batched retrieval of %d queries failed (%s); retrying one by one", len(rows), _why(err))
        results = []
        for history, query in zip(histories, queries, strict=True):
            try:
                results.extend(_retrieve(retriever, config, [history], [query], depth))
            except Exception as row_err:
                log.warning("retrieval failed for preference %r (%s); the tool call fails", query[:80], _why(row_err))
                results.append(None)
    for (i, _), ids in zip(rows, results, strict=True):
        found[i].append(ids)
    if config.new_results:
        for step, lists in zip(pending, found, strict=True):
            seen = set(step.shown)
            for k, ids in enumerate(lists):
                if ids is not None:
                    lists[k] = [i for i in ids if i not in seen][: config.recall_k]
                    seen.update(lists[k])
    return found


def _retrieve(
    retriever: Retriever, config: EnvConfig, histories: list, queries: list[str], depth: int
) -> list[list[int]]:
    """One retriever call: per query, its top `depth` item ids (padding dropped)."""
    ids, _ = retriever.retrieve(histories, queries, depth, config.exclude_history)
    return [[int(item) for item in row if int(item) > 0] for row in np.asarray(ids).reshape(len(queries), -1)]


def _why(err: Exception) -> str:
    """'ErrorType: first line of the message' for a log line."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _as_action(action: Any, chat: bool) -> str | Mapping[str, Any]:
    """A step's action, cleaned (`clean_text`): a string, or (chat) an assistant message mapping with every string in
    it cleaned; anything else becomes its `str`."""
    if isinstance(action, str):
        return clean_text(action)
    if chat and isinstance(action, Mapping):
        return clean_value(action)
    try:
        return clean_text(str(action))
    except Exception:  # an object whose __str__ fails is still a (malformed) action
        return ""


class DeepRecEnv(gymnasium.Env[str, str]):
    """The DeepRec recommendation episode (see the module docstring for the protocol, limits and rewards).

    dataset: a `RecDataset`; retriever: the TRM tool (`InProcessRetriever` / `RayRetriever`); reward_fn: episode ->
    breakdown, None for zero rewards; count_tokens: text -> token count (default `len(text) // 4`); matcher: a
    shared `TitleMatcher` (built from the dataset when None). `deeprec_env.stack` builds all of them from a config.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}  # ansi: a text snapshot, no frame rate to speak of

    def __init__(
        self,
        dataset: RecDataset,
        retriever: Retriever,
        reward_fn: RewardFn | None = None,
        config: EnvConfig | None = None,
        count_tokens: Callable[[str], int] | None = None,
        matcher: TitleMatcher | None = None,
        render_mode: str | None = None,
    ):
        self.config = config = config if config is not None else EnvConfig()
        config.validate()
        if config.profile and not any(dataset.profiles):
            raise ValueError(
                f"dataset {dataset.name!r} has no user features for env.profile; set env.profile=false (profiles: "
                "synthetic, and ml-100k / ml-1m with their u.user / users.dat)"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; use one of {self.metadata['render_modes']}")
        self.dataset = dataset
        self.retriever = retriever
        self.reward_fn = reward_fn
        self.count_tokens = count_tokens or approx_tokens
        self.codec = get_codec(config.protocol)
        self.matcher = matcher if matcher is not None else TitleMatcher(dataset, config.fuzzy_threshold)
        self.render_mode = render_mode
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self._eval_users: dict[str, np.ndarray] = {}
        self._episode: Episode | None = None
        self._prompt: str | list[dict[str, str]] = ""
        self._limit: str | None = None  # a limit reached by `run_tool`, applied by `finish`
        self._terminated = self._truncated = False

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

    @property
    def done(self) -> bool:
        """Whether the current episode has ended."""
        return self._terminated or self._truncated

    # -- gymnasium API ---------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[str, dict]:
        """options: {"split": "train"|"valid"|"test", "user": int, "cut": int}; without a user one is drawn (seeded)
        from the users with a target in the split. On the train split the target is the training item `cut` places
        before the third to last (history: everything before it); without a cut one of the user's first
        `train_cuts` is drawn (seeded)."""
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
        cut = options.get("cut")
        if cut is None:
            n_cuts = self.dataset.n_cuts(user, self.config.train_cuts) if split == "train" else 0
            cut = int(self.np_random.integers(n_cuts)) if n_cuts > 1 else 0
        history, target = self.dataset.history_and_target(user, split, int(cut))
        shown = history[-self.config.history_items :] if self.config.history_items > 0 else history[:0]
        request = None
        if self.config.requests:
            shares = (self.config.request_uninformative, self.config.request_misleading)
            request = user_request(self.dataset, split, user, int(cut), target, *shares)
        cards = item_cards(self.dataset, shown, self.config.card_chars)
        profile = self.dataset.profiles[user] if self.config.profile else ""
        self._prompt = self.codec.render_prompt(cards, self.config, request.text if request else "", profile)
        self._episode = Episode(
            user=user,
            split=split,
            history=history,
            target=target,
            cut=int(cut),
            request=request.text if request else "",
            request_kind=request.kind if request else "",
            profile=profile,
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
        self._limit = None
        self._terminated = self._truncated = False
        info = self._info()
        if self.chat:
            info["tools"] = [TOOL_SCHEMA]
        return obs, info

    def step(self, action: str | Mapping[str, Any]) -> tuple[str, float, bool, bool, dict]:
        """One agent segment; see the module docstring. Never raises for any action."""
        pending = self.begin_step(action)
        return self.end_step(pending, serve(self.retriever, self.config, [pending])[0])

    def render(self) -> str | None:
        """render_mode "ansi": the prompt and the transcript as text."""
        if self.render_mode != "ansi" or self._episode is None:
            return None
        if self.chat:
            return json.dumps(self._messages(), ensure_ascii=False, indent=1)
        return self._prompt + self._episode.transcript

    def end(self, reason: str = "agent_stopped") -> tuple[float, dict]:
        """End the current episode now, truncated (an agent out of budget, a time limit): (reward, final info). An
        episode that already ended keeps its result and pays nothing more."""
        if self._episode is None:
            raise RuntimeError("call reset() before end()")
        if self.done:
            return 0.0, self._info() | {"deeprec": self._episode}
        _, reward, _, _, info = self._finish(truncated=True, reason=reason, kind="stop")
        return reward, info

    # -- the two halves of a step (DeepRecVectorEnv batches the retrieval between them) ------------------------

    def begin_step(self, action: Any) -> PendingStep:
        """Parse a segment and apply everything up to retrieval: turn and token accounting, the transcript, the
        limits. Returns what `end_step` needs, with the preferences to retrieve for."""
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return PendingStep(ended=True)
        ep, config = self._episode, self.config
        raw = _as_action(action, self.chat)
        parsed = self.codec.parse(raw)
        ep.n_turns += 1
        if isinstance(raw, Mapping):
            kept: str | dict = {"role": "assistant", **{k: raw[k] for k in ("content", "tool_calls") if k in raw}}
            tokens = self.count_tokens(render_assistant_message(kept))
        else:
            kept = raw[: parsed.end]
            tokens = self.count_tokens(kept)
        if ep.n_tokens + tokens > config.max_episode_tokens:
            return PendingStep(parsed, end="max_episode_tokens")  # the segment does not fit: it is not recorded
        ep.n_tokens += tokens
        if self.chat:
            ep.transcript.append(kept if isinstance(kept, dict) else {"role": "assistant", "content": kept})
        else:
            ep.transcript += kept
        if parsed.kind == "answer":
            return PendingStep(parsed)
        end = "max_turns" if ep.n_turns >= config.max_turns else None
        if parsed.kind == "malformed":
            ep.n_malformed += 1
            return PendingStep(parsed, end=end)
        queries = tuple(self._query(call.preference) for call in parsed.calls if call.runs)
        if len(ep.tool_calls) + len(queries) > config.max_tool_calls:
            return PendingStep(parsed, end="max_tool_calls")
        return PendingStep(parsed, end=end, queries=queries, history=ep.history, shown=ep.retrieved)

    def end_step(
        self, pending: PendingStep, results: Sequence[Sequence[int] | None]
    ) -> tuple[str, float, bool, bool, dict]:
        """Apply the retrieval results (one id list per query of `pending`, None where the retriever failed) and
        produce the step's return values."""
        if pending.ended:
            return "", 0.0, self._terminated, self._truncated, self._info()
        ep, action = self._episode, pending.action
        if pending.end in ("max_episode_tokens", "max_tool_calls"):
            return self._finish(truncated=True, reason=pending.end, kind=action.kind)
        if action.kind == "answer":
            self._match_answer(action.answer_lines)
            return self._finish(truncated=False, kind="answer")
        if action.kind == "tool_call":
            found, asked = iter(results), iter(pending.queries)
            contents = []
            for c in action.calls:
                ids, query = (next(found), next(asked)) if c.runs else (None, None)
                if ids is None:
                    ep.n_failed_calls += 1
                    contents.append(self._failed_call(c.error or RETRIEVAL_FAILED))
                else:
                    contents.append(self._record_call(query, ids))
        else:  # malformed: a one-line hint, not protocol text (see the module docstring)
            contents = [self._hint(action)]
        if self.chat:
            role = "tool" if action.kind == "tool_call" else "user"
            messages = [
                {"role": role, "content": c} | ({"name": TOOL_NAME} if role == "tool" else {}) for c in contents
            ]
            ep.transcript.extend(messages)
            obs = json.dumps(messages, ensure_ascii=False)
        else:
            obs = "".join(contents)
            if action.kind == "tool_call":
                ep.transcript += obs
        ep.n_tokens += sum(self.count_tokens(c) for c in contents)
        if ep.n_tokens > self.config.max_episode_tokens:
            return self._finish(truncated=True, reason="max_episode_tokens", kind=action.kind, obs=obs)
        if pending.end is not None:
            return self._finish(truncated=True, reason=pending.end, kind=action.kind, obs=obs)
        info = self._info()
        info["action"] = action.kind
        if action.error:
            info["error"] = action.error
        return obs, 0.0, False, False, info

    # -- framework-driven chat episodes --------------------------------------------------------------------------

    def run_tool(self, preference: Any) -> str:
        """Run one tool call of the live chat episode now (a tool-calling framework executes it); returns the tool
        result the policy reads (an error result when the call cannot run or the retriever fails on it). Past
        `max_tool_calls` nothing runs and `finish` truncates the episode."""
        if not self.chat:
            raise ValueError("run_tool serves the chat codec: build the env with protocol='chat'")
        if self._episode is None:
            raise RuntimeError("call reset() before run_tool()")
        request = tool_request(TOOL_NAME, {"preference": preference})
        if not request.runs:
            return self._failed_call(request.error)
        if self.done or self._limit is not None:
            return "No more tool calls: the episode is over; write the final answer."
        if len(self._episode.tool_calls) >= self.config.max_tool_calls:
            self._limit = "max_tool_calls"
            return f"No more tool calls (at most {self.config.max_tool_calls}): write the final answer."
        query = self._query(request.preference)
        pending = PendingStep(queries=(query,), history=self._episode.history, shown=self._episode.retrieved)
        ids = serve(self.retriever, self.config, [pending])[0][0]
        if ids is None:
            return self._failed_call(RETRIEVAL_FAILED)
        return self._record_call(query, ids)

    def finish(self, messages: Sequence[Mapping[str, Any]]) -> tuple[float, dict]:
        """End the live chat episode with the conversation the framework recorded after the prompt (assistant
        messages, structured tool calls included, and the tool messages with `run_tool`'s results) and score it:
        (reward, final info). The last assistant message without tool calls is the answer; without one the episode is
        truncated as unanswered. Assistant messages are cleaned as `step` cleans them."""
        if self._episode is None:
            raise RuntimeError("call reset() before finish()")
        if self.done:
            return 0.0, self._info() | {"deeprec": self._episode}
        ep = self._episode
        ep.transcript = [
            clean_value(m) if m.get("role") == "assistant" else dict(m)
            for m in messages
            if isinstance(m, Mapping) and m.get("role") in ("assistant", "tool")
        ]
        ep.tool_calls = self._seen_calls(ep.transcript)
        assistant = [m for m in ep.transcript if m["role"] == "assistant"]
        ep.n_turns = len(assistant)
        calls_of = [len(requests_of_message(m)) for m in assistant]
        ep.n_failed_calls = sum(calls_of) - len(ep.tool_calls)
        turns = [t for t, n in enumerate(calls_of) for _ in range(n)]
        ep.tool_calls = [dataclasses.replace(c, turn=t) for c, t in zip(ep.tool_calls, turns, strict=False)]
        ep.n_tokens = sum(self.count_tokens(m["content"]) for m in self._prompt) + sum(
            self.count_tokens(render_assistant_message(m) if m["role"] == "assistant" else content_text(m["content"]))
            for m in ep.transcript
        )
        last = assistant[-1] if assistant else None
        if self._limit is not None:
            reason = self._limit
        elif ep.n_tokens > self.config.max_episode_tokens:
            reason = "max_episode_tokens"
        elif ep.n_turns > self.config.max_turns:
            reason = "max_turns"
        elif last is None or calls_of[-1] or (action := self.codec.parse(last)).kind != "answer":
            reason = "no answer"
        else:
            self._match_answer(action.answer_lines)
            _, reward, _, _, info = self._finish(truncated=False, kind="answer")
            return reward, info
        _, reward, _, _, info = self._finish(truncated=True, reason=reason, kind="stop")
        return reward, info

    def _seen_calls(self, transcript: Sequence[Mapping[str, Any]]) -> list[ToolCall]:
        """The executed calls whose result is in the transcript, in order: a framework may drop a tool result that
        would overrun its generation budget, and a result the policy never saw is no tool call of its episode."""
        calls, seen = self._episode.tool_calls, 0
        for message in transcript:
            if seen < len(calls) and message["role"] == "tool":
                seen += content_text(message.get("content")) == self._render_result(calls[seen].item_ids)
        return calls[:seen]

    # -- parts of a step -------------------------------------------------------------------------------------

    def _query(self, preference: str) -> str:
        """What the tool is asked for a preference: with a request and item handles, the request's handle
        (`#request`) stands for the request's text, so a policy passes the request on without retyping it."""
        request = self._episode.request
        if self.config.item_refs != "handles" or not request or REQUEST_HANDLE not in preference:
            return preference
        return normalize_preference(preference.replace(REQUEST_HANDLE, request))

    def _record_call(self, query: str, item_ids: Sequence[int]) -> str:
        """Record an executed tool call of the current segment (the query the tool ran) and return its result."""
        ids = tuple(int(i) for i in item_ids)
        self._episode.tool_calls.append(ToolCall(query, ids, max(self._episode.n_turns - 1, 0)))
        return self._render_result(ids)

    def _render_result(self, item_ids: Sequence[int]) -> str:
        """A tool result: the items' cards, led by their handles when `item_refs` is "handles" (an item's handle
        never changes once given, so a result renders the same later as when it was returned)."""
        shown = [int(i) for i in item_ids if 0 < int(i) <= self.dataset.n_items]
        cards = item_cards(self.dataset, shown, self.config.card_chars)
        if self.config.item_refs != "handles":
            return self.codec.render_tool_result(cards)
        handles = self._episode.handles
        return self.codec.render_tool_result(cards, [handles[i] for i in shown])

    @staticmethod
    def _failed_call(error: str) -> str:
        """The result of a tool call that cannot run."""
        return f"Error: {error}. Call {TOOL_NAME} with one argument, preference (a string)."

    def _match_answer(self, lines: Sequence[str]) -> None:
        ep = self._episode
        handles = {name: item for item, name in ep.handles.items()} if self.config.item_refs == "handles" else None
        named = lines
        if self.config.explanations:
            split = [split_reason(line) for line in lines]
            named = [item for item, _ in split]
            ep.answer_reasons = tuple(reason for _, reason in split)
        match = self.matcher.match_answer(named, preferred=ep.retrieved, handles=handles)
        ep.answer_lines = tuple(lines)
        ep.answer_ids = match.item_ids
        ep.ranked_ids = match.ranked_ids
        ep.n_invalid = match.n_invalid
        ep.n_duplicate = match.n_duplicate

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

    def _finish(
        self, truncated: bool, reason: str | None = None, kind: str = "answer", obs: str = ""
    ) -> tuple[str, float, bool, bool, dict]:
        """End the episode: format checks, the reward, the final info."""
        ep = self._episode
        ep.truncated, ep.truncated_by = truncated, reason
        prompt_and_transcript = [*self._prompt, *ep.transcript] if self.chat else self._prompt + ep.transcript
        problems = format_problems(prompt_and_transcript, ep.answer_lines, len(ep.tool_calls), ep.rec_k, self.codec)
        ep.format_problems = tuple(problems)
        if self.config.interests:  # the agent's own text only: tool results are the env's
            written = self.codec.solution(prompt_and_transcript)
            ep.interests = parse_interests(hollow_blocks(written, *self.codec.result_tags))
        if self.reward_fn is not None:
            breakdown = self.reward_fn(ep)
            ep.reward_total = float(breakdown.total)
            ep.reward_terms = {str(k): float(v) for k, v in dict(breakdown.terms).items()}
            unweighted = getattr(breakdown, "unweighted", breakdown.terms)
            ep.reward_unweighted = {str(k): float(v) for k, v in dict(unweighted).items()}
        self._terminated, self._truncated = not truncated, truncated
        info = self._info()
        info.update({"action": kind, "deeprec": ep})
        return obs, ep.reward_total, not truncated, truncated, info

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
            "item_refs": self.config.item_refs,
            "request": ep.request,
            "interests": self.config.interests,
            "explanations": self.config.explanations,
        }
        if self.chat:
            info["messages"] = self._messages()
        return info
