"""`HierarchicalReward`: weighted sum of reward components with a format gate, plus its Hydra config.

total = sum over components c of c.weight * c(episode), where
- a component with weight 0 is not computed (its term is 0.0), so a disabled model-based term costs nothing;
- with `format_gate`, outcome-level components count only when the episode's format is valid (they are not
  computed otherwise); process-level components always count, as in the paper (invocation and diversity are not
  gated);
- every weighted term is rounded to a multiple of `REWARD_QUANTUM` (2**-32), so any sum of terms, in any order, is
  exact in float64: the per-turn payments of `deeprec_env.wrappers.PerTurnReward` add up to `total` bit for bit.

Config: `RewardConfig` holds one sub-config per component (its `weight` plus the paper's parameters) and
`format_gate`. The presets are configs/reward/cold.yaml (stage 1: process terms only), configs/reward/rec.yaml (stage 2:
outcome terms first, process terms at a quarter weight) and the paper's own formulas, cold-paper.yaml and
rec-paper.yaml (docs/rewards.md); any field can be overridden from the command line, e.g. `reward=rec
reward.point.weight=0`. `load_reward_config(node)` turns such a node into a validated
`RewardConfig`, `build_reward(config)` builds the reward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deeprec_env.episode import Episode
from rewards.components import (
    LEVELS,
    CallCounter,
    DiversityReward,
    DuplicatePenalty,
    ExplanationReward,
    FormatReward,
    GroundingReward,
    HistoryPenalty,
    HitRankReward,
    InterestReward,
    InvalidPenalty,
    InvocationReward,
    Level,
    NDCGReward,
    PointReward,
    RewardComponent,
    RewardContext,
)

REWARD_QUANTUM = 2.0**-32  # terms are multiples of this; sums of them are exact below 2**20 in magnitude


def quantize(value: float) -> float:
    """`value` rounded to the nearest multiple of `REWARD_QUANTUM`."""
    return round(value / REWARD_QUANTUM) * REWARD_QUANTUM


@dataclass(frozen=True)
class RewardBreakdown:
    """One episode's reward: `total` = sum of `terms`. `terms[name]` is the weighted value and `unweighted[name]`
    the component's own value, for every configured component (0.0 when off or gated). `gated`: the format gate
    suppressed the outcome terms."""

    total: float
    terms: dict[str, float]
    unweighted: dict[str, float]
    gated: bool = False

    def log_dict(self, prefix: str = "reward/") -> dict[str, float]:
        """Flat scalars for TensorBoard: `{prefix}total` and `{prefix}{name}` (weighted) per component."""
        return {f"{prefix}total": self.total, **{f"{prefix}{name}": value for name, value in self.terms.items()}}


class HierarchicalReward:
    """Combines components (`name`, `level`, `weight`, `__call__(episode, context) -> float`) into one reward."""

    def __init__(self, components: Sequence[RewardComponent], format_gate: bool = True) -> None:
        names = [c.name for c in components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reward component names must be unique, repeated: {duplicates}")
        for c in components:
            if c.level not in LEVELS:
                raise ValueError(f"reward component {c.name!r} has level {c.level!r}; expected one of {LEVELS}")
            if not math.isfinite(c.weight):
                raise ValueError(f"reward component {c.name!r} has a non-finite weight {c.weight!r}")
        self.components: tuple[RewardComponent, ...] = tuple(components)
        self.format_gate = bool(format_gate)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @property
    def levels(self) -> dict[str, Level]:
        return {c.name: c.level for c in self.components}

    @property
    def weights(self) -> dict[str, float]:
        return {c.name: c.weight for c in self.components}

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the components with a non-zero weight."""
        return tuple(c.name for c in self.components if c.weight != 0)

    def _gated(self, episode: Episode) -> bool:
        return self.format_gate and not episode.format_ok

    def _computes(self, component: RewardComponent, gated: bool) -> bool:
        return component.weight != 0 and not (gated and component.level == "outcome")

    def __call__(self, episode: Episode, context: RewardContext | None = None) -> RewardBreakdown:
        context = context if context is not None else RewardContext()
        gated = self._gated(episode)
        terms: dict[str, float] = {}
        unweighted: dict[str, float] = {}
        for c in self.components:
            value = float(c(episode, context)) if self._computes(c, gated) else 0.0
            if not math.isfinite(value):
                raise ValueError(f"reward component {c.name!r} returned {value} for user {episode.user}")
            unweighted[c.name] = value
            terms[c.name] = quantize(c.weight * value) if value else 0.0
        return RewardBreakdown(total=float(sum(terms.values())), terms=terms, unweighted=unweighted, gated=gated)

    def batch(self, episodes: Sequence[Episode], context: RewardContext | None = None) -> list[RewardBreakdown]:
        """Score many episodes; components with a `prepare` hook first see the episodes they will score (e.g. the
        diversity component encodes all new preference texts in one call)."""
        context = context if context is not None else RewardContext()
        for c in self.components:
            prepare = getattr(c, "prepare", None)
            if prepare is not None:
                scored = [e for e in episodes if self._computes(c, self._gated(e))]
                if scored:
                    prepare(scored, context)
        return [self(e, context) for e in episodes]

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.name}={c.weight:g}" for c in self.components)
        return f"HierarchicalReward({parts}, format_gate={self.format_gate})"


