"""The judge of answer-line reasons (rewards/judge.py) and its labelled set (experiments/judge.py)."""

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deeprec_env.config import compose, typed
from experiments.judge import KINDS, labelled_cases, spoken_title
from rewards.judge import JUDGE_ASPECTS, JudgeCase, JudgeConfig, LLMJudge, RuleJudge, build_judge, overall
from tests.fakes import HashEncoder

FAITHFULNESS, PERSONALISATION, SPECIFICITY = range(3)


@pytest.fixture(scope="module")
def judge(dataset):
    return RuleJudge(dataset, HashEncoder(16))


def _decade(dataset, item):
    return f"{dataset.items[item].year // 10 * 10}s"


def _pair(dataset):
    """(user history, an item outside it, a history item sharing a category with it, an item sharing neither a
    category nor the decade with it)."""
    for user in range(dataset.n_users):
        history = [int(i) for i in dataset.sequences[user][:-1]]
        for item in range(1, dataset.n_items + 1):
            if item in history:
                continue
            cats = set(dataset.items[item].categories)
            tie = next((h for h in history if cats & set(dataset.items[h].categories)), None)
            stranger = next(
                (
                    j
                    for j in range(1, dataset.n_items + 1)
                    if not cats & set(dataset.items[j].categories) and _decade(dataset, j) != _decade(dataset, item)
                ),
                None,
            )
            if tie is not None and stranger is not None:
                return history, item, tie, stranger
    raise AssertionError("the synthetic dataset has no such pair")


def _about(dataset, item, title):
    categories = " ".join(c.lower() for c in dataset.items[item].categories)
    return f"a {_decade(dataset, item)} {categories} pick, like {dataset.items[title].title} that you played"


def test_faithful_beats_unfaithful_generic_and_another_users_reason(dataset, judge):
    history, item, tie, stranger = _pair(dataset)
    foreign = next(i for i in range(1, dataset.n_items + 1) if i not in history and i != item)
    reasons = {
        "faithful": _about(dataset, item, tie),
        "unfaithful": _about(dataset, stranger, tie),
        "generic": "A great pick you will love.",
        "other_user": _about(dataset, item, foreign),
    }
    scores = {kind: judge(JudgeCase((item,), (reason,), tuple(history))) for kind, reason in reasons.items()}
    assert scores["faithful"][0, FAITHFULNESS] > scores["unfaithful"][0, FAITHFULNESS]
    assert scores["faithful"][0, SPECIFICITY] > scores["generic"][0, SPECIFICITY]
    assert scores["faithful"][0, PERSONALISATION] > scores["other_user"][0, PERSONALISATION]
    best = overall(scores["faithful"])[0]
    assert all(best > overall(scores[kind])[0] for kind in KINDS[1:])


def test_specificity_drops_when_one_reason_is_reused_for_every_item(dataset, judge):
    history, item, tie, _ = _pair(dataset)
    items = tuple(i for i in range(1, dataset.n_items + 1) if i not in history)[:4]
    varied = tuple(
        _about(dataset, i, tie) + f" {word}" for i, word in zip(items, ("now", "soon", "next", "too"), strict=True)
    )
    reused = (_about(dataset, items[0], tie),) * len(items)
    varied_scores = judge(JudgeCase(items, varied, tuple(history)))[:, SPECIFICITY]
    reused_scores = judge(JudgeCase(items, reused, tuple(history)))[:, SPECIFICITY]
    assert reused_scores.max() == 0.0
    assert varied_scores.min() > reused_scores.max()


def test_a_named_year_after_a_title_is_no_claim_and_synonyms_count(dataset, judge):
    history, item, tie, _ = _pair(dataset)
    meta = dataset.items[tie]
    reading = judge.read(f"like {meta.title} ({meta.year})", frozenset(history))
    assert reading.claims == frozenset() and len(reading.titles) == 1
    assert judge.read("made in the nineties").claims == {"1990s"}
    assert judge.read("a '80s pick").claims == {"1980s"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=80), min_size=1, max_size=4), st.text(max_size=30))
@example(["a 1990s \ud800 drama", "Aladdin (1992) 90s '90s 1990s nineties"], "\udfff")
def test_any_reason_text_scores_in_range(dataset, judge, reasons, request):
    items = tuple(range(1, len(reasons) + 1))
    history = tuple(int(i) for i in dataset.sequences[0][:5])
    scores = judge(JudgeCase(items, tuple(reasons), history, request=request))
    assert scores.shape == (len(reasons), len(JUDGE_ASPECTS))
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all((overall(scores) >= 0) & (overall(scores) <= 1))


def test_the_rule_judge_pickles_and_judges_alike(dataset, judge):
    history, item, tie, _ = _pair(dataset)
    case = JudgeCase((item,), (_about(dataset, item, tie),), tuple(history))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(judge))(case), judge(case))


def test_a_case_needs_one_reason_per_item():
    with pytest.raises(ValueError, match="one each"):
        JudgeCase((1, 2), ("only one",), ())


def test_labelled_set_has_four_kinds_over_the_same_items_and_holds_paraphrases_out_of_the_dev_half(dataset):
    cases = labelled_cases(dataset, n_users=8, items=3, seed=0)
    assert len(cases) == 8 * len(KINDS)
    by_user: dict[int, dict] = {}
    for labelled in cases:
        by_user.setdefault(labelled.user, {})[labelled.kind] = labelled
        assert len(labelled.case.items) == len(labelled.case.reasons) == 3
    for kinds in by_user.values():
        assert set(kinds) == set(KINDS)
        assert len({k.case.items for k in kinds.values()}) == 1
        history = set(kinds["faithful"].case.history)
        items = kinds["faithful"].case.items
        for j, item in enumerate(items):
            assert item not in history
            faithful, unfaithful = kinds["faithful"].case.reasons[j], kinds["unfaithful"].case.reasons[j]
            assert _decade(dataset, item) in faithful or kinds["faithful"].family == "paraphrase"
            assert faithful != unfaithful and kinds["generic"].case.reasons[j] not in (faithful, unfaithful)
            assert any(spoken_title(dataset, h) in faithful for h in history)
            assert not any(spoken_title(dataset, h) in kinds["other_user"].case.reasons[j] for h in history)
    assert {c.family for c in cases if c.half == "dev"} == {"plain"}
    assert {c.family for c in cases if c.half == "report"} == {"plain", "paraphrase"}


def test_llm_judge_runs_a_tiny_model_and_returns_one_row_per_line(dataset, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from agents.llm import PolicyConfig, tiny_model_config, train_tokenizer

    config = PolicyConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=400, n_positions=1024)
    tokenizer = train_tokenizer(dataset, config.vocab_size)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_model_config(config, tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    node = compose("env_config", ["judge=llm", f"judge.model={tmp_path}", "judge.batch_size=4"]).judge
    judge = build_judge(typed(JudgeConfig, node), dataset, encoder=None)
    assert isinstance(judge, LLMJudge)
    history = tuple(int(i) for i in dataset.sequences[0][:6])
    case = JudgeCase((1, 2), ("a fine pick", "like the ones you \ud800 played"), history, request="something calm")
    scores = judge(case)
    assert scores.shape == (2, len(JUDGE_ASPECTS))
    assert np.all((scores > 0) & (scores < 1))


def test_llm_judge_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="judge.model=DIR"):
        typed(JudgeConfig, compose("env_config", ["judge=llm"]).judge).validate()
    with pytest.raises(ValueError, match="judge=rule or judge=llm"):
        JudgeConfig(name="gpt").validate()
