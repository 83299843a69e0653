import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from deeprec_env.episode import Episode, ToolCall
from rewards import (
    CallCounter,
    Component,
    DiversityReward,
    DuplicatePenalty,
    FormatReward,
    GroundingReward,
    HierarchicalReward,
    HistoryPenalty,
    HitRankReward,
    InvalidPenalty,
    InvocationReward,
    NDCGReward,
    PointReward,
    RewardConfig,
    RewardContext,
    build_reward,
    load_reward_config,
    quantize,
)

ALL = (
    "format",
    "invocation",
    "diversity",
    "grounding",
    "hit_rank",
    "point",
    "ndcg",
    "invalid_penalty",
    "duplicate_penalty",
    "history_penalty",
    "interest",
    "explanation",
)
DIM = 4


class FakeEncoder:
    """Deterministic: table entries as given, other strings as a normalised sum of hashed word vectors; "" -> 0."""

    def __init__(self, table: dict[str, list[float]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            key = text.strip()
            if key in self.table:
                vector = np.asarray(self.table[key], dtype=np.float64)
            else:
                vector = np.zeros(DIM)
                for word in key.split():
                    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8", "surrogatepass")).digest()[:8], "little")
                    vector += np.random.default_rng(seed).standard_normal(DIM)
            norm = np.linalg.norm(vector)
            rows.append(vector / norm if norm > 0 else vector)
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), DIM)


# Hand-made item tables, target item 1 (text e1, vector e1). sim = (text_sim + item_sim) / 2:
#   item 2: 0.6 and 1.0 -> 0.8;  item 3: 0.0 and 0.8 -> 0.4;  item 4: -1.0 and 0.0 -> -0.5;  item 5: 0 and 0 -> 0.
ITEM_TEXT = np.array([[0, 0], [1, 0], [0.6, 0.8], [0, 1], [-1, 0], [0, 1]], dtype=np.float32)
ITEM_VECTORS = np.array([[0, 0], [1, 0], [1, 0], [0.8, 0.6], [0, 1], [0, 1]], dtype=np.float32)
TABLE = {
    "action": [1, 0, 0, 0],
    "romance": [0.6, 0.8, 0, 0],
    "drama": [0, 0, 1, 0],
    "sci-fi": [0, 0, 0, 1],
    "science fiction": [0, 0, 0.1, 0.995],
}
# Item aspects (row 0: padding) and the titles that name items, for informative-call counting.
ASPECTS = [(), ("action", "1990s"), ("romance",), ("drama",), ("sci-fi", "action"), ("drama", "1990s")]
TITLES = {"the matrix", "titanic"}


def names_item(text: str) -> bool:
    return text.strip().casefold() in TITLES


CONTEXT = RewardContext(
    encoder=FakeEncoder(TABLE),
    item_text=ITEM_TEXT,
    item_vectors=ITEM_VECTORS,
    item_aspects=ASPECTS,
    names_item=names_item,
)

# Random normalised tables (cosines of both signs) for the property tests.
N_ITEMS = 30
_rng = np.random.default_rng(0)


def _unit_rows(n: int, d: int) -> np.ndarray:
    rows = _rng.standard_normal((n + 1, d))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows[0] = 0.0
    return rows.astype(np.float32)


RANDOM_CONTEXT = RewardContext(
    encoder=FakeEncoder(), item_text=_unit_rows(N_ITEMS, 8), item_vectors=_unit_rows(N_ITEMS, 6)
)


def episode(
    answer=(),
    prefs=("action",),
    target=1,
    history=(),
    rec_k=10,
    problems=(),
    n_invalid=None,
    n_duplicate=0,
) -> Episode:
    """An Episode as the env would fill it; `answer` holds item ids with None for invalid/duplicate lines."""
    answer = tuple(answer)
    return Episode(
        user=0,
        split="test",
        history=np.asarray(history, dtype=np.int64),
        target=target,
        rec_k=rec_k,
        codec="tags",
        tool_calls=[ToolCall(preference=p, item_ids=(2, 3), turn=t) for t, p in enumerate(prefs)],
        answer_lines=tuple(f"line {i}" for i in range(len(answer))),
        answer_ids=answer,
        ranked_ids=tuple(dict.fromkeys(i for i in answer if i is not None)),
        n_invalid=sum(i is None for i in answer) if n_invalid is None else n_invalid,
        n_duplicate=n_duplicate,
        format_problems=tuple(problems),
    )


