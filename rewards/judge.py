"""Judges of the one-sentence reasons an answer line may carry (`3. Toy Story (1995) -- a 1990s animation comedy, like
Aladdin that you watched`): three scores in [0, 1] per line.

- faithfulness: what the reason says about the item is true of its metadata. The aspects a reason claims (decades,
  years, categories, era words, title-derived aspects: `deeprec_env.trm.queries.item_aspects`) are checked against the
  item's own; naming another item's aspects is unfaithful. A reason that claims nothing is neither: 0.5.
- personalisation: the reason ties to this user: it names a title of the user's history, an aspect the history shares,
  or a word of the profile or request; times the share of the other catalogue titles it names that are the user's
  (naming a title the user never saw, "like Heat that you watched" when they did not, ties the item to someone else).
- specificity: the reason names something (an aspect or a title) rather than praise, and is not a near-copy of another
  line's reason in the same answer (one sentence reused for every item).

`RuleJudge` is the default: rules over the catalogue's titles and aspects, with word vectors of the project's sentence
encoder to recognise a category by a synonym ("animated" for animation, "spine-chilling" for horror). It embeds
words, not whole reasons: a whole-sentence encoding of every reason costs more than the judge's budget per line on
a CPU thread (docs/notes/judge.md), while the words of reasons recur and are encoded once. `LLMJudge` asks a local
causal LM, per line and aspect, a yes/no question and scores P(yes) / (P(yes) + P(no)) at the answer position.
`build_judge` makes either from a `JudgeConfig` (the Hydra group `judge`: configs/judge/rule.yaml, llm.yaml).
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deeprec_env.data.dataset import RecDataset
from deeprec_env.protocol import normalize_title, title_variants
from deeprec_env.trm.queries import TEMPLATE_WORDS, aspect_table, catalogue_lexicon

JUDGE_ASPECTS = ("faithfulness", "personalisation", "specificity")
JUDGES = ("rule", "llm")
_DECADE = re.compile(r"^(?:(1[89]|20)(\d)0s|(\d)0s)$")
_YEAR = re.compile(r"^(1[89]\d\d|20\d\d)$")
_ARTICLES = frozenset({"the", "a", "an"})
_DECADE_WORDS = {
    "twenties": 1920,
    "thirties": 1930,
    "forties": 1940,
    "fifties": 1950,
    "sixties": 1960,
    "seventies": 1970,
    "eighties": 1980,
    "nineties": 1990,
}


@dataclass(frozen=True)
class JudgeCase:
    """One answer's reasons to judge, for one user."""

    items: tuple[int, ...]  # item ids of the answer lines with a reason (valid ids >= 1)
    reasons: tuple[str, ...]  # one reason per item, same order
    history: tuple[int, ...]  # the user's history item ids, oldest first (what the agent saw or more)
    profile: str = ""  # the user's profile card text ("" when none)
    request: str = ""  # the user's request text ("" when none)

    def __post_init__(self) -> None:
        if len(self.items) != len(self.reasons):
            raise ValueError(f"JudgeCase has {len(self.items)} items but {len(self.reasons)} reasons; give one each")


class Judge(Protocol):
    def __call__(self, case: JudgeCase) -> np.ndarray: ...  # (len(items), 3) in [0, 1], in `JUDGE_ASPECTS` order


def overall(scores: np.ndarray) -> np.ndarray:
    """Per line, the geometric mean of the three aspect scores: a line must be good on every aspect (a zero anywhere
    is zero overall), yet one middling aspect does not sink it as far as the product would (docs/judge.md: chosen
    among product, mean, geometric mean and minimum on the labelled set's development half)."""
    scores = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1, len(JUDGE_ASPECTS)), 0.0, 1.0)
    return np.cbrt(scores.prod(axis=1))


