"""`TextSpace`: the observation and action space of the environment, any Python string."""

from __future__ import annotations

import string
import sys
from typing import Any

from gymnasium import spaces
from gymnasium.vector.utils import batch_space

MAX_TEXT_LENGTH = sys.maxsize


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


@batch_space.register(TextSpace)
def _batch_text_space(space: TextSpace, n: int = 1) -> spaces.Tuple:
    """A batch of n texts is a tuple of n strings (what `gymnasium.vector` expects of a space it cannot stack)."""
    return spaces.Tuple([TextSpace(space.max_length, space.sample_length) for _ in range(n)])
