"""Hierarchical reward for DeepRec episodes: process terms (format, tool use, query diversity) and outcome terms
(hit + rank, point-wise similarity), combined with weights and a format gate.

    reward = build_reward(cfg.reward)                  # presets: configs/reward/{cold,rec}.yaml
    context = RewardContext(encoder, item_text, item_vectors)
    breakdown = reward(episode, context)               # .total, .terms (weighted), .unweighted, .gated

Reads `deeprec_env.episode.Episode` only; never imports agents, TRL or Ray.
"""

from rewards.components import (
    LEVELS,
    Component,
    DiversityReward,
    DuplicatePenalty,
    FormatReward,
    HistoryPenalty,
    HitRankReward,
    InvalidPenalty,
    InvocationReward,
    Level,
    NDCGReward,
    PointReward,
    RewardComponent,
    RewardContext,
)
from rewards.hierarchical import (
    DiversityConfig,
    ExtraConfig,
    FormatConfig,
    HierarchicalReward,
    HitRankConfig,
    InvocationConfig,
    PointConfig,
    RewardBreakdown,
    RewardConfig,
    build_reward,
    load_reward_config,
)

__all__ = [
    "LEVELS",
    "Component",
    "DiversityConfig",
    "DiversityReward",
    "DuplicatePenalty",
    "ExtraConfig",
    "FormatConfig",
    "FormatReward",
    "HierarchicalReward",
    "HistoryPenalty",
    "HitRankConfig",
    "HitRankReward",
    "InvalidPenalty",
    "InvocationConfig",
    "InvocationReward",
    "Level",
    "NDCGReward",
    "PointConfig",
    "PointReward",
    "RewardBreakdown",
    "RewardComponent",
    "RewardConfig",
    "RewardContext",
    "build_reward",
    "load_reward_config",
]