# --- components on hand-computed cases ------------------------------------------------------------------------------


def test_format():
    assert FormatReward()(episode(), CONTEXT) == 0.0
    assert FormatReward()(episode(problems=("no answer",)), CONTEXT) == -1.0
    assert FormatReward(error=-2.5)(episode(problems=("x",)), CONTEXT) == -2.5


@pytest.mark.parametrize(("calls", "expected"), [(0, 0.0), (1, 0.0), (2, 0.5), (3, 1.0), (5, 1.0)])
def test_invocation(calls, expected):
    assert InvocationReward(rule="all")(episode(prefs=[f"p{i}" for i in range(calls)]), CONTEXT) == expected


def test_invocation_rules_and_parameters():
    assert InvocationReward(rule="non_empty")(episode(prefs=["a", "", "   ", "?!"]), CONTEXT) == 0.0
    assert InvocationReward(rule="all")(episode(prefs=["a", "", "   "]), CONTEXT) == 1.0
    assert InvocationReward(base=0.25, cap=5, rule="non_empty")(episode(prefs=list("abcdefg")), CONTEXT) == 1.0
    with pytest.raises(ValueError, match="cap"):
        InvocationReward(cap=0)
    with pytest.raises(ValueError, match="calls rule"):
        InvocationReward(rule="some")


def strict_counter() -> CallCounter:
    """Informative-call counting whose synonym threshold the 4-d fake embeddings of unrelated words never reach."""
    return CallCounter(aspect_similarity=0.99)


def test_informative_calls_state_a_new_aspect_of_the_history_and_name_no_item():
    invocation = InvocationReward(counter=strict_counter())
    history = (1, 2, 4)  # aspects: action, 1990s, romance, sci-fi

    def calls(*prefs: str) -> float:
        return invocation(episode(prefs=list(prefs), history=history), CONTEXT)

    assert calls("action", "romance; 1990s", "sci-fi") == 1.0
    assert calls("light-hearted action", "Romance films") == 0.5  # whole words, any case
    assert calls("action", "action", "action; romance") == 0.5  # repeats state nothing new
    assert calls("drama", "western", "zqxv", "", "actionable") == 0.0  # not this user's aspects; no partial words
    assert calls("The Matrix", "titanic; romance", "action") == 0.0  # naming an item never counts
    assert calls("action", "science fiction") == 0.5  # a phrase close to an aspect states it
    assert calls("action", "romance") == 0.5
    with pytest.raises(ValueError, match="item_aspects"):
        invocation(episode(prefs=["a", "b"]), RewardContext(encoder=FakeEncoder(TABLE)))


def test_grounding_follows_the_tools_ranking():
    def grounding(answer, rec_k=4) -> float:
        ep = episode(answer=answer, rec_k=rec_k)  # every call returned (2, 3): ranks 0 and 1 of 2
        return GroundingReward()(ep, CONTEXT)

    assert grounding([2, 3], rec_k=2) == pytest.approx(1.5 / 2 - 1)
    assert grounding([2, 3, 1, None]) == pytest.approx(1.5 / 4 - 1)  # item 1 was never retrieved
    assert grounding([2, 2]) == pytest.approx(1.0 / 4 - 1)  # a repeat earns nothing
    assert grounding([]) == -1.0


def test_diversity():
    div = DiversityReward(rule="non_empty")
    assert div(episode(prefs=["action"]), CONTEXT) == 0.0
    assert div(episode(prefs=["action", "action", " action "]), CONTEXT) == pytest.approx(0.0, abs=1e-12)
    assert div(episode(prefs=["action", "romance"]), CONTEXT) == pytest.approx(0.2 * (1 - 0.6))
    assert div(episode(prefs=["action", "drama"]), CONTEXT) == pytest.approx(0.2)
    # upper-triangle mean of (a, r, a): cosines 0.6, 1.0, 0.6
    assert div(episode(prefs=["action", "romance", "action"]), CONTEXT) == pytest.approx(0.2 * (1 - 2.2 / 3))
    assert div(episode(prefs=["action", "", "  "]), CONTEXT) == 0.0  # empty queries do not count
    assert DiversityReward(scale=1.0, rule="non_empty")(episode(prefs=["action", "drama"]), CONTEXT) == 0.2 * 5
    informative = DiversityReward(counter=strict_counter())  # only calls stating a new aspect of the history count
    assert informative(episode(prefs=["action", "zqxv", "drama"], history=(1, 3)), CONTEXT) == pytest.approx(0.2)
    assert informative(episode(prefs=["action", "zqxv", "drama"], history=(1,)), CONTEXT) == 0.0


