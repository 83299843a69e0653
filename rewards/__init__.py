"""Hierarchical reward for DeepRec episodes: process terms (format, tool use, query diversity) and outcome terms
(hit + rank, point-wise similarity), and the RecGPT terms (interests, judged explanations), combined with weights and a
format gate.

    reward = build_reward(cfg.reward)                  # presets: configs/reward/{cold,rec,cold-paper,rec-paper}.yaml
    context = RewardContext(encoder, item_text, item_vectors)
    breakdown = reward(episode, context)               # .total, .terms (weighted), .unweighted, .gated

Reads `deeprec_env.episode.Episode` only; never imports agents, TRL or Ray.
"""

from rewards.components import (
    CALL_RULES,
    LEVELS,
    CallCounter,
    Component,
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
    TextVectors,
)
from rewards.hierarchical import (
    REWARD_QUANTUM,
    DiversityConfig,
    ExtraConfig,
    FormatConfig,
    HierarchicalReward,
    HitRankConfig,
    InformativeConfig,
    InterestConfig,
    InvocationConfig,
    PointConfig,
    RewardBreakdown,
    RewardConfig,
    build_reward,
    load_reward_config,
    quantize,
)

__all__ = [
    "CALL_RULES",
    "LEVELS",
    "REWARD_QUANTUM",
    "CallCounter",
    "Component",
    "DiversityConfig",
    "DiversityReward",
    "DuplicatePenalty",
    "ExplanationReward",
    "ExtraConfig",
    "FormatConfig",
    "FormatReward",
    "GroundingReward",
    "HierarchicalReward",
    "HistoryPenalty",
    "HitRankConfig",
    "HitRankReward",
    "InformativeConfig",
    "InterestConfig",
    "InterestReward",
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
    "TextVectors",
    "build_reward",
    "load_reward_config",
    "quantize",
]
