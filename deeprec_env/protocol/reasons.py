"""Answer lines with reasons (after RecGPT's personalised explanations): with `env.explanations` an answer line may
carry one sentence on why the item suits the user after the item, separated by REASON_SEPARATOR:

    3. #7 -- a 1990s comedy, like Clueless that you watched
    4. Toy Story (1995) -- an animation from the decade you watch most

The item part is matched as any answer line; the reason is what a judge scores (`rewards.judge`). The first
separator splits, so a title that itself holds " -- " is best named by its handle.
"""

from __future__ import annotations

REASON_SEPARATOR = " -- "
_SEPARATORS = (REASON_SEPARATOR, " — ")  # an em dash is read as the separator too


def split_reason(line: str) -> tuple[str, str]:
    """(item part, reason) of an answer line; the reason is "" when the line has no separator."""
    cuts = [(line.find(sep), sep) for sep in _SEPARATORS if sep in line]
    if not cuts:
        return line.strip(), ""
    at, sep = min(cuts)
    return line[:at].strip(), line[at + len(sep) :].strip()


def with_reason(item: str, reason: str) -> str:
    """The answer line naming `item` with `reason` ("" leaves the line as the item alone)."""
    return f"{item}{REASON_SEPARATOR}{reason}" if reason else item