def test_diversity_caches_encodings_and_batches_them():
    encoder = FakeEncoder(TABLE)
    context = RewardContext(encoder=encoder)
    div = DiversityReward(rule="non_empty")
    div(episode(prefs=["action", "romance"]), context)
    div(episode(prefs=["romance", "action"]), context)
    assert encoder.calls == [["action", "romance"]]
    reward = HierarchicalReward([DiversityReward(rule="non_empty")])
    eps = [episode(prefs=["action", "drama"]), episode(prefs=["drama", "romance", "x y"]), episode(prefs=["solo"])]
    encoder.calls.clear()
    breakdowns = reward.batch(eps, context)
    assert encoder.calls == [["action", "drama", "romance", "x y", "solo"]]  # one call for the batch
    assert breakdowns[0].terms["diversity"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="encoder"):
        DiversityReward(rule="non_empty")(episode(prefs=["a", "b"]), RewardContext())


@pytest.mark.parametrize(("position", "expected"), [(0, 3.0), (1, 2.8), (9, 1.2)])
def test_hit_rank(position, expected):
    answer = [None] * 10
    answer[position] = 1
    assert HitRankReward()(episode(answer=answer), CONTEXT) == pytest.approx(expected)


def test_hit_rank_misses():
    assert HitRankReward()(episode(answer=[2, 3, None]), CONTEXT) == 0.0
    assert HitRankReward()(episode(answer=()), CONTEXT) == 0.0
    assert HitRankReward()(episode(answer=[None] * 10 + [1]), CONTEXT) == 0.0  # past the first rec_k lines
    assert HitRankReward(correct=2, linear=0.5)(episode(answer=[2, 1], rec_k=4), CONTEXT) == pytest.approx(3.5)


def test_point_three_lines():
    # weights (1, 4/9, 1/9), sims (0.8, 0 for the invalid line, 0.4): 10 * (0.8 + 0.4/9) / (14/9) = 38/7
    assert PointReward()(episode(answer=[2, None, 3], rec_k=3), CONTEXT) == pytest.approx(38 / 7)
    assert PointReward(scale=1.0)(episode(answer=[2, None, 3], rec_k=3), CONTEXT) == pytest.approx(3.8 / 7)
    # the target itself has sim 1
    assert PointReward()(episode(answer=[1, None, None], rec_k=3), CONTEXT) == pytest.approx(10 / (14 / 9))


def test_point_normalises_over_rec_k_slots():
    # a one-line answer at rec_k=10: 10 * 0.8 / sum_{m=1..10} (m/10)^2 = 8 / 3.85, not the paper's 8 (per given line)
    assert PointReward()(episode(answer=[2], rec_k=10), CONTEXT) == pytest.approx(8 / 3.85)
    assert PointReward()(episode(answer=[], rec_k=10), CONTEXT) == 0.0
    assert PointReward()(episode(answer=[None, None, None], rec_k=3), CONTEXT) == 0.0


def test_point_guards():
    # negative sims: clipped to 0 by default, raw with clip_negative=False (weights 1, 1/4; sims -0.5, 0.8)
    assert PointReward()(episode(answer=[4, 2], rec_k=2), CONTEXT) == pytest.approx(10 * 0.2 / 1.25)
    raw = PointReward(clip_negative=False)
    assert raw(episode(answer=[4, 2], rec_k=2), CONTEXT) == pytest.approx(10 * (-0.5 + 0.2) / 1.25)
    # history items other than the target score 0 (item 2 here): 10 * (4/9 * 0.4) / (14/9) = 8/7
    assert PointReward()(episode(answer=[2, 3, 5], history=[2, 1], rec_k=3), CONTEXT) == pytest.approx(8 / 7)
    paper = PointReward(exclude_history=False)
    assert paper(episode(answer=[2, 3, 5], history=[2], rec_k=3), CONTEXT) == pytest.approx(
        10 * (0.8 + 1.6 / 9) / 14 * 9
    )
    # a repeated id the env failed to mark scores 0 on its later line, exactly like None
    point = PointReward()
    assert point(episode(answer=[2, 2, 2], rec_k=3), CONTEXT) == point(
        episode(answer=[2, None, None], rec_k=3), CONTEXT
    )
    with pytest.raises(ValueError, match="item_text"):
        point(episode(answer=[2]), RewardContext())