@dataclass
class JudgeConfig:
    """Which judge scores reasons (`build_judge`). `llm` needs `model` (a local Hugging Face causal-LM directory;
    `python -m experiments.judge` defaults to SmolLM2-135M-Instruct) and the prompt of configs/judge/llm.yaml:
    `prompt` with the fields {item}, {history}, {profile}, {request}, {reason}, {question}, and one question per
    aspect."""

    name: str = "rule"  # rule | llm
    model: str | None = None
    prompt: str = ""
    questions: dict[str, str] = field(default_factory=dict)
    history_titles: int = 10  # llm: the user's most recent history titles shown
    batch_size: int = 16  # llm: prompts per forward pass

    def validate(self) -> None:
        if self.name not in JUDGES:
            raise ValueError(f"unknown judge {self.name!r}; use judge=rule or judge=llm")
        if self.name == "llm":
            if not self.prompt or set(self.questions) != set(JUDGE_ASPECTS):
                raise ValueError(
                    f"judge=llm needs judge.prompt and judge.questions for {JUDGE_ASPECTS}; use configs/judge/llm.yaml"
                )
            if not self.model:
                raise ValueError("judge=llm needs judge.model=DIR (a local Hugging Face causal-LM directory)")


def build_judge(config: JudgeConfig, dataset: RecDataset, encoder: Any) -> Judge:
    """The judge a validated config names, on the dataset's catalogue (`encoder`: the rule judge's word vectors)."""
    config.validate()
    if config.name == "rule":
        return RuleJudge(dataset, encoder)
    return LLMJudge(config.model, dataset, config.prompt, config.questions, config.history_titles, config.batch_size)


