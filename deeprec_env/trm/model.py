"""The sequential recommender: SASRec, optionally made text- and preference-aware (the TRM).

One model, read top to bottom:
  item vectors  = id embedding (+ projection of frozen item text embeddings when `fuse_item_text`)
  user vector   = causal transformer over the last `max_len` items, hidden state at the newest position
                  (+ projection of a query text embedding, then LayerNorm, when `fuse_query`)
  scores        = cosine(user vector, item vectors) / temperature (+ a learned item bias) over the catalogue.
With both fusions off it is plain SASRec (ID-only); the preference-aware TRM switches them on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """Architecture of the sequential recommender."""

    max_len: int = 20
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    temperature: float = 0.1
    item_bias: bool = True  # a learned per-item logit offset: cosine scores alone cannot express popularity
    fuse_item_text: bool = False
    fuse_query: bool = False

    @property
    def uses_text(self) -> bool:
        """Whether the model needs item text embeddings (and so a text encoder)."""
        return self.fuse_item_text or self.fuse_query


class CausalSelfAttentionBlock(nn.Module):
    """Pre-norm transformer block; `mask` is True where attention is allowed."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(hidden, dim=-1)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, length, hidden)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class SequentialRecommender(nn.Module):
    """SASRec backbone with optional item-text and query fusion; id 0 pads, histories are left-padded."""

    def __init__(self, n_items: int, config: ModelConfig, item_text: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.n_items = n_items
        hidden = config.hidden
        self.item_embedding = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, hidden)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(hidden, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(hidden)
        if config.uses_text:
            if item_text is None:
                raise ValueError("text fusion needs item text embeddings; pass item_text=(n_items+1, text_dim)")
            self.register_buffer("item_text", item_text.float(), persistent=False)
        if config.fuse_item_text:
            self.text_projection = nn.Linear(item_text.shape[1], hidden)
        if config.fuse_query:
            self.query_projection = nn.Sequential(
                nn.Linear(item_text.shape[1], hidden), nn.GELU(), nn.Linear(hidden, hidden)
            )
            self.query_norm = nn.LayerNorm(hidden)
        if config.item_bias:
            self.item_bias = nn.Parameter(torch.zeros(n_items + 1))
        nn.init.normal_(self.item_embedding.weight, std=0.02)

    @property
    def text_dim(self) -> int | None:
        return self.item_text.shape[1] if hasattr(self, "item_text") else None

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, hidden) item representations; row 0 is padding."""
        vectors = self.item_embedding.weight
        if self.config.fuse_item_text:
            vectors = vectors + self.text_projection(self.item_text)
        return vectors

    def sequence_states(self, histories: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, max_len) left-padded item ids -> (batch, max_len, hidden) causal hidden states. `items` are
        precomputed `item_vectors()` (a caller serving many batches with frozen weights computes them once)."""
        length = histories.shape[1]
        items = (self.item_vectors() if items is None else items)[histories] * (histories > 0).unsqueeze(-1)
        x = self.input_dropout(items + self.position_embedding.weight[-length:])
        causal = torch.ones(length, length, dtype=torch.bool, device=histories.device).tril()
        allowed = causal & (histories > 0).unsqueeze(1)  # keys must be real items ...
        allowed = (allowed | torch.eye(length, dtype=torch.bool, device=histories.device)).unsqueeze(1)  # ... or self
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    def fuse(self, states: torch.Tensor, query_text: torch.Tensor | None) -> torch.Tensor:
        """Add the projected query text embedding to sequence states (any leading shape), then LayerNorm. An
        all-zero query vector is the empty query: it adds nothing, so the model is plain sequential
        recommendation."""
        if not self.config.fuse_query:
            return states
        if query_text is None:
            return self.query_norm(states)
        present = (query_text.abs().sum(-1, keepdim=True) > 0).to(states.dtype)
        return self.query_norm(states + present * self.query_projection(query_text))

    def logits(self, users: torch.Tensor, items: torch.Tensor | None = None, ids: torch.Tensor | None = None):
        """Cosine similarity / temperature (+ item bias) against every item, the padding column -inf; or against
        the items `ids` (m,) only, the same m columns for every row (sampled-softmax training)."""
        items = self.item_vectors() if items is None else items
        if ids is not None:
            items = items[ids]
        scores = F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / self.config.temperature
        if self.config.item_bias:
            scores = scores + (self.item_bias if ids is None else self.item_bias[ids])
        if ids is None:
            scores[..., 0] = float("-inf")
        return scores

    def target_logits(self, users: torch.Tensor, targets: torch.Tensor, items: torch.Tensor | None = None):
        """(N,) each row's score of its own target: the diagonal of `logits(users, items, targets)`."""
        items = (self.item_vectors() if items is None else items)[targets]
        scores = (F.normalize(users, dim=-1) * F.normalize(items, dim=-1)).sum(-1) / self.config.temperature
        return scores + self.item_bias[targets] if self.config.item_bias else scores

    def forward(
        self, histories: torch.Tensor, query_text: torch.Tensor | None = None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores (batch, n_items + 1) for the next item after each history, given an optional query embedding
        (batch, text_dim) and optionally precomputed `item_vectors()`."""
        items = self.item_vectors() if items is None else items
        users = self.sequence_states(histories, items)[:, -1]
        return self.logits(self.fuse(users, query_text), items)