def test_extras():
    assert NDCGReward()(episode(answer=[None, 5, 1]), CONTEXT) == pytest.approx(1 / math.log2(3))  # ranked (5, 1)
    assert NDCGReward()(episode(answer=[5, 2]), CONTEXT) == 0.0
    assert InvalidPenalty()(episode(answer=[None, None, None, 2]), CONTEXT) == pytest.approx(-0.3)
    assert DuplicatePenalty()(episode(answer=[2, None], n_duplicate=2), CONTEXT) == pytest.approx(-0.2)
    assert HistoryPenalty()(episode(answer=[2, 3, 4, 5], history=[2, 3, 9]), CONTEXT) == pytest.approx(-0.5)
    assert HistoryPenalty()(episode(answer=[1, 2], history=[1]), CONTEXT) == 0.0  # the target never counts
    assert HistoryPenalty()(episode(answer=[None]), CONTEXT) == 0.0
    assert NDCGReward().weight == InvalidPenalty().weight == 1.0  # standalone default; configs default extras to 0


# --- the hierarchical composer --------------------------------------------------------------------------------------


class Exploding(Component):
    name = "exploding"
    level = "outcome"

    def __call__(self, episode, context):
        raise AssertionError("a component that should not have been computed was called")


def test_gate_keeps_process_terms_and_drops_outcome_terms():
    reward = build_reward({"invocation": {"calls": "all"}, "diversity": {"calls": "all"}})  # the paper's formulas
    ep = episode(answer=[1, 2, 3], prefs=["action", "drama", "romance"], rec_k=3, problems=("answer lines",))
    b = reward(ep, CONTEXT)
    assert b.gated
    assert set(b.terms) == set(ALL) == set(b.unweighted)
    assert b.terms["format"] == -1.0
    assert b.terms["invocation"] == 1.0
    assert b.terms["diversity"] == pytest.approx(0.2 * (1 - 0.6 / 3))
    assert b.terms["hit_rank"] == 0.0 and b.terms["point"] == 0.0
    assert b.total == pytest.approx(sum(b.terms.values()))
    good = reward(episode(answer=[1, 2, 3], prefs=["action", "drama", "romance"], rec_k=3), CONTEXT)
    assert not good.gated
    assert good.terms["hit_rank"] == pytest.approx(1 + 0.2 * 3)
    assert good.terms["point"] > 0
    ungated = HierarchicalReward(reward.components, format_gate=False)(ep, CONTEXT)
    assert ungated.terms["hit_rank"] == pytest.approx(1.6) and ungated.terms["point"] == good.terms["point"]
    # an outcome component is not even called on a gated episode
    HierarchicalReward([FormatReward(), Exploding()])(ep, CONTEXT)


def test_weights_multiply_and_zero_weights_are_not_computed():
    ep = episode(answer=[1] + [None] * 9, prefs=["a", "b"])
    b = HierarchicalReward([InvocationReward(2.0, rule="all"), HitRankReward(-0.5), Exploding(0.0)])(ep, CONTEXT)
    assert b.unweighted == {"invocation": 0.5, "hit_rank": 3.0, "exploding": 0.0}
    assert b.terms == {"invocation": 1.0, "hit_rank": -1.5, "exploding": 0.0}
    assert b.total == pytest.approx(-0.5)
    assert b.log_dict() == {"reward/total": b.total, **{f"reward/{k}": v for k, v in b.terms.items()}}
    # disabled model-based terms cost nothing: no encoder, no item tables needed
    off = build_reward({"invocation": {"calls": "all"}, "diversity": {"weight": 0}, "point": {"weight": 0}})
    assert off(ep).terms["point"] == 0.0


def test_composer_rejects_bad_components():
    with pytest.raises(ValueError, match="unique"):
        HierarchicalReward([FormatReward(), FormatReward()])
    bad = FormatReward()
    bad.level = "stage"
    with pytest.raises(ValueError, match="level"):
        HierarchicalReward([bad])
    with pytest.raises(ValueError, match="non-finite"):
        HierarchicalReward([FormatReward(float("nan"))])