def _valid(text: str) -> str:
    """The text with unencodable code points (unpaired surrogates) replaced, so no reason can break a tokenizer."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _words(text: str) -> list[str]:
    """Normalised words (`normalize_title`: punctuation, unpaired surrogates included, becomes a separator)."""
    return normalize_title(text).split()


@dataclass(frozen=True)
class Reading:
    """What a text states: the aspects it claims and the catalogue titles it names (item ids, per named title)."""

    claims: frozenset[str]
    titles: tuple[frozenset[int], ...]
    words: frozenset[str]


class RuleJudge:
    """Rules over titles and aspects, with word vectors of the sentence encoder for synonyms of categories.

    A text is read left to right over its normalised words: the longest catalogue title at each position is taken as
    a named title (titles of one word besides articles only where they are the judged item or a history item, so
    "heat" in "summer heat" is no title; a year right after a title is the title's); among the rest, a decade
    ("1990s", "90s", "nineties"), a year (its decade) or an aspect phrase of the catalogue ("sci fi") is a claim, and
    so is a word whose encoder vector is within cosine `word_similarity` of one category's and `word_margin` closer to
    it than to any other category (a synonym). Unseen words of a case are encoded in one batch and kept (`vocabulary`
    words, oldest dropped first).

    Scores per line: faithfulness (true claims + 0.5) / (claims + 1); personalisation the strongest tie (a history
    title 1, an aspect the history shares `shared_share` of its items or more 0.7, pro rata below, a claim or word of
    the profile or request 0.8) times the share of named titles that are the user's; specificity min(1, (claims +
    titles) / 2) times the originality within the answer (`_originality`).
    """

    def __init__(
        self,
        dataset: RecDataset,
        encoder: Any,
        word_similarity: float = 0.55,
        word_margin: float = 0.08,
        duplicate_from: float = 0.6,
        shared_share: float = 0.25,
        vocabulary: int = 200_000,
    ) -> None:
        self.dataset, self.encoder = dataset, encoder
        self.word_similarity, self.word_margin = float(word_similarity), float(word_margin)
        self.duplicate_from, self.shared_share = float(duplicate_from), float(shared_share)
        self.vocabulary = int(vocabulary)
        self.aspects = [frozenset(row) for row in aspect_table(dataset)]
        self._phrases: dict[str, str] = {}  # normalised phrase -> aspect
        for row in self.aspects:
            for aspect in row:
                self._phrases.setdefault(normalize_title(aspect), aspect)
        self._titles: dict[str, set[int]] = {}  # normalised title -> item ids
        for item in range(1, dataset.n_items + 1):
            for key in title_variants(dataset.items[item].title) or {normalize_title(dataset.items[item].title)}:
                self._titles.setdefault(key, set()).add(item)
        self._longest = max((len(k.split()) for k in [*self._titles, *self._phrases]), default=1)
        self.categories = sorted({c.casefold() for c in dataset.category_vocabulary()} & set(self._phrases.values()))
        self._category_vectors = self._encode(self.categories)
        self._word_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        nouns = catalogue_lexicon(dataset.catalogue).nouns
        self._plain_words = TEMPLATE_WORDS | set(_words(" ".join([*nouns, *self.categories])))  # say nothing of a user

    def with_encoder(self, encoder: Any) -> RuleJudge:
        """This judge reading new words with `encoder` (a rollout worker's served encoder), its tables shared."""
        judge = copy.copy(self)
        judge.encoder = encoder
        judge._word_vectors = OrderedDict(self._word_vectors)
        return judge

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        vectors = np.asarray(self.encoder.encode(list(texts), use_cache=False), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def _learn_words(self, words: set[str]) -> None:
        new = sorted(w for w in words if w not in self._word_vectors)
        if new and self.categories:
            self._word_vectors.update(zip(new, self._encode(new), strict=True))
            while len(self._word_vectors) > self.vocabulary:
                self._word_vectors.popitem(last=False)

    def _synonym(self, word: str) -> str | None:
        vector = self._word_vectors.get(word)
        if vector is None:
            return None
        similarity = self._category_vectors @ vector
        order = np.argsort(-similarity)
        best = float(similarity[order[0]])
        runner_up = float(similarity[order[1]]) if len(order) > 1 else -1.0
        if best >= self.word_similarity and best - runner_up >= self.word_margin:
            return self.categories[int(order[0])]
        return None

    @staticmethod
    def _decade(word: str) -> str | None:
        match = _DECADE.match(word)
        if match:
            century = match.group(1)
            if century:
                return f"{century}{match.group(2)}0s"
            digit = int(match.group(3))
            return f"{19 if digit >= 2 else 20}{digit}0s"
        if _YEAR.match(word):
            return f"{word[:3]}0s"
        year = _DECADE_WORDS.get(word)
        return f"{year}s" if year else None

    def read(self, text: str, known: frozenset[int] = frozenset()) -> Reading:
        """The claims and named titles of `text`; `known` items (the judged one, the history) may be one word long."""
        words = _words(text)
        claims: set[str] = set()
        titles: list[frozenset[int]] = []
        loose: set[str] = set()
        at = 0
        while at < len(words):
            for n in range(min(self._longest, len(words) - at), 0, -1):
                key = " ".join(words[at : at + n])
                ids = self._titles.get(key)
                if ids and (len(set(words[at : at + n]) - _ARTICLES) > 1 or ids & known) and key not in self._phrases:
                    titles.append(frozenset(ids))
                    if at + n < len(words) and _YEAR.match(words[at + n]):
                        n += 1  # "Aladdin (1992)": the year belongs to the title, not a claim
                    break
                aspect = self._phrases.get(key)
                if aspect is not None:
                    claims.add(aspect)
                    break
                if n == 1:
                    decade = self._decade(key)
                    if decade is not None:
                        claims.add(decade)
                    elif len(key) > 2 and not key.isdigit():
                        loose.add(key)
            at += n
        for word in loose:
            synonym = self._synonym(word)
            if synonym is not None:
                claims.add(synonym)
        return Reading(frozenset(claims), tuple(titles), frozenset(words))

    def __call__(self, case: JudgeCase) -> np.ndarray:
        history = frozenset(case.history)
        self._learn_words({w for r in (*case.reasons, case.profile, case.request) for w in _words(r) if len(w) > 2})
        shares: dict[str, float] = {}
        for item in case.history:
            for aspect in self.aspects[item] if 1 <= item <= self.dataset.n_items else ():
                shares[aspect] = shares.get(aspect, 0.0) + 1.0 / len(case.history)
        user = self.read(f"{case.profile} . {case.request}", history)
        user_words = {w for w in user.words if len(w) >= 5} - self._plain_words
        readings = [self.read(reason, history | {item}) for item, reason in zip(case.items, case.reasons, strict=True)]
        scores = np.zeros((len(case.items), len(JUDGE_ASPECTS)))
        for row, (item, reading) in enumerate(zip(case.items, readings, strict=True)):
            own = self.aspects[item] if 1 <= item <= self.dataset.n_items else frozenset()
            true = len(reading.claims & own)
            scores[row, 0] = (true + 0.5) / (len(reading.claims) + 1.0)
            others = [ids for ids in reading.titles if item not in ids]
            theirs = sum(1 for ids in others if ids & history) / len(others) if others else 1.0
            shared = max((shares.get(a, 0.0) for a in reading.claims), default=0.0)
            evidence = max(
                theirs if others else 0.0,
                0.7 * min(1.0, shared / self.shared_share),
                0.8 if reading.claims & user.claims or reading.words & user_words else 0.0,
            )
            scores[row, 1] = evidence * theirs
            named = len(reading.claims) + len(reading.titles)
            scores[row, 2] = min(1.0, named / 2.0) * self._originality(row, readings, case.items)
        return np.clip(scores, 0.0, 1.0)

    def _title_words(self, item: int) -> set[str]:
        return set(_words(self.dataset.items[item].title)) if 1 <= item <= self.dataset.n_items else set()

    def _originality(self, row: int, readings: Sequence[Reading], items: Sequence[int]) -> float:
        """1 minus how far the reason's words (the item's own title words removed) overlap another line's beyond
        `duplicate_from` (Jaccard): a sentence reused for every item scores 0."""
        mine = readings[row].words - self._title_words(items[row])
        overlap = 0.0
        for other, reading in enumerate(readings):
            if other != row:
                theirs = reading.words - self._title_words(items[other])
                union = mine | theirs
                overlap = max(overlap, len(mine & theirs) / len(union) if union else 1.0)
        return 1.0 - min(1.0, max(0.0, overlap - self.duplicate_from) / (1.0 - self.duplicate_from))


class LLMJudge:
    """A local causal LM as judge: for each line and aspect, the prompt (`prompt` filled with the item's card, the
    user's last `history_titles` history titles, profile, request, the reason and the aspect's question) goes through
    the tokenizer's chat template when it has one, and the score is P(yes) / (P(yes) + P(no)) of the next token
    (the spellings "yes"/"Yes"/" yes"/" Yes" and their "no" counterparts summed)."""

    def __init__(
        self,
        model_path: str | Path,
        dataset: RecDataset,
        prompt: str,
        questions: Mapping[str, str],
        history_titles: int,
        batch_size: int,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model in {path}: set judge.model=DIR to a Hugging Face causal-LM directory")
        missing = set(JUDGE_ASPECTS) - set(questions)
        if missing:
            raise ValueError(f"LLMJudge needs a question per aspect, missing {sorted(missing)}; see llm.yaml")
        self.dataset, self.prompt, self.questions = dataset, prompt, dict(questions)
        self.history_titles, self.batch_size = int(history_titles), int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self._yes = self._first_tokens(("yes", "Yes", " yes", " Yes"))
        self._no = self._first_tokens(("no", "No", " no", " No"))

    def _first_tokens(self, spellings: Sequence[str]) -> list[int]:
        ids = {self.tokenizer.encode(s, add_special_tokens=False)[0] for s in spellings}
        return sorted(ids)

    def prompts(self, case: JudgeCase) -> list[str]:
        """The filled prompts, line by line and aspect by aspect (`JUDGE_ASPECTS` order)."""
        recent = (
            [self.dataset.item_name(i) for i in case.history[-self.history_titles :]] if self.history_titles else []
        )
        out = []
        for item, reason in zip(case.items, case.reasons, strict=True):
            for aspect in JUDGE_ASPECTS:
                text = self.prompt.format(
                    item=self.dataset.item_card(item),
                    history="; ".join(recent) or "(nothing)",
                    profile=_valid(case.profile) or "(none)",
                    request=_valid(case.request) or "(none)",
                    reason=_valid(reason),
                    question=self.questions[aspect],
                )
                if self.tokenizer.chat_template:
                    text = self.tokenizer.apply_chat_template(
                        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
                    )
                out.append(text)
        return out

    def __call__(self, case: JudgeCase) -> np.ndarray:
        import torch

        prompts = self.prompts(case)
        yes_share = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                batch = self.tokenizer(
                    prompts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                )
                logits = self.model(**batch).logits[:, -1].float()
                yes = torch.logsumexp(logits[:, self._yes], dim=1)
                no = torch.logsumexp(logits[:, self._no], dim=1)
                yes_share.append(torch.sigmoid(yes - no))
        if not yes_share:
            return np.zeros((0, len(JUDGE_ASPECTS)))
        return torch.cat(yes_share).numpy().astype(np.float64).reshape(len(case.items), len(JUDGE_ASPECTS))
