"""Item cards, the compact `Title (year) | category, category` text prompts and tool results show per item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deeprec_env.data.dataset import RecDataset


def item_cards(dataset: RecDataset, item_ids: Sequence[int], card_chars: int | None) -> list[str]:
    """Cards (cut to card_chars) for prompts and tool results; padding and out-of-range ids are skipped."""
    return [dataset.item_card(int(i), card_chars) for i in item_ids if 0 < int(i) <= dataset.n_items]
