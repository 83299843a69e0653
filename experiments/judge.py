"""`python -m experiments.judge dataset=ml-100k [judge=llm judge_eval.pairs=40]`: how well a judge of answer-line
reasons separates faithful personalised reasons from three kinds of bad ones, on a labelled set built from the
catalogue.

The labelled set: seeded users, each with `judge_eval.lines` items it could be recommended (its validation target and
catalogue items outside its history), each item with four reasons written from templates (`KINDS`):
- faithful: the item's true decade and categories, tied to a title of the user's history that shares a category (or
  the decade) with it; label 1;
- unfaithful: the same templates with the aspects of another item that shares no category and no decade with it;
- generic: praise that names nothing;
- other_user: faithful about the item, but tied to a title of another user's history that this user never saw.
One case (`rewards.judge.JudgeCase`) per user and kind holds the user's items with that kind's reasons, as one answer.
Users are split in two seeded halves: `dev` (what the judge's constants and `overall` were chosen on) and `report`.
Template family `plain` is used in both; `paraphrase` (synonyms, decades in words, other sentence shapes, other praise)
only in the report half: the rule judge was not written against it. Figures: AUC of `overall` and of each aspect,
faithful vs each other kind, per half and per family; the candidate combinations for `overall`; the judge's mean ms
per item on these 10-item answers. Judging with `judge=llm` (SmolLM2-135M-Instruct when `judge.model` is unset)
scores `judge_eval.pairs` (user, item) pairs of the report half and adds agreement with the rule judge (Spearman).
Writes `judge-<name>.json` and `.md` in the run directory.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import hydra
import numpy as np
from omegaconf import DictConfig
from scipy.stats import rankdata, spearmanr

from deeprec_env.config import typed
from deeprec_env.data.dataset import RecDataset
from deeprec_env.stack import build_stack
from deeprec_env.trm.queries import catalogue_lexicon
from experiments.common import CONFIG_PATH, entry_point, log, markdown_table, provenance, publish
from rewards.judge import JUDGE_ASPECTS, JudgeCase, JudgeConfig, RuleJudge, build_judge, overall

KINDS = ("faithful", "unfaithful", "generic", "other_user")
FAMILIES = ("plain", "paraphrase")
HALVES = ("dev", "report")
PLAIN = (
    "a {decade} {genres} {noun}, like {title} that you watched",
    "Since you enjoyed {title}, this {genres} {noun} from the {decade} fits your taste.",
    "{Genres} from the {decade}, close to the {shared} {nouns} in your history such as {title}.",
    "You watched {title}; here is another {shared} pick: a {decade} {genres} {noun}.",
)
PARAPHRASE = (
    "If {title} worked for you, this {adjectives} picture from {decade_words} should too.",
    "Fans of {title} tend to like this one: {adjectives}, made in {decade_words}.",
    "Much like {title}, it is {adjectives} and dates from {decade_words}.",
)
GENERIC = {
    "plain": (
        "A great pick you will love.",
        "Highly recommended, you won't regret it.",
        "One of the best choices for you.",
        "Trust me, you will enjoy this one.",
        "A must-see that everyone raves about.",
        "Perfect for you, a real favourite.",
    ),
    "paraphrase": (
        "Honestly one of the finest things out there.",
        "Everyone who tries it ends up delighted.",
        "An absolute gem that never disappoints.",
        "You simply cannot go wrong with this choice.",
    ),
}
ADJECTIVES = {  # paraphrases of MovieLens genres; other categories are named as they are
    "action": ("action-packed", "explosive"),
    "adventure": ("adventurous", "swashbuckling"),
    "animation": ("animated", "hand-drawn"),
    "children's": ("family-friendly", "kid-friendly"),
    "comedy": ("hilarious", "laugh-out-loud"),
    "crime": ("gangster", "criminal"),
    "documentary": ("factual", "non-fiction"),
    "drama": ("dramatic", "heartfelt"),
    "fantasy": ("magical", "enchanted"),
    "film-noir": ("noir", "hard-boiled"),
    "horror": ("spine-chilling", "terrifying"),
    "musical": ("song-filled", "singing"),
    "mystery": ("whodunit", "puzzling"),
    "romance": ("romantic", "love-story"),
    "sci-fi": ("futuristic", "science-fiction"),
    "thriller": ("suspenseful", "nail-biting"),
    "war": ("wartime", "battlefield"),
    "western": ("cowboy", "frontier"),
}
DECADE_WORDS = {1920: "twenties", 1930: "thirties", 1940: "forties", 1950: "fifties", 1960: "sixties"}
DECADE_WORDS |= {1970: "seventies", 1980: "eighties", 1990: "nineties"}
_TRAILING_ARTICLE = re.compile(r"^(.*), (The|A|An)$")
_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\s*$")


@dataclass(frozen=True)
class LabelledCase:
    """One answer of the labelled set: its case, kind, template family, half and user."""

    case: JudgeCase
    kind: str
    family: str
    half: str
    user: int


def spoken_title(dataset: RecDataset, item: int) -> str:
    """How a person writes a catalogue title: 'Godfather, The' -> 'The Godfather', alternative titles dropped."""
    title = _TRAILING_PAREN.sub("", dataset.items[item].title) or dataset.items[item].title
    match = _TRAILING_ARTICLE.match(title)
    return f"{match.group(2)} {match.group(1)}" if match else title


def _facets(dataset: RecDataset, item: int) -> tuple[str | None, list[str]]:
    """(decade like "1990s" or None, categories in lower case) of an item."""
    meta = dataset.items[item]
    decade = f"{meta.year // 10 * 10}s" if meta.year is not None else None
    return decade, [c.casefold() for c in meta.categories if c.casefold() not in ("unknown", "(no genres listed)")]


def _tie(
    dataset: RecDataset, item: int, candidates: list[int], rng: np.random.Generator, among: int = 5
) -> tuple[int, str | None]:
    """One of the `among` newest titles of `candidates` (newest first) sharing a category with the item, else the
    decade, else the newest; with the shared aspect."""
    decade, genres = _facets(dataset, item)
    sharing = [(o, g) for o in candidates for g in _facets(dataset, o)[1][:1] if g in genres]
    sharing = sharing or [(o, decade) for o in candidates if decade is not None and _facets(dataset, o)[0] == decade]
    sharing = sharing[:among] or [(candidates[0], None)]
    return sharing[rng.integers(len(sharing))]


def _reason(dataset: RecDataset, family: str, rng: np.random.Generator, about: int, title: int, shared) -> str:
    """One templated reason stating `about`'s decade and categories, tied to the title `title`."""
    decade, genres = _facets(dataset, about)
    genres = genres[:2] or ["popular"]
    decade = decade or "recent"
    name = spoken_title(dataset, title)
    if family == "plain":
        nouns = catalogue_lexicon(dataset.catalogue).nouns[-1]
        template = PLAIN[rng.integers(len(PLAIN))]
        text = template.format(
            decade=decade,
            genres=" ".join(genres),
            Genres=" ".join(genres).capitalize(),
            noun=nouns.removesuffix("s"),
            nouns=nouns,
            title=name,
            shared=shared or genres[0],
        )
        return text[0].upper() + text[1:]
    adjectives = [ADJECTIVES.get(g, (g, g))[rng.integers(2)] for g in genres]
    year = int(decade[:4]) if decade[:4].isdigit() else None
    spoken = DECADE_WORDS.get(year) if year is not None else None
    decade_words = f"the {spoken}" if spoken and rng.random() < 0.5 else f"the mid-{decade[2:]}"
    template = PARAPHRASE[rng.integers(len(PARAPHRASE))]
    return template.format(title=name, adjectives=" and ".join(adjectives), decade_words=decade_words)


