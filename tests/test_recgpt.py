"""The RecGPT parts of the environment: profile cards, the interest block, answer-line reasons, the interest reward
and the teachers that write them (docs/recgpt.md)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.baselines import ScriptedAgent, ScriptedCopyAgent, TRMAgent
from agents.rollout import rollout
from deeprec_env.data.profiles import load_profiles, profile_card, synthetic_features
from deeprec_env.data.readers import read_ml1m_users, read_ml100k_users
from deeprec_env.data.source import DatasetConfig
from deeprec_env.protocol import (
    INTERESTS_CLOSE,
    INTERESTS_OPEN,
    PROFILE_LEAD,
    parse_interests,
    render_interests,
    split_reason,
    with_reason,
)
from deeprec_env.protocol.interests import normalize_tag
from rewards import InterestReward, RewardContext
from rewards.components import aspect_shares, stated_shares, total_variation
from tests.fakes import synthetic_dataset

RECGPT_ENV = {"profile": True, "interests": True, "explanations": True, "item_refs": "handles", "recall_k": 10}


# -- protocol ------------------------------------------------------------------------------------------------------


def test_interest_block_round_trip_and_formats():
    text = render_interests([("drama", 0.5), ("1990s", 0.3)], [("thriller", 1.0)])
    assert parse_interests(f"thinking\n{text}\nmore") == parse_interests(text)
    parsed = parse_interests(text)
    assert parsed.long_term == (("drama", 0.5), ("1990s", 0.3)) and parsed.recent == (("thriller", 1.0),)
    loose = (
        f'{INTERESTS_OPEN}\nLong-term: Drama (50%); "Comedy": 0.25; westerns\nShort term: sci-fi=2\n{INTERESTS_CLOSE}'
    )
    parsed = parse_interests(loose)
    assert parsed.long_term == (("drama", 0.5), ("comedy", 0.25), ("westerns", 1.0))
    assert parsed.recent == (("sci-fi", 2.0),)
    assert parse_interests("no block here") is None
    first = render_interests([("a", 1.0)], [])
    assert parse_interests(first + render_interests([("b", 1.0)], [])).long_term == (("b", 1.0),)  # the last counts


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_interest_parsing_never_raises(body):
    parsed = parse_interests(f"{INTERESTS_OPEN}\n{body}\n{INTERESTS_CLOSE}")
    assert parsed is not None
    for tag, weight in parsed.long_term + parsed.recent:
        assert tag == normalize_tag(tag) and tag and weight >= 0


def test_reasons_split_from_answer_lines():
    assert split_reason("#3 -- a 1990s comedy, like Heat") == ("#3", "a 1990s comedy, like Heat")
    assert split_reason("Toy Story (1995) — animation you like") == ("Toy Story (1995)", "animation you like")
    assert split_reason("Toy Story (1995)") == ("Toy Story (1995)", "")
    assert split_reason(with_reason("#1", "why -- not")) == ("#1", "why -- not")
    assert with_reason("#1", "") == "#1"


@given(st.text(max_size=80), st.text(max_size=80))
def test_split_reason_total(item, reason):
    named, why = split_reason(item)
    assert isinstance(named, str) and isinstance(why, str)


# -- profiles ------------------------------------------------------------------------------------------------------


def test_user_feature_readers(tmp_path):
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    assert read_ml100k_users(tmp_path) == {"1": ("24", "male", "technician"), "2": ("53", "female", "other")}
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n7::M::25::12::55117\n")
    assert read_ml1m_users(tmp_path) == {
        "1": ("under 18", "female", "K-12 student"),
        "7": ("25-34", "male", "programmer"),
    }
    (tmp_path / "u.user").write_text("1|24|X|technician|85711\n")
    with pytest.raises(ValueError, match="u.user line 1: gender"):
        read_ml100k_users(tmp_path)
    assert profile_card("24", "male", "technician") == "age 24, male, technician"


def test_ml100k_profiles_follow_raw_user_ids(tmp_path):
    """A tiny ml-100k folder: each user's card comes from its own u.user line; a user the file lacks gets ""."""
    from deeprec_env.data.source import load_dataset

    rows = [f"{u}\t{i}\t5\t{100 * u + i}" for u in (1, 2, 3) for i in range(1, 7)]
    (tmp_path / "u.data").write_text("\n".join(rows) + "\n")
    flags = "|".join(["0"] * 19)
    (tmp_path / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||url|{flags}\n" for i in range(1, 7)))
    (tmp_path / "u.user").write_text("3|30|F|writer|1\n1|24|M|technician|85711\n")
    cfg = DatasetConfig(name="tiny", format="ml-100k", dir=tmp_path.name, root=str(tmp_path.parent), min_core=1)
    dataset = load_dataset(cfg, tmp_path / "artifacts")
    cards = {raw: card for raw, card in zip(dataset.raw_user_ids, dataset.profiles, strict=True)}
    assert cards == {"1": "age 24, male, technician", "2": "", "3": "age 30, female, writer"}
    assert load_profiles(cfg, dataset, tmp_path / "artifacts") == dataset.profiles  # cached


def test_synthetic_profiles_follow_latent_preferences(dataset):
    """The occupation names the top latent category far more often than chance (1 in 12 occupations)."""
    from deeprec_env.data.profiles import SYNTHETIC_OCCUPATIONS

    preferences = dataset.extras["user_preferences"]
    features = synthetic_features(preferences, seed=0)
    assert len(dataset.profiles) == dataset.n_users and all(dataset.profiles)
    top = [SYNTHETIC_OCCUPATIONS[int(np.argmax(row))] for row in preferences]
    assert np.mean([f[2] == t for f, t in zip(features, top, strict=True)]) > 0.6
    assert features == synthetic_features(preferences, seed=0)


def test_env_shows_the_profile_card(dataset):
    from tests.fakes import random_stack

    stack = random_stack(dataset)
    for protocol in ("tags", "chat"):
        env = stack.make_env(protocol=protocol, profile=True)
        env.reset(options={"split": "valid", "user": 4})
        prompt = env.prompt if protocol == "tags" else env.prompt[1]["content"]
        assert f"{PROFILE_LEAD}{dataset.profiles[4]}\n" in prompt
        assert env.episode.profile == dataset.profiles[4]
    plain = stack.make_env(protocol="tags")
    plain.reset(options={"split": "valid", "user": 4})
    assert PROFILE_LEAD not in plain.prompt


def test_profile_needs_user_features(dataset):
    from tests.fakes import random_stack

    dataset_without = type(dataset)(dataset.name, dataset.items, dataset.sequences, dataset.raw_user_ids,
                                    dataset.raw_item_ids)  # fmt: skip
    with pytest.raises(ValueError, match="no user features for env.profile; set env.profile=false"):
        random_stack(dataset_without).make_env(profile=True)


# -- episodes and the interest reward ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recgpt_stack(dataset):
    from tests.fakes import random_stack

    return random_stack(dataset, reward_node={"interest": {"weight": 1.0}, "explanation": {"weight": 1.0}})


def play(stack, cls, protocol, users, **env):
    envs = stack.make_vector_env(len(users), autoreset_mode="Disabled", protocol=protocol, **env)
    return rollout(envs, lambda: cls(stack.dataset, protocol, 10), users, "valid", show_progress=False)


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_teacher_writes_interests_and_reasons(recgpt_stack, protocol):
    users = [int(u) for u in recgpt_stack.dataset.eval_users("valid")[:6]]
    for cls in (ScriptedCopyAgent, TRMAgent):
        for episode in play(recgpt_stack, cls, protocol, users, **RECGPT_ENV):
            assert episode.format_ok, episode.format_problems
            assert episode.interests is not None and episode.interests.long_term and episode.interests.recent
            assert len(episode.answer_reasons) == 10 and all(episode.answer_reasons)
            assert all(i is not None for i in episode.answer_ids)  # the reasons do not break item matching
            assert 0.0 < episode.reward_unweighted["interest"] <= 1.0
            assert 0.5 < episode.reward_unweighted["explanation"] <= 1.0


def test_plain_env_ignores_the_recgpt_blocks(recgpt_stack):
    """Without the options an interest block is not parsed and a line with a reason is matched whole (invalid)."""
    user = int(recgpt_stack.dataset.eval_users("valid")[0])
    (episode,) = play(recgpt_stack, ScriptedCopyAgent, "tags", [user], recall_k=10)
    assert episode.interests is None and episode.answer_reasons == ()
    assert episode.reward_unweighted["interest"] == 0.0


def test_interest_reward_prefers_an_honest_profile():
    """Honest shares beat listing every tag, copying history titles and a uniform guess; the recent part reads the
    last items."""
    from deeprec_env.episode import Episode
    from deeprec_env.protocol import Interests

    aspects = [(), ("drama", "1990s"), ("drama",), ("comedy", "1990s"), ("horror",), ("comedy",)]
    context = RewardContext(item_aspects=aspects)
    reward = InterestReward(weight=1.0, max_tags=3, recent_items=2)
    history = np.array([1, 2, 1, 3, 5, 5, 2])

    def score(interests):
        episode = Episode(user=0, split="valid", history=history, target=4, rec_k=10, codec="tags")
        episode.interests = interests
        return reward(episode, context)

    truth_long = aspect_shares(history, aspects, 3)
    truth_recent = aspect_shares(history[-2:], aspects, 3)
    assert truth_long == pytest.approx({"drama": 0.4, "1990s": 0.3, "comedy": 0.3})
    assert truth_recent == pytest.approx({"comedy": 0.5, "drama": 0.5})
    honest = Interests(tuple(truth_long.items()), tuple(truth_recent.items()))
    every = tuple((t, 1.0) for t in ("1990s", "comedy", "drama", "horror"))
    every_tag = Interests(every, every)
    titles = Interests((("movie 1", 1.0), ("movie 2", 1.0)), (("movie 5", 1.0),))
    assert score(honest) == pytest.approx(1.0)
    assert score(every_tag) < score(honest) and score(titles) == 0.0 and score(None) == 0.0
    assert stated_shares((("a", 0.0),), 3) == {} and total_variation({"a": 1.0}, {"b": 1.0}) == 1.0


def test_interest_reward_reads_latent_interests():
    from deeprec_env.episode import Episode
    from deeprec_env.protocol import Interests

    aspects = [(), ("mystery", "1980s"), ("western",)]
    latent = [{"western": 0.8, "mystery": 0.2, "horror": 0.0}]
    reward = InterestReward(weight=1.0)
    episode = Episode(user=0, split="valid", history=np.array([1, 1, 1]), target=2, rec_k=10, codec="tags")
    recent = (("mystery", 0.5), ("1980s", 0.5))
    episode.interests = Interests((("1980s", 0.5), ("western", 0.4), ("mystery", 0.1)), recent)
    assert reward(episode, RewardContext(item_aspects=aspects, latent_interests=latent)) == pytest.approx(1.0)
    assert reward(episode, RewardContext(item_aspects=aspects)) == pytest.approx(0.8)  # behaviour: mystery, 1980s


def test_scripted_interests_recover_latent_categories(tmp_path):
    """On synthetic users the teacher's top long-term tag is the top latent category for most users."""
    from deeprec_env.data.synthetic import synthetic_category_names

    data = synthetic_dataset(tmp_path, n_users=150)  # the default catalogue: users never run out of items
    names = [n.lower() for n in synthetic_category_names(data.extras["user_preferences"].shape[1])]
    hits = []
    for user in range(data.n_users):
        agent = ScriptedAgent(data, "tags", 10)
        agent.history = [int(i) for i in data.history_and_target(user, "valid")[0][-20:]]
        block = parse_interests(agent.interests({"interests": True}))
        stated = [tag for tag, _ in block.long_term if tag in names]
        hits.append(bool(stated) and stated[0] == names[int(np.argmax(data.extras["user_preferences"][user]))])
    assert np.mean(hits) >= 0.8


def test_explanation_reward_reads_the_judge(recgpt_stack):
    """Only lines with a valid item and a reason count, over rec_k; generic praise scores below the teacher's reasons;
    without a judge the reward says what it needs."""
    from deeprec_env.episode import Episode
    from rewards import ExplanationReward

    dataset, context = recgpt_stack.dataset, recgpt_stack.reward.context
    history, target = dataset.history_and_target(3, "valid")
    items = [i for i in range(1, dataset.n_items + 1) if i not in set(history.tolist())][:10]
    teacher = ScriptedAgent(dataset, "tags", 10)
    teacher.history = [int(i) for i in history]

    def score(reasons, ids=items):
        episode = Episode(user=3, split="valid", history=history, target=target, rec_k=10, codec="tags")
        episode.answer_ids, episode.answer_reasons = tuple(ids), tuple(reasons)
        return ExplanationReward(1.0)(episode, context)

    honest = score(teacher.reasons(items))
    assert 0.5 < honest <= 1.0
    assert score(["a great pick that you will love"] * 10) < honest
    assert score(teacher.reasons(items)[:5] + [""] * 5) == pytest.approx(score(teacher.reasons(items[:5]), items[:5]))
    assert score(teacher.reasons(items), [None] * 10) == 0.0
    with pytest.raises(ValueError, match="needs a judge"):
        ExplanationReward(1.0)(Episode(0, "valid", history, target, 10, "tags"), RewardContext())


def test_recgpt_probes_earn_less_than_the_teacher(recgpt_stack):
    """Every RecGPT trick (the teacher's calls and answer, other interests or reasons) earns less than the teacher."""
    from agents.probes import RECGPT_PROBES

    users = [int(u) for u in recgpt_stack.dataset.eval_users("valid")[:20]]

    def mean_reward(cls):
        return np.mean([e.reward_total for e in play(recgpt_stack, cls, "chat", users, **RECGPT_ENV)])

    honest = mean_reward(ScriptedAgent)
    for name, cls in RECGPT_PROBES.items():
        assert mean_reward(cls) < honest, name
