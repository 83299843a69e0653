"""Token scores at the learned positions only: the loss head of the warm start and of GRPO on a CPU.

TRL scores a policy's tokens with a tiled log-probability kernel (`SFTTrainer`'s loss, `GRPOTrainer`'s
`fused_lm_head=True` forward) that saves accelerator memory on large vocabularies. Off a Triton device that kernel
projects every position of the sequence (prompt, tool results, padding) tile by tile, and with a small policy its
tile loop costs more than the policy itself. Here the model projects only the positions whose next token is learned
(transformers' `logits_to_keep` as a boolean mask), one ordinary forward; the scores are the same.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass
class LearnedTokenScores:
    """Scores of the learned next tokens, in the order of `mask`'s true entries (flattened)."""

    mask: torch.Tensor  # (batch, seq_len - 1): position t's next token (labels[:, t + 1]) is learned
    log_probs: torch.Tensor  # (n,) log-probability of each learned token
    entropy: torch.Tensor  # (n,) entropy of the next-token distribution, without gradient
    is_top1: torch.Tensor  # (n,) whether the learned token is the most likely one

    def loss(self, num_items_in_batch=None) -> torch.Tensor:
        """The mean negative log-likelihood of the learned tokens (over `num_items_in_batch` tokens when the trainer
        counts them across gradient-accumulation steps)."""
        count = self.log_probs.numel() if num_items_in_batch is None else num_items_in_batch
        return -self.log_probs.sum() / torch.as_tensor(count).clamp(min=1)


def learned_token_scores(model, labels: torch.Tensor, temperature: float = 1.0, **model_inputs) -> LearnedTokenScores:
    """Run `model` on `model_inputs` and score `labels` (-100: not learned; unshifted, as for a causal LM's loss) under
    the temperature-scaled next-token distribution, projecting only the learned positions."""
    learned = torch.zeros_like(labels, dtype=torch.bool)
    learned[:, :-1] = labels[:, 1:] != -100
    model_inputs["use_cache"] = False
    logits = model(**model_inputs, logits_to_keep=learned).logits.float() / temperature
    log_probs = logits.log_softmax(-1)
    targets = labels[:, 1:][learned[:, :-1]]
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        is_top1 = logits.argmax(-1) == targets
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return LearnedTokenScores(learned[:, :-1], token_log_probs, entropy, is_top1)


def use_learned_position_head(model, temperature: float = 1.0) -> None:
    """Make `model(..., labels=labels, fused_lm_head=True)`, the call `GRPOTrainer` scores completions with, project
    only the learned positions (replacing the tiled head TRL added to the model). The output has the fields TRL's
    fused head returns (`loss`, and `log_probs`, `entropy`, `is_top1`, `label_mask` of shape (batch, seq_len - 1),
    zero where nothing is learned); calls without `fused_lm_head` are the model's own forward."""
    from trl.trainer.utils import FusedCausalLMOutput

    own_forward = type(model).forward.__get__(model)

    @functools.wraps(type(model).forward)  # `generate` checks its keyword arguments against this signature
    def forward(*args, fused_lm_head=False, labels=None, num_items_in_batch=None, **kwargs):
        if fused_lm_head and args:
            raise TypeError("a fused_lm_head=True call takes its model inputs as keyword arguments")
        if not fused_lm_head:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return own_forward(*args, **kwargs)
        scores = learned_token_scores(own_forward, labels, temperature, **kwargs)

        def spread(values: torch.Tensor) -> torch.Tensor:
            return values.new_zeros(scores.mask.shape).masked_scatter(scores.mask, values)

        return FusedCausalLMOutput(
            loss=scores.loss(num_items_in_batch),
            log_probs=spread(scores.log_probs),
            entropy=spread(scores.entropy),
            is_top1=spread(scores.is_top1),
            label_mask=scores.mask,
        )

    model.forward = forward