def _stranger_item(dataset: RecDataset, item: int, rng: np.random.Generator) -> int:
    """An item sharing no category and no decade with `item` (the closest try after 50 draws)."""
    decade, genres = _facets(dataset, item)
    best, best_overlap = 1, 10**6
    for other in rng.integers(1, dataset.n_items + 1, 50):
        other_decade, other_genres = _facets(dataset, int(other))
        overlap = len(set(genres) & set(other_genres)) + (other_decade == decade)
        if int(other) != item and overlap < best_overlap:
            best, best_overlap = int(other), overlap
            if overlap == 0:
                break
    return best


def labelled_cases(dataset: RecDataset, n_users: int, items: int, seed: int) -> list[LabelledCase]:
    """The labelled set (module docstring): per user, one case per kind over the same items."""
    rng = np.random.default_rng(seed)
    users = dataset.eval_users("valid")
    users = rng.permutation(users)[:n_users]
    out: list[LabelledCase] = []
    for rank, user in enumerate(users):
        half = HALVES[rank % 2]
        family = "plain" if half == "dev" or rank % 4 == 1 else "paraphrase"
        user_rng = np.random.default_rng([seed, int(user)])
        history, target = dataset.history_and_target(int(user), "valid")
        seen = set(history.tolist())
        recent = [int(i) for i in history[::-1]]
        pool = [i for i in user_rng.permutation(np.arange(1, dataset.n_items + 1)) if i not in seen and i != target]
        chosen = [target, *(int(i) for i in pool[: items - 1])]
        others = [int(u) for u in dataset.eval_users("valid") if u != user]
        reasons: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for item in chosen:
            title, shared = _tie(dataset, item, recent, user_rng)
            reasons["faithful"].append(_reason(dataset, family, user_rng, item, title, shared))
            stranger = _stranger_item(dataset, item, user_rng)
            reasons["unfaithful"].append(_reason(dataset, family, user_rng, stranger, title, None))
            reasons["generic"].append(GENERIC[family][user_rng.integers(len(GENERIC[family]))])
            other_user = others[user_rng.integers(len(others))]
            foreign = [int(i) for i in dataset.history_and_target(other_user, "valid")[0][::-1] if int(i) not in seen]
            title, shared = _tie(dataset, item, foreign or recent, user_rng)
            reasons["other_user"].append(_reason(dataset, family, user_rng, item, title, shared))
        for kind in KINDS:
            case = JudgeCase(tuple(chosen), tuple(reasons[kind]), tuple(int(i) for i in history))
            out.append(LabelledCase(case, kind, family, half, int(user)))
    return out


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney statistic)."""
    if not len(positive) or not len(negative):
        return float("nan")
    ranks = rankdata(np.concatenate([positive, negative]))
    return float(
        (ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative))
    )


COMBINATIONS = {
    "geometric_mean": overall,
    "product": lambda s: s.prod(axis=1),
    "mean": lambda s: s.mean(axis=1),
    "minimum": lambda s: s.min(axis=1),
}


def separation(rows: list[tuple[LabelledCase, np.ndarray]], combine=overall) -> dict:
    """AUC faithful vs each other kind, of `combine` and of each aspect, over the given judged cases."""
    by_kind = {kind: [s for c, s in rows if c.kind == kind] for kind in KINDS}
    scores = {kind: np.concatenate(v) if v else np.zeros((0, 3)) for kind, v in by_kind.items()}
    out = {}
    for kind in KINDS[1:]:
        entry = {"overall": auc(combine(scores["faithful"]), combine(scores[kind]))}
        for a, aspect in enumerate(JUDGE_ASPECTS):
            entry[aspect] = auc(scores["faithful"][:, a], scores[kind][:, a])
        out[f"faithful_vs_{kind}"] = entry
    return out


def judged(judge, cases: list[LabelledCase]) -> tuple[list[tuple[LabelledCase, np.ndarray]], list[float]]:
    """Each case's scores, and the judge's ms per item of each call."""
    rows, ms = [], []
    for labelled in cases:
        started = time.perf_counter()
        scores = judge(labelled.case)
        ms.append(1000 * (time.perf_counter() - started) / len(labelled.case.items))
        rows.append((labelled, scores))
    return rows, ms


def _table(results: dict, title: str) -> list[str]:
    rows = [{"comparison": comparison, **values} for comparison, values in results.items()]
    return [f"### {title}", "", markdown_table(rows, ["comparison", "overall", *JUDGE_ASPECTS]), ""]


def evaluate_rule(judge: RuleJudge, cases: list[LabelledCase]) -> tuple[dict, list[str]]:
    """Every figure of the rule judge on the whole labelled set."""
    warm_up = [c for c in cases if c.half == "dev"][:8]
    started = time.perf_counter()
    judge(warm_up[0].case)
    cold_ms = 1000 * (time.perf_counter() - started) / len(warm_up[0].case.items)
    judged(judge, warm_up)
    rows, ms = judged(judge, cases)
    results: dict = {"ms_per_item": {"mean": float(np.mean(ms)), "p95": float(np.percentile(ms, 95))}}
    results["ms_per_item"]["first_case_unseen_words"] = cold_ms
    report = [
        f"Rule judge: {np.mean(ms):.2f} ms per item (mean over {len(ms)} answers of "
        f"{len(cases[0].case.items)} lines, p95 {np.percentile(ms, 95):.2f} ms; first answer with every word unseen "
        f"{cold_ms:.2f} ms per item).",
        "",
    ]
    for half in HALVES:
        for family in FAMILIES:
            subset = [r for r in rows if r[0].half == half and r[0].family == family]
            if subset:
                key = f"{half}/{family}"
                results[key] = separation(subset)
                report += _table(results[key], f"AUC, {key} ({len(subset) // len(KINDS)} users)")
        subset = [r for r in rows if r[0].half == half]
        results[half] = separation(subset)
        report += _table(results[half], f"AUC, {half} half, all families")
        combos = []
        for name, combine in COMBINATIONS.items():
            figures = separation(subset, combine)
            values = {k: v["overall"] for k, v in figures.items()}
            combos.append({"combination": name, **values, "worst": min(values.values())})
        results[f"{half}_combinations"] = combos
        columns = ["combination", *(f"faithful_vs_{k}" for k in KINDS[1:]), "worst"]
        report += [f"### Candidate `overall` combinations, {half} half", "", markdown_table(combos, columns), ""]
    return results, report


def evaluate_llm(judge, rule: RuleJudge, cases: list[LabelledCase], pairs: int, seed: int) -> tuple[dict, list[str]]:
    """The LLM judge on `pairs` (user, item) pairs of the report half (every kind's line of each), against the
    labels and against the rule judge on the same lines."""
    report_cases = [c for c in cases if c.half == "report"]
    keys = sorted({(c.user, item) for c in report_cases for item in c.case.items})
    picked = {keys[i] for i in np.random.default_rng(seed).choice(len(keys), min(pairs, len(keys)), replace=False)}
    small = []
    for labelled in report_cases:
        keep = [j for j, item in enumerate(labelled.case.items) if (labelled.user, item) in picked]
        if keep:
            case = JudgeCase(
                tuple(labelled.case.items[j] for j in keep),
                tuple(labelled.case.reasons[j] for j in keep),
                labelled.case.history,
            )
            small.append(LabelledCase(case, labelled.kind, labelled.family, labelled.half, labelled.user))
    llm_rows, ms = judged(judge, small)
    rule_rows, _ = judged(rule, small)
    llm_scores = np.concatenate([s for _, s in llm_rows])
    rule_scores = np.concatenate([s for _, s in rule_rows])
    agreement = {
        aspect: float(spearmanr(llm_scores[:, a], rule_scores[:, a]).statistic)
        for a, aspect in enumerate(JUDGE_ASPECTS)
    }
    agreement["overall"] = float(spearmanr(overall(llm_scores), overall(rule_scores)).statistic)
    labels = np.concatenate([[c.kind == "faithful"] * len(c.case.items) for c, _ in llm_rows])
    agreement["overall_vs_label"] = float(spearmanr(overall(llm_scores), labels).statistic)
    results = {
        "pairs": len(picked),
        "lines": len(llm_scores),
        "ms_per_item": float(np.mean(ms)),
        "llm": separation(llm_rows),
        "rule_same_lines": separation(rule_rows),
        "spearman_llm_vs_rule": agreement,
    }
    report = [
        f"LLM judge on {len(picked)} (user, item) pairs of the report half ({len(llm_scores)} lines, every kind): "
        f"{np.mean(ms):.0f} ms per line.",
        "",
        *_table(results["llm"], "AUC of the LLM judge"),
        *_table(results["rule_same_lines"], "AUC of the rule judge on the same lines"),
        "### Spearman correlation, LLM judge vs rule judge (same lines)",
        "",
        markdown_table([agreement], list(agreement)),
        "",
    ]
    return results, report


def run(cfg: DictConfig) -> None:
    config = typed(JudgeConfig, cfg.judge)
    stack = build_stack(cfg, with_reward=False)
    dataset = stack.dataset
    if config.name == "llm" and not config.model:
        from agents.llm import PolicyConfig, policy_dir

        config.model = str(policy_dir(PolicyConfig(name="smollm2-135m"), dataset, stack.root))
    settings = cfg.judge_eval
    cases = labelled_cases(dataset, settings.users, settings.lines, cfg.seed)
    log.info("labelled set: %d answers of %d lines", len(cases), settings.lines)
    rule = RuleJudge(dataset, stack.encoder)
    results = {"dataset": dataset.name, "judge": config.name, "provenance": provenance()}
    results |= {"users": settings.users, "items_per_answer": settings.lines, "seed": cfg.seed}
    if config.name == "rule":
        figures, report = evaluate_rule(rule, cases)
    else:
        figures, report = evaluate_llm(
            build_judge(config, dataset, stack.encoder), rule, cases, settings.pairs, cfg.seed
        )
        results["model"] = config.model
    results["figures"] = figures
    publish(f"judge-{config.name}", results, [f"## Judge of answer-line reasons on {dataset.name}", "", *report])


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