# --- config -------------------------------------------------------------------------------------------------------


@dataclass
class FormatConfig:
    weight: float = 1.0
    error: float = -1.0  # value when any format check fails (paper: format_error)


@dataclass
class InvocationConfig:
    weight: float = 1.0
    base: float = 0.5  # per call beyond the first (paper: recall_num_base)
    cap: int = 3  # calls beyond this earn nothing (paper: recall_num_max)
    calls: str = "informative"  # which calls count: informative | non_empty | all (the paper's)


@dataclass
class DiversityConfig:
    weight: float = 1.0
    scale: float = 0.2  # paper: diversity_base
    calls: str = "informative"  # whose preferences count: informative | non_empty | all (the paper's)


@dataclass
class InformativeConfig:
    """How informative calls are recognised (`rewards.components.CallCounter`)."""

    aspect_similarity: float = 0.7  # a phrase this close to an aspect of the user's history states it


@dataclass
class HitRankConfig:
    weight: float = 1.0
    correct: float = 1.0  # hit (paper: outcome_correct)
    linear: float = 0.2  # per rank above the list's end (paper: outcome_linear)


@dataclass
class PointConfig:
    weight: float = 1.0
    scale: float = 10.0  # paper: sim_reward_base
    clip_negative: bool = True  # guard: sims below 0 count as 0 (false: the paper's formula)
    exclude_history: bool = True  # guard: history items other than the target score 0 (false: the paper's)


@dataclass
class ExtraConfig:
    weight: float = 0.0


@dataclass
class InterestConfig:
    weight: float = 0.0
    max_tags: int = 5  # tags per part that count, and the user's top tags they are compared with
    recent_items: int = 5  # the history's last items that make the recent part


@dataclass
class RewardConfig:
    """Every component's weight and parameters. The defaults are the paper's six terms all on (weight 1) with the
    guards on and the extras off; the presets (configs/reward/*.yaml) choose the terms and weights of each stage."""

    name: str = "custom"
    format_gate: bool = True
    informative: InformativeConfig = field(default_factory=InformativeConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    invocation: InvocationConfig = field(default_factory=InvocationConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    grounding: ExtraConfig = field(default_factory=ExtraConfig)
    hit_rank: HitRankConfig = field(default_factory=HitRankConfig)
    point: PointConfig = field(default_factory=PointConfig)
    ndcg: ExtraConfig = field(default_factory=ExtraConfig)
    invalid_penalty: ExtraConfig = field(default_factory=ExtraConfig)
    duplicate_penalty: ExtraConfig = field(default_factory=ExtraConfig)
    history_penalty: ExtraConfig = field(default_factory=ExtraConfig)
    interest: InterestConfig = field(default_factory=InterestConfig)
    explanation: ExtraConfig = field(default_factory=ExtraConfig)


def load_reward_config(node: Any = None) -> RewardConfig:
    """A `RewardConfig` from an OmegaConf node or a plain mapping (e.g. `cfg.reward`), merged over the defaults and
    type-checked; an unknown key or a wrongly typed value raises one error naming it. None -> defaults."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, RewardConfig):
        return node
    base = OmegaConf.structured(RewardConfig)
    try:
        merged = OmegaConf.merge(base, node) if node is not None else base
    except OmegaConfBaseException as err:
        message = str(err).strip().splitlines()[0]
        raise ValueError(f"bad reward config ({message}); valid keys: {sorted(base.keys())}") from None
    config = OmegaConf.to_object(merged)
    assert isinstance(config, RewardConfig)
    return config


def build_reward(config: RewardConfig | Mapping[str, Any] | Any = None) -> HierarchicalReward:
    """The `HierarchicalReward` of a config (a `RewardConfig`, an OmegaConf node or a mapping; None -> defaults).
    Components come in a fixed order and all are present, so logged keys do not change between presets."""
    c = load_reward_config(config)
    counter = CallCounter(c.informative.aspect_similarity)
    components: list[RewardComponent] = [
        FormatReward(c.format.weight, error=c.format.error),
        InvocationReward(
            c.invocation.weight, base=c.invocation.base, cap=c.invocation.cap, rule=c.invocation.calls, counter=counter
        ),
        DiversityReward(c.diversity.weight, scale=c.diversity.scale, rule=c.diversity.calls, counter=counter),
        GroundingReward(c.grounding.weight),
        HitRankReward(c.hit_rank.weight, correct=c.hit_rank.correct, linear=c.hit_rank.linear),
        PointReward(
            c.point.weight,
            scale=c.point.scale,
            clip_negative=c.point.clip_negative,
            exclude_history=c.point.exclude_history,
        ),
        NDCGReward(c.ndcg.weight),
        InvalidPenalty(c.invalid_penalty.weight),
        DuplicatePenalty(c.duplicate_penalty.weight),
        HistoryPenalty(c.history_penalty.weight),
        InterestReward(c.interest.weight, max_tags=c.interest.max_tags, recent_items=c.interest.recent_items),
        ExplanationReward(c.explanation.weight),
    ]
    return HierarchicalReward(components, format_gate=c.format_gate)
