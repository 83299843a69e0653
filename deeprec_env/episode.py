"""`Episode`: the record of one episode, what reward components and metrics read.

The environment fills it while it runs and scores it when it ends; rewards never parse text or call the retriever
themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deeprec_env.protocol.handles import item_handles
from deeprec_env.protocol.interests import Interests


@dataclass(frozen=True)
class ToolCall:
    """One executed tool call: the normalised preference text and the item ids it returned, best first."""

    preference: str
    item_ids: tuple[int, ...]
    turn: int  # 0-based index of the agent segment that made the call


@dataclass
class Episode:
    """Everything the rewards and the metrics need about one episode, and (once it ended) its reward."""

    user: int
    split: str
    history: np.ndarray  # the user's item ids before the target, oldest first
    target: int
    rec_k: int
    codec: str  # "tags" | "chat"
    cut: int = 0  # train split: how many training items before the third to last the target lies
    request: str = ""  # the user's request shown in the prompt (env.requests), "" without one
    request_kind: str = ""  # informative | uninformative | misleading (deeprec_env.requests)
    profile: str = ""  # the user's profile card shown in the prompt (env.profile), "" without one
    prompt: str | list[dict] = ""  # what the agent was shown first: the prompt text (tags) or messages (chat)
    transcript: str | list[dict] = ""  # agent-side text (tags) or messages (chat) after the prompt
    tool_calls: list[ToolCall] = field(default_factory=list)
    answer_lines: tuple[str, ...] | None = None  # None: the agent never answered
    answer_ids: tuple[int | None, ...] = ()  # per answer line: matched item id, None for invalid/duplicate
    ranked_ids: tuple[int, ...] = ()  # valid, de-duplicated answer items in order
    answer_reasons: tuple[str, ...] = ()  # per answer line, its reason (env.explanations; "" when it gave none)
    interests: Interests | None = None  # the last interest block the agent wrote (env.interests), None without one
    n_invalid: int = 0
    n_duplicate: int = 0
    format_problems: tuple[str, ...] = ()
    n_turns: int = 0  # agent segments taken
    n_malformed: int = 0  # segments that were neither a valid tool call nor an answer
    n_failed_calls: int = 0  # tool calls that could not run (another tool's name, wrong arguments)
    n_tokens: int = 0
    truncated: bool = False  # a limit (tool calls, turns, tokens, a time limit) ended the episode
    truncated_by: str | None = None  # which limit, or why the agent stopped without answering
    reward_total: float = 0.0  # set when the episode ends
    reward_terms: dict[str, float] = field(default_factory=dict)  # weighted, per reward component
    reward_unweighted: dict[str, float] = field(default_factory=dict)

    @property
    def format_ok(self) -> bool:
        return not self.format_problems

    @property
    def retrieved(self) -> tuple[int, ...]:
        """Every item the tool returned in this episode, first occurrence order."""
        return tuple(dict.fromkeys(i for call in self.tool_calls for i in call.item_ids))

    @property
    def handles(self) -> dict[int, str]:
        """item id -> its handle (`#N`, `protocol.handles`) for every retrieved item."""
        return item_handles(self.retrieved)

    @property
    def preferences(self) -> list[str]:
        return [call.preference for call in self.tool_calls]

    @property
    def target_position(self) -> int | None:
        """0-based position of the target in the answer list (by line, so invalid lines count), else None."""
        for position, item in enumerate(self.answer_ids):
            if item == self.target:
                return position
        return None