# --- config and presets ---------------------------------------------------------------------------------------------


def _preset(name: str):
    """The composed `reward` node of a preset (configs/reward/NAME.yaml over rewards.RewardConfig)."""
    from deeprec_env.config import compose

    return compose("env_config", [f"reward={name}"]).reward


def test_presets_load_and_select_components():
    cold, rec = load_reward_config(_preset("cold")), load_reward_config(_preset("rec"))
    assert isinstance(cold, RewardConfig) and cold.name == "cold" and rec.name == "rec"
    cold_reward, rec_reward = build_reward(cold), build_reward(rec)
    assert cold_reward.names == rec_reward.names == ALL
    assert set(cold_reward.active) == {"format", "invocation", "diversity", "grounding", "invalid_penalty"}
    assert set(rec_reward.active) == {"format", "invocation", "diversity", "grounding", "hit_rank", "point"}
    assert rec.point.weight < rec.hit_rank.weight and rec.invocation.calls == cold.diversity.calls == "informative"
    cold_paper, rec_paper = load_reward_config(_preset("cold-paper")), load_reward_config(_preset("rec-paper"))
    assert set(build_reward(cold_paper).active) == {"format", "invocation", "diversity"}
    assert cold_paper.invocation.calls == cold_paper.diversity.calls == "all"
    assert set(build_reward(rec_paper).active) == {"format", "hit_rank", "point"}
    assert not rec_paper.point.clip_negative and not rec_paper.point.exclude_history
    assert cold_reward.levels["diversity"] == "process" and rec_reward.levels["point"] == "outcome"
    assert cold_reward.format_gate and rec_reward.format_gate
    assert (cold.invocation.base, cold.invocation.cap, cold.diversity.scale) == (0.5, 3, 0.2)
    assert (rec.hit_rank.correct, rec.hit_rank.linear, rec.point.scale, rec.format.error) == (1.0, 0.2, 10.0, -1.0)


def test_command_line_overrides():
    node = OmegaConf.merge(_preset("rec-paper"), OmegaConf.from_dotlist(["point.weight=0"]))
    assert set(build_reward(node).active) == {"format", "hit_rank"}
    node = OmegaConf.merge(node, OmegaConf.from_dotlist(["ndcg.weight=2.5", "format_gate=false"]))
    reward = build_reward(node)
    assert reward.weights["ndcg"] == 2.5 and not reward.format_gate
    with pytest.raises(ValueError, match="valid keys"):
        load_reward_config(OmegaConf.from_dotlist(["pointt.weight=1"]))
    with pytest.raises(ValueError, match="bad reward config"):
        load_reward_config({"invocation": {"cap": "many"}})


def test_hydra_composes_the_presets():
    from deeprec_env.config import compose

    cfg = compose("env_config", ["reward=rec-paper", "reward.point.weight=0", "reward.invocation.weight=1"])
    reward = build_reward(cfg.reward)
    assert set(reward.active) == {"format", "hit_rank", "invocation"}


# --- properties -----------------------------------------------------------------------------------------------------

PREFS = st.one_of(st.sampled_from(["action", "romance", "drama", "space opera", ""]), st.text(max_size=12))


@st.composite
def episodes(draw, rec_k=10):
    n_lines = draw(st.integers(0, rec_k))
    items = draw(st.lists(st.integers(1, N_ITEMS), min_size=n_lines, max_size=n_lines, unique=True))
    answer = [None if draw(st.booleans()) and draw(st.booleans()) else item for item in items]
    return episode(
        answer=answer,
        prefs=draw(st.lists(PREFS, max_size=6)),
        target=draw(st.integers(1, N_ITEMS)),
        history=draw(st.lists(st.integers(1, N_ITEMS), max_size=5)),
        rec_k=rec_k,
        problems=draw(st.sampled_from([(), ("bad tags",)])),
    )


PAPER = build_reward(RewardConfig())  # the dataclass defaults: the paper's six terms on, guards on, extras off
ALL_ON = build_reward(
    load_reward_config(
        {name: {"weight": 1.0} for name in ALL if name != "explanation"}  # judged: tests/test_recgpt.py
        | {"invocation": {"weight": 1.0, "calls": "non_empty"}, "diversity": {"weight": 1.0, "calls": "non_empty"}}
    )
)


