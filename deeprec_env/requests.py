"""User requests (`env.requests`): a short request in the user's words added to the prompt, so that the agent holds
information the TRM sees only if the agent passes it on.

A request is synthesized from the episode's target: one or two of its aspects (`trm.queries.item_aspects`: era,
categories, title-derived words, never the title) phrased as a user would (`trm.queries.phrase_query`). A share
`uninformative` of episodes get a request that says nothing about any item ("Surprise me."), and a share
`misleading` one that states the aspects of another item, chosen to share no aspect with the target where the
catalogue allows. The request is a pure function of the episode (dataset, split, user, cut point, target), so
every baseline that needs it (`trm-request`) rebuilds exactly what the env showed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeprec_env.data.dataset import SPLITS, RecDataset
from deeprec_env.trm.queries import catalogue_lexicon, item_aspects, phrase_query, title_leaks

REQUEST_KINDS = ("informative", "uninformative", "misleading")
UNINFORMATIVE_REQUESTS = (
    "Surprise me.",
    "Anything good?",
    "What should I try next?",
    "Something I will like, please.",
    "I have some free time tonight.",
)
_OTHER_ITEM_TRIES = 20


@dataclass(frozen=True)
class UserRequest:
    """The request text, its kind (`REQUEST_KINDS`) and the item whose aspects it states (0: none)."""

    text: str
    kind: str
    about: int


def user_request(
    dataset: RecDataset, split: str, user: int, cut: int, target: int, uninformative: float, misleading: float
) -> UserRequest:
    """The request of one episode, deterministic for (split, user, cut)."""
    rng = np.random.default_rng([SPLITS.index(split), int(user), int(cut), 0x5EED])
    draw = rng.random()
    if draw < uninformative:
        return UserRequest(str(UNINFORMATIVE_REQUESTS[rng.integers(len(UNINFORMATIVE_REQUESTS))]), "uninformative", 0)
    about, kind = int(target), "informative"
    if draw < uninformative + misleading:
        about, kind = _unrelated_item(dataset, int(target), rng), "misleading"
    aspects = item_aspects(dataset, about)
    two = [aspects[i] for i in sorted(rng.permutation(len(aspects))[:2])]
    lexicon = catalogue_lexicon(dataset.catalogue)
    title = dataset.items[about].title
    for _ in range(8):
        text = phrase_query(two, rng, lexicon.nouns, lexicon)
        if not title_leaks(text, title):
            return UserRequest(text, kind, about)
    return UserRequest(phrase_query([], rng, lexicon.nouns, lexicon), kind, about)


def _unrelated_item(dataset: RecDataset, target: int, rng: np.random.Generator) -> int:
    """Another item, sharing no aspect with the target if one of a few random draws does not."""
    own = {a.casefold() for a in item_aspects(dataset, target)}
    item = target
    for _ in range(_OTHER_ITEM_TRIES):
        item = int(rng.integers(1, dataset.n_items + 1))
        if item != target and not own & {a.casefold() for a in item_aspects(dataset, item)}:
            return item
    return item if item != target else target % dataset.n_items + 1