@settings(max_examples=150, deadline=None)
@given(ep=episodes())
def test_ranges_and_finite_total(ep):
    b = ALL_ON(ep, RANDOM_CONTEXT)
    assert math.isfinite(b.total)
    assert b.total == pytest.approx(sum(b.terms.values()))
    u = b.unweighted
    assert 0.0 <= u["invocation"] <= 1.0
    assert 0.0 <= u["diversity"] <= 0.4
    assert -1.0 <= u["grounding"] <= 0.0
    assert u["hit_rank"] == 0.0 or 1.2 - 1e-9 <= u["hit_rank"] <= 3.0 + 1e-9
    assert -10.0 <= u["point"] <= 10.0
    assert u["format"] in (0.0, -1.0)
    if b.gated:
        assert u["hit_rank"] == u["point"] == u["ndcg"] == 0.0
    for component in (PointReward(clip_negative=False), PointReward()):
        assert -10.0 <= component(ep, RANDOM_CONTEXT) <= 10.0


@settings(max_examples=150, deadline=None)
@given(ep=episodes(), data=st.data())
def test_point_never_pays_for_duplicates_or_junk(ep, data):
    point = PointReward()
    lines = list(ep.answer_ids)
    base = point(ep, RANDOM_CONTEXT)
    assert base >= 0.0

    def score(answer):
        return point(episode(answer=answer[: ep.rec_k], target=ep.target, history=ep.history), RANDOM_CONTEXT)

    assert score([None] * len(lines)) == 0.0
    if not lines:
        return
    j = data.draw(st.integers(0, len(lines) - 1), label="duplicated line")
    for copy in (None, lines[j]):  # the env marks the copy None; an unmarked repeat must score the same
        assert score(lines[: j + 1] + [copy] + lines[j + 1 :]) <= base + 1e-9  # inserted after line j
        m = data.draw(st.integers(0, len(lines) - 1), label="overwritten line")
        if m > j:  # a later line overwritten by a repeat of line j (an earlier one would be a reordering)
            assert score([copy if i == m else x for i, x in enumerate(lines)]) <= base + 1e-9


def test_preset_reward_is_deterministic_and_weight_zero_is_free():
    ep = episode(answer=[2, 3, 1, None, 5], prefs=["action", "romance"], rec_k=5)
    rec = build_reward(_preset("rec"))
    assert rec(ep, CONTEXT) == rec(ep, CONTEXT)
    cold = build_reward(_preset("cold-paper"))
    # the paper's cold needs no item tables: point and hit_rank are off, never computed
    b = cold(ep, RewardContext(encoder=FakeEncoder(TABLE)))
    expected = {"invocation": 0.5, "diversity": pytest.approx(0.08)}
    assert b.terms == {**dict.fromkeys(ALL, 0.0), **expected}
    assert PAPER.active == ("format", "invocation", "diversity", "hit_rank", "point")


@settings(max_examples=150, deadline=None)
@given(ep=episodes(), order=st.randoms(use_true_random=False))
def test_terms_are_quantised_so_any_sum_is_exact(ep, order):
    b = ALL_ON(ep, RANDOM_CONTEXT)
    terms = list(b.terms.values())
    assert all(quantize(t) == t for t in terms)
    order.shuffle(terms)
    running = 0.0
    for t in terms:
        running += t
    assert running == b.total


@settings(max_examples=150, deadline=None)
@given(
    prefs=st.lists(st.sampled_from(["action", "romance; 1990s", "sci-fi", "drama", "zqxv", ""]), max_size=5),
    noise=st.sampled_from(["", "\u200b", "The Matrix", "titanic", "actionable", "1990"]),
    at=st.integers(0, 5),
)
def test_an_uninformative_call_never_raises_invocation_or_diversity(prefs, noise, at):
    """Inserting a call that states nothing about the user (empty, invisible, an item's title, a near-word) anywhere
    never increases the informative invocation or diversity terms."""
    history = (1, 2, 4)
    with_noise = [*prefs[:at], noise, *prefs[at:]]
    for component in (InvocationReward(counter=strict_counter()), DiversityReward(counter=strict_counter())):
        base = component(episode(prefs=prefs, history=history), CONTEXT)
        assert component(episode(prefs=with_noise, history=history), CONTEXT) <= base + 1e-12
