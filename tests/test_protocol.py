"""The episode text protocol: parsing, rendering, format checks and title matching."""

import json
import random
import time
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.baselines import RandomAgent
from deeprec_env.data.dataset import ItemMeta, RecDataset
from deeprec_env.env import EnvConfig
from deeprec_env.protocol import (
    ALL_TAGS,
    FORMAT_CHECKS,
    ITEMS_CLOSE,
    ITEMS_OPEN,
    MAX_LINE_CHARS,
    PREF_CLOSE,
    PREF_OPEN,
    PROBLEM_ANSWER_COUNT,
    PROBLEM_ANSWER_LENGTH,
    PROBLEM_ANSWER_POSITION,
    PROBLEM_NO_ANSWER,
    PROBLEM_NO_REASONING,
    PROBLEM_NO_TOOL_CALL,
    PROBLEM_PLACEHOLDER,
    PROBLEM_ROLE_TURN,
    PROBLEM_TAGS_IN_ANSWER,
    PROBLEM_TOOL_COUNT,
    PROBLEM_UNBALANCED,
    PROMPT_END,
    REC_CLOSE,
    REC_OPEN,
    THINK_CLOSE,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_SCHEMA,
    Action,
    AnswerMatch,
    ChatCodec,
    TagsCodec,
    TitleMatcher,
    ToolRequest,
    clean_text,
    clean_value,
    format_problems,
    get_codec,
    item_cards,
    item_handles,
    normalize_preference,
    structured_call,
    tool_docstring,
)
from deeprec_env.protocol.handles import resolve, split_handle

TAGS, CHAT = TagsCodec(), ChatCodec()
CFG = EnvConfig()
KINDS = {"tool_call", "answer", "malformed"}
TITLES10 = [f"Movie {chr(65 + i)}" for i in range(10)]


# --- parsing: tags ----------------------------------------------------------------------------------------------


def test_tags_tool_call_round_trip():
    action = TAGS.parse("The user likes cartoons. " + TAGS.render_tool_call('animated  "family"\n film; 1990s'))
    assert action == Action(
        "tool_call",
        action.text,
        calls=(ToolRequest("animated family film; 1990s"),),
        reasoning="The user likes cartoons.",
        end=len(action.text),
    )


def test_tags_uses_last_opened_preference_and_stops_at_first_close():
    segment = f"a {PREF_OPEN} first {PREF_OPEN} second {PREF_CLOSE} trailing {PREF_OPEN} third {PREF_CLOSE}"
    action = TAGS.parse(segment)
    assert action.kind == "tool_call" and action.preference == "second"
    assert segment[: action.end].endswith(PREF_CLOSE) and "third" not in segment[: action.end]


def test_tags_answer_round_trip():
    segment = "ranking done\n" + THINK_CLOSE + "\n" + TAGS.render_answer(["Toy Story (1995)", "Heat", "Alien"])
    action = TAGS.parse(segment)
    assert action.kind == "answer"
    assert action.answer_lines == ("Toy Story (1995)", "Heat", "Alien")
    assert action.reasoning == "ranking done"
    assert action.end == len(segment)


def test_answer_lines_drop_empty_lines_and_numbering_only():
    block = f"{REC_OPEN}\n1. 2001: A Space Odyssey\n\n2) 12 Angry Men\n- Heat\n3.\n  \n2.0 Sequel\n{REC_CLOSE}"
    assert TAGS.parse(block).answer_lines == ("2001: A Space Odyssey", "12 Angry Men", "Heat", "", "2.0 Sequel")


def test_tags_first_closed_block_wins():
    call_first = TAGS.parse(f"{PREF_OPEN} comedy {PREF_CLOSE} {REC_OPEN}\n1. A\n{REC_CLOSE}")
    answer_first = TAGS.parse(f"{REC_OPEN}\n1. A\n{REC_CLOSE} {PREF_OPEN} comedy {PREF_CLOSE}")
    assert call_first.kind == "tool_call" and answer_first.kind == "answer"
    # An answer block opened before the call but closed after it: the call ends first (generation stops there).
    assert TAGS.parse(f"{REC_OPEN} x {PREF_OPEN} comedy {PREF_CLOSE} {REC_CLOSE}").kind == "tool_call"


@pytest.mark.parametrize(
    "segment, error",
    [
        ("just some text without tags", "no action"),
        (f"{PREF_OPEN} comedy but never closed", "no action"),
        (f"{REC_OPEN}\n1. A\n2. B", "no action"),
        (f"{PREF_CLOSE} close before open {PREF_OPEN}", "no action"),
        ("", "no action"),
    ],
)
def test_tags_malformed(segment, error):
    action = TAGS.parse(segment)
    assert action.kind == "malformed" and action.error == error and action.preference == ""


def test_preference_normalisation_and_cap():
    assert normalize_preference('  "sci-fi"\t;\n\n space  opera ') == "sci-fi ; space opera"
    assert len(TAGS.parse(TAGS.render_tool_call("word " * 10_000)).preference) <= 2000


# --- parsing: chat ----------------------------------------------------------------------------------------------


def test_chat_tool_call_round_trip_and_qwen_format():
    text = CHAT.render_tool_call("dark thriller; 1990s")
    assert text == (
        '<tool_call>\n{"name": "retrieve", "arguments": {"preference": "dark thriller; 1990s"}}\n</tool_call>'
    )
    action = CHAT.parse("Let me search. " + text)
    assert (action.kind, action.preference, action.reasoning) == ("tool_call", "dark thriller; 1990s", "Let me search.")


def test_chat_reads_string_arguments_and_no_bare_json():
    quoted = '<tool_call>{"name": "retrieve", "arguments": "{\\"preference\\": \\"western\\"}"}</tool_call>'
    assert CHAT.parse(quoted).preference == "western"
    bare = CHAT.parse('I will call it: {"name": "retrieve", "arguments": {"preference": "noir"}} now')
    assert bare.kind == "malformed" and bare.error == "no action"  # as TRL: only <tool_call> blocks are calls


def test_chat_runs_every_call_of_a_message_and_calls_win_over_an_answer():
    text = "Two sides. " + CHAT.render_tool_call("jazz") + "\n" + CHAT.render_tool_call("blues")
    action = CHAT.parse(CHAT.render_answer(["A"]) + text)
    assert action.kind == "tool_call" and [c.preference for c in action.calls] == ["jazz", "blues"]
    assert action.end == len(CHAT.render_answer(["A"]) + text)


ONE_ARGUMENT = "retrieve takes exactly one argument, preference"


@pytest.mark.parametrize(
    "body, error",
    [
        ('{"name": "search", "arguments": {"preference": "comedy"}}', "unknown tool 'search'"),
        ('{"name": "retrieve", "arguments": {}}', ONE_ARGUMENT),
        (
            '{"name": "retrieve", "arguments": {"preference": "x", "k": 5}}',
            "retrieve takes exactly one argument, preference",
        ),
        (
            '{"name": "retrieve", "parameters": {"preference": "musical"}}',
            "retrieve takes exactly one argument, preference",
        ),
        ('{"name": "retrieve", "arguments": {"preference": 42}}', "preference is not a string"),
        ('{"name": "retrieve", "arguments": ["comedy"]}', "arguments are not an object"),
        ('["retrieve", "comedy"]', "tool call is not a JSON object"),
    ],
)
def test_chat_failed_tool_calls(body, error):
    action = CHAT.parse(f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}")
    assert action.kind == "tool_call" and action.calls == (ToolRequest(error=error),)


@pytest.mark.parametrize("body", ['{"name": "retrieve", "arguments": {"preference": "x"}', "not json", "[" * 100_000])
def test_chat_bad_json_makes_the_message_plain_text(body):
    good = CHAT.render_tool_call("jazz")
    action = CHAT.parse(f"{good}\n{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}")
    assert action.kind == "malformed" and action.error == "bad JSON in a tool call" and not action.calls


def test_chat_answer_and_structured_messages():
    answer = CHAT.parse("Ranked by fit.\n" + CHAT.render_answer(["A", "B"]))
    assert answer.kind == "answer" and answer.answer_lines == ("A", "B")
    message = {"role": "assistant", "content": "Searching.", "tool_calls": [structured_call("jazz")]}
    action = CHAT.parse(message)
    assert action.kind == "tool_call" and action.preference == "jazz" and action.reasoning == "Searching."
    assert CHAT.parse({"role": "assistant", "content": None}).kind == "malformed"
    assert CHAT.parse({"role": "assistant", "tool_calls": "junk"}).kind == "malformed"


def test_tool_docstring_gives_transformers_the_tool_schema():
    get_json_schema = pytest.importorskip("transformers.utils").get_json_schema

    def retrieve(preference: str) -> str:
        return preference

    retrieve.__doc__ = tool_docstring()
    assert get_json_schema(retrieve) == TOOL_SCHEMA


# --- hypothesis: any string parses ------------------------------------------------------------------------------

FRAGMENTS = list(ALL_TAGS) + [
    "<|begin_of_", "end_of_item_list|>", "\n", " ", "1. ", "Assistant:", '"', "{", "}", "[", "]", ":", ",",
    '"name"', '"retrieve"', '"arguments"', '"preference"', '"comedy"', "null", "\x00", "é", "🎬", "<", ">",
]  # fmt: skip
tag_soup = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=80).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["name", "arguments", "preference", "x"]), inner, max_size=4)
    ),
    max_leaves=12,
)
json_calls = st.builds(
    lambda v, wrap: f"{TOOL_CALL_OPEN}{json.dumps(v)}{TOOL_CALL_CLOSE}" if wrap else json.dumps(v),
    json_values,
    st.booleans(),
)
huge = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=40), st.integers(1, 2500))
any_text = st.one_of(st.text(), tag_soup, json_calls, huge)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text)
def test_parse_never_raises(text):
    for codec in (TAGS, CHAT):
        action = codec.parse(text)
        assert action.kind in KINDS and action.text == text
        assert 0 <= action.end <= len(text)
        assert action.kind == "tool_call" or not action.calls
        problems = format_problems(text, action.answer_lines if action.kind == "answer" else None, 1, 10, codec)
        assert set(problems) <= set(FORMAT_CHECKS)


def test_clean_text_replaces_surrogates_and_removes_invisible_and_control_characters():
    assert clean_text("a\ud83db") == "a\ufffdb" and clean_text("Amélie 中文 🙂\u2028") == "Amélie 中文 🙂\u2028"
    assert clean_text("x\u200by\u2060z\ufeff\u00ad\u200e\u202e\x00\x07\x85") == "xyz"
    assert clean_text("a\r\nb\rc\td\n") == "a\nb\nc\td\n"
    for invisible in ("\u200b", "\u2060 \ufeff", "\x00\u00ad", '"\u200b"'):
        assert normalize_preference(invisible) == ""  # the empty query
    message = {
        "role": "assistant",
        "content": ["\ud83d", {"type": "text", "text": "a\u200b"}],
        "tool_calls": ({"function": {"name": "retrieve", "arguments": {"pre\u200bference": "\x00x"}}},),
        3: 1.5,
    }
    assert clean_value(message) == {
        "role": "assistant",
        "content": ["\ufffd", {"type": "text", "text": "a"}],
        "tool_calls": [{"function": {"name": "retrieve", "arguments": {"preference": "x"}}}],
        3: 1.5,
    }
    deep: list = ["\ud83d"]
    for _ in range(5000):
        deep = [deep]
    assert clean_value(deep) is not None  # nesting past MAX_CLEAN_DEPTH is cut, never a RecursionError


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_clean_text_output_is_clean_and_cleaning_is_idempotent(text):
    cleaned = clean_text(text)
    cleaned.encode("utf-8")  # raises for an unpaired surrogate
    assert clean_text(cleaned) == cleaned
    assert not any(unicodedata.category(c) in ("Cs", "Cf", "Cc") for c in cleaned.replace("\n", "").replace("\t", ""))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="<"), max_size=60))
def test_rendered_tool_call_always_parses(preference):
    expected = normalize_preference(preference)
    for codec in (TAGS, CHAT):
        action = codec.parse(codec.render_tool_call(preference))
        assert action.kind == "tool_call"  # an empty preference is the empty query
        assert action.preference == expected


def test_equal_titles_follow_retrieval_order_without_duplicates():
    items = [ItemMeta("<pad>"), ItemMeta("Twin", None), ItemMeta("Twin", None), ItemMeta("Other", None)]
    matcher = TitleMatcher(items)
    match = matcher.match_answer(["Twin", "Twin", "Twin"], preferred=[2, 1])
    assert match.item_ids == (2, 1, None) and match.n_duplicate == 1
    assert matcher.match_answer(["Twin"], preferred=[1, 2]).item_ids == (1,)


def test_huge_adversarial_strings():
    soup = (PREF_OPEN + REC_OPEN + "{" + TOOL_CALL_OPEN) * 25_000
    for codec in (TAGS, CHAT):
        start = time.perf_counter()
        assert codec.parse(soup).kind == "malformed"
        format_problems(soup, None, 0, 10, codec)
        assert time.perf_counter() - start < 5.0


# --- rendering --------------------------------------------------------------------------------------------------


def test_render_tool_result_exact():
    assert TAGS.render_tool_result(["A (1995) | X", "B"]) == f"\n{ITEMS_OPEN}\n1. A (1995) | X\n2. B\n{ITEMS_CLOSE}\n\n"
    assert TAGS.render_tool_result([]) == f"\n{ITEMS_OPEN}\nNone\n{ITEMS_CLOSE}\n\n"
    assert CHAT.render_tool_result(["A", "B"]) == "1. A\n2. B"
    assert CHAT.tool_message("1. A") == {"role": "tool", "name": "retrieve", "content": "1. A"}


def test_tags_prompt_layout():
    prompt = TAGS.render_prompt(["Mid (1995)", "New (2000)"], EnvConfig(rec_k=7))
    assert prompt.endswith("Now, let's begin.\nUser:\n1. Mid (1995)\n2. New (2000)\nAssistant:\n<think>\n")
    assert prompt.endswith(PROMPT_END) and prompt.count(PROMPT_END) == 1
    assert "exactly 7 titles" in prompt and PREF_OPEN in prompt and ITEMS_OPEN in prompt and REC_OPEN in prompt
    # the example tags of the prompt are not part of the solution
    assert TAGS.solution(prompt) == ""


def test_chat_prompt_messages():
    messages = CHAT.render_prompt(["A (1990)", "B (1991)"], CFG)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "1. A (1990)\n2. B (1991)" in messages[1]["content"]
    assert REC_OPEN in messages[0]["content"] and "retrieve" in messages[0]["content"]


def test_brief_instructions_state_the_limits_and_keep_the_prompt_layout():
    brief = EnvConfig(rec_k=7, recall_k=5, max_tool_calls=3, instructions="brief")
    full_text = TAGS.render_prompt(["Mid (1995)", "New (2000)"], EnvConfig(rec_k=7))
    text = TAGS.render_prompt(["Mid (1995)", "New (2000)"], brief)
    assert len(text) < len(full_text) / 3
    assert text.endswith("User:\n1. Mid (1995)\n2. New (2000)\nAssistant:\n<think>\n")
    assert "exactly 7 retrieved titles" in text and "at most 3 calls, 5 items each" in text
    assert PREF_OPEN in text and REC_OPEN in text and THINK_CLOSE in text
    assert TAGS.solution(text) == ""
    system = CHAT.render_prompt(["A (1990)"], brief)[0]["content"]
    assert "`retrieve(preference)`" in system and PREF_OPEN not in system


@pytest.mark.parametrize("brief", ["full", "brief"])
@pytest.mark.parametrize("codec", [TAGS, CHAT])
def test_instructions_name_items_by_handle_only_with_handles(codec, brief):
    def system(refs: str) -> str:
        prompt = codec.render_prompt(["A (1990)"], EnvConfig(instructions=brief, item_refs=refs))
        return prompt if codec is TAGS else prompt[0]["content"]

    assert "handle" in system("handles") and "#N" in system("handles") and "titles" not in system("handles")
    assert "handle" not in system("titles") and "#" not in system("titles")


def test_a_request_follows_the_history_in_both_codecs():
    with_requests = EnvConfig(requests=True)
    text = TAGS.render_prompt(["A (1990)"], with_requests, "westerns from the 1960s")
    assert text.endswith(f"1. A (1990)\nMy request: westerns from the 1960s{PROMPT_END}") and "a request" in text
    assert TAGS.render_prompt(["A (1990)"], CFG) == TAGS.render_prompt(["A (1990)"], CFG, "")
    system, user = CHAT.render_prompt(["A (1990)"], with_requests, "a comedy")
    assert user["content"].endswith("\nMy request: a comedy") and "a request" in system["content"]
    assert "request" not in CHAT.render_prompt(["A (1990)"], CFG)[0]["content"]


def test_handles_lead_tool_results_in_both_codecs():
    assert (
        TAGS.render_tool_result(["A (1995)", "B"], ["#3", "#7"])
        == f"\n{ITEMS_OPEN}\n#3 A (1995)\n#7 B\n{ITEMS_CLOSE}\n\n"
    )
    assert CHAT.render_tool_result(["A", "B"], ["#1", "#2"]) == "#1 A\n#2 B"
    with pytest.raises(ValueError):
        CHAT.render_tool_result(["A", "B"], ["#1"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), max_size=80))
def test_item_handles_number_first_retrievals_and_resolve_exactly(retrieved):
    handles = item_handles(retrieved)
    assert list(handles) == list(dict.fromkeys(retrieved))
    assert list(handles.values()) == [f"#{n}" for n in range(1, len(handles) + 1)]
    by_handle = {name: item for item, name in handles.items()}
    for item, name in handles.items():
        assert resolve(name, by_handle) == (item, "")
        assert resolve(f"3. {name} Some Title (1999)", by_handle) == (item, "")
        assert resolve(f"{name}.", by_handle) == (item, "")
    assert resolve(f"#{len(handles) + 1} Heat (1995)", by_handle) == (None, "Heat (1995)")
    assert resolve("#12abc", by_handle) == (None, "#12abc")  # not a handle: matched as a title
    assert resolve("Heat #1", by_handle) == (None, "Heat #1")


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.text(max_size=200), tag_soup),
    st.dictionaries(st.from_regex(r"#[0-9]{1,3}", fullmatch=True), st.integers(1, 9)),
)
def test_handle_parsing_never_raises_and_names_only_known_handles(line, by_handle):
    name, rest = split_handle(line)
    item, title = resolve(line, by_handle)
    assert name is None or (name in line and rest in line)
    assert item is None or (item == by_handle[name] and title == "")
    if name is None:
        assert (item, title) == (None, line)


def test_match_answer_reads_handles_then_titles(matcher):
    lines = ["1. #2", "2. #1 Toy Story", "3. #9 Heat (1995)", "4. #9", "5. Hamlet", "6. #2 Heat"]
    result = matcher.match_answer(lines, handles={"#1": 6, "#2": 8})
    # "#9" names nothing; "#9 Heat (1995)" is the title Heat, already listed as #2, like the last line
    assert result == AnswerMatch((8, 6, None, None, 3, None), n_invalid=1, n_duplicate=2, ranked_ids=(8, 6, 3))
    # without handles the same lines are titles: "#9 Heat (1995)" names nothing, "#2" neither
    assert matcher.match_answer(["#9 Heat (1995)", "#2"]).n_invalid == 2


def test_get_codec():
    assert isinstance(get_codec("tags"), TagsCodec) and get_codec(CHAT) is CHAT
    with pytest.raises(ValueError, match="env.protocol"):
        get_codec("xml")


# --- format checks ----------------------------------------------------------------------------------------------


def tags_transcript(
    calls=("animated family film; 1990s", "crime thriller; heist"),
    final_reasoning="Item A fits best; ranking the pool.\n",
    answer=None,
    middle="The first pool is too childish, look for thrillers. ",
):
    text = TAGS.render_prompt(["Toy Story (1995) | Animation", "Heat (1995) | Action"], CFG)
    text += "The user watches animation and crime films. "
    for i, preference in enumerate(calls):
        text += TAGS.render_tool_call(preference) + TAGS.render_tool_result([f"Pool{i} {j}" for j in range(3)])
        if i < len(calls) - 1:
            text += middle
    text += final_reasoning + THINK_CLOSE + "\n"
    return text + (TAGS.render_answer(TITLES10) if answer is None else answer)


def check(transcript, n_calls, answer=TITLES10, codec=TAGS):
    """The format check of a transcript whose answer the env parsed as `answer` (None: it parsed none)."""
    return format_problems(transcript, answer, n_calls, 10, codec)


def test_well_formed_tags_transcript_passes():
    transcript = tags_transcript()
    assert check(transcript, 2) == []
    assert check(transcript[transcript.index(PROMPT_END) + len(PROMPT_END) :], 2) == []


@pytest.mark.parametrize(
    "transcript, n_calls, problem",
    [
        (tags_transcript(calls=()), 0, PROBLEM_NO_TOOL_CALL),
        (tags_transcript(answer=TAGS.render_answer(TITLES10[:9] + [f"J {PREF_OPEN}"])), 2, PROBLEM_TAGS_IN_ANSWER),
        (
            tags_transcript(answer=TAGS.render_answer([*TITLES10[:9], "x end_of_item_list|>"])),
            2,
            PROBLEM_TAGS_IN_ANSWER,
        ),
        (tags_transcript(final_reasoning=" \n"), 2, PROBLEM_NO_REASONING),
        (
            tags_transcript(answer=TAGS.render_answer(TITLES10) + "\n" + TAGS.render_answer(TITLES10)),
            2,
            PROBLEM_ANSWER_COUNT,
        ),
        (tags_transcript(middle="Hmm.\nAssistant:\nSure, next search. "), 2, PROBLEM_ROLE_TURN),
        (tags_transcript(final_reasoning=f"Done {PREF_OPEN} searching.\n"), 2, PROBLEM_UNBALANCED),
        (tags_transcript(final_reasoning=f"Done {ITEMS_CLOSE} searching.\n"), 2, PROBLEM_UNBALANCED),
        (tags_transcript(), 3, PROBLEM_TOOL_COUNT),
        (tags_transcript(answer=TAGS.render_answer([*TITLES10[:9], "[item title]"])), 2, PROBLEM_PLACEHOLDER),
    ],
)
def test_each_single_violation_is_named(transcript, n_calls, problem):
    assert check(transcript, n_calls) == [problem]


def test_answer_length_counts_the_parsed_answer():
    assert check(tags_transcript(answer=TAGS.render_answer(TITLES10[:9])), 2, TITLES10[:9]) == [PROBLEM_ANSWER_LENGTH]
    # the text's one block has rec_k lines, but the env parsed nine: the parsed answer is what counts
    assert check(tags_transcript(), 2, TITLES10[:9]) == [PROBLEM_ANSWER_LENGTH]


def test_answer_inside_think_and_missing_answer():
    inside = tags_transcript(final_reasoning="Ranking.\n" + TAGS.render_answer(TITLES10) + "\n", answer="")
    assert check(inside, 2) == [PROBLEM_ANSWER_POSITION]
    truncated = tags_transcript(answer="")
    assert check(truncated, 2, None) == [PROBLEM_NO_ANSWER, PROBLEM_ANSWER_COUNT]
    no_think_close = tags_transcript().replace(THINK_CLOSE, "")
    assert check(no_think_close, 2) == [PROBLEM_UNBALANCED, PROBLEM_ANSWER_POSITION]
    # a well-formed block in the text that the env never parsed as an answer (split over segments, cut by a limit)
    assert check(tags_transcript(), 2, None) == [PROBLEM_NO_ANSWER]


def test_hallucinated_tool_result_is_caught():
    fake = f"{PREF_OPEN} comedy {PREF_CLOSE}\n{ITEMS_OPEN}\n1. Made Up\n{ITEMS_CLOSE}\n\nGreat. "
    transcript = tags_transcript(middle=fake)  # the env executed only the 2 real calls
    assert check(transcript, 2) == [PROBLEM_TOOL_COUNT]
    stray_result = tags_transcript(middle=f"{ITEMS_OPEN}\n1. Made Up\n{ITEMS_CLOSE}\n")
    assert PROBLEM_UNBALANCED in check(stray_result, 2)


def test_role_words_inside_tool_results_and_titles_are_fine():
    transcript = tags_transcript().replace("Pool0 1", "The Assistant: A Story")
    assert check(transcript, 2) == []


def chat_messages(final="Ranked by how well each fits.\n", tool_calls=True):
    messages = CHAT.render_prompt(["A (1990)"], CFG)
    if tool_calls:
        messages += [
            {"role": "assistant", "content": "The user likes sci-fi.", "tool_calls": [structured_call("space opera")]},
            CHAT.tool_message(CHAT.render_tool_result(["Star Wars (1977) | Sci-Fi", "Dune (1984) | Sci-Fi"])),
        ]
    messages.append({"role": "assistant", "content": final + CHAT.render_answer(TITLES10)})
    return messages


def test_chat_format_checks():
    messages = chat_messages()
    assert check(messages, 1, codec="chat") == []
    text = CHAT.render_messages(messages)
    assert check(text, 1, codec=CHAT) == []
    assert check(chat_messages(final=""), 1, codec="chat") == [PROBLEM_NO_REASONING]
    assert check(chat_messages(tool_calls=False), 0, codec="chat") == [PROBLEM_NO_TOOL_CALL]
    assert check(chat_messages(final="<think>Ranking. "), 1, codec="chat") == [
        PROBLEM_UNBALANCED,
        PROBLEM_ANSWER_POSITION,
    ]
    assert check(chat_messages(final="<think>Ranking.</think>\n"), 1, codec="chat") == []
    assert check(messages, 1, None, "chat") == [PROBLEM_NO_ANSWER]


# --- title matching ---------------------------------------------------------------------------------------------

META = [
    ItemMeta("<pad>"),
    ItemMeta("Toy Story", 1995, ("Animation", "Children's")),  # 1
    ItemMeta("Toy Story & Friends", 2001, ("Animation",)),  # 2
    ItemMeta("Hamlet", 1990, ("Drama",)),  # 3
    ItemMeta("Hamlet", 1996, ("Drama",)),  # 4
    ItemMeta("American President, The", 1995, ("Comedy", "Romance")),  # 5
    ItemMeta("Shawshank Redemption, The", 1994, ("Drama",)),  # 6
    ItemMeta("Toy Story 2", 1999, ("Animation",)),  # 7
    ItemMeta("Heat", 1995, ("Action",)),  # 8
    ItemMeta("Seven (a.k.a. Se7en)", 1995, ("Thriller",)),  # 9
    ItemMeta("Pokemon Snap (2000)", None, ()),  # 10: a product title with its year inside
]


@pytest.fixture(scope="module")
def small():
    return RecDataset("small", META, [np.array([1, 2, 3])], ["u"], [""] + [str(i) for i in range(1, len(META))])


@pytest.fixture(scope="module")
def matcher(small):
    return TitleMatcher(small)


@pytest.mark.parametrize(
    "line, item",
    [
        ("toy story", 1),
        ("Toy Story (1995)", 1),
        ("TOY-STORY", 1),
        ("3. Toy Story", 1),
        ("**Toy Story**", 1),
        ("Toy Story (1995) | Animation", 1),
        ("Toy Story (1995) | Animation, Children's", 1),
        ("Toy Story &amp; friends", 2),
        ("Toy Story and Friends (2001)", 2),
        ("The American President", 5),
        ("American President, The (1995)", 5),
        ("The Shawshank Redemption (1994)", 6),
        ("Seven", 9),
        ("Seven (a.k.a. Se7en) (1995)", 9),
        ("Pokemon Snap", 10),
        ("Pokémon Snap (2000)", 10),  # accents are not folded, the fuzzy match (ratio 91.7) finds it
        ("Heat (1995) - a tense crime epic", 8),
        ("The Shawshank Rede…", 6),  # a cut card copied
        ("Shawshank Redemtion", 6),  # fuzzy near miss
        ("asdfgh", None),
        ("", None),
        ("Toy Story 3", None),  # sequel numbers never fuzzily change
        ("Toy Story 2", 7),
        ("Shawshank Redemption", 6),  # the trailing article dropped
        ("American President", 5),
        ("Heta", None),  # too short for a fuzzy match
    ],
)
def test_title_matching(matcher, line, item):
    assert matcher.match(line) == item


def test_titles_longer_than_a_line_match_themselves():
    # three Games titles are longer than MAX_LINE_CHARS; the cut line names them as a prefix, like a cut card
    long_title = "Sentey Gaming Headset " + " / ".join(f"Feature {i} with a long description" for i in range(20))
    twin = long_title.replace("Feature 2 with", "Feature two with")
    assert len(long_title) > MAX_LINE_CHARS
    items = [ItemMeta("<pad>"), ItemMeta(long_title), ItemMeta(twin), ItemMeta("Sentey Gaming Headset")]
    long_matcher = TitleMatcher(items)
    assert long_matcher.match(long_title) == 1
    assert long_matcher.match(f"1. {twin}", preferred={1}) == 2
    assert long_matcher.match("Sentey Gaming Headset") == 3


def test_a_title_with_bars_is_named_and_matched_whole():
    # Games has titles like "Wii U Pro Controller Gamepad | Black | Wireless": an agent names the whole title
    bars = ItemMeta("Wii U Pro Controller | Black | Wireless", 2014, ("Accessories",))
    items = [ItemMeta("<pad>"), bars, ItemMeta("Wii U Pro Controller", 2012, ("Accessories",))]
    catalogue = RecDataset("wii", items, [np.array([1, 2])], ["u"], ["", "1", "2"])
    agent = RandomAgent(catalogue, protocol="chat")
    assert agent.title(1) == "Wii U Pro Controller | Black | Wireless (2014)"
    matcher = TitleMatcher(catalogue)
    assert matcher.match(agent.title(1)) == 1
    assert matcher.match(catalogue.item_card(1)) == 1
    assert matcher.match(agent.title(2)) == 2


def test_a_cut_card_names_the_title_it_begins_before_a_shorter_cut():
    items = [ItemMeta("<pad>"), ItemMeta("Halo 5: Guardians"), ItemMeta("Halo 5: Guardians - Collector's Edition")]
    catalogue = RecDataset("halo", items, [np.array([1, 2])], ["u"], ["", "1", "2"])
    cut_matcher = TitleMatcher(catalogue)
    assert item_cards(catalogue, [2], 34) == ["Halo 5: Guardians - Collector's…"]
    assert cut_matcher.match("Halo 5: Guardians - Collector's…") == 2
    assert cut_matcher.match("Halo 5: Guardians -…", preferred=[2]) == 2
    assert cut_matcher.match("Halo 5: Guardians - a remark") == 1


def test_transposition_typo_needs_a_lower_threshold(small, matcher):
    # "toy stroy" vs "toy story": one transposition = two indels in 18 characters, rapidfuzz ratio 88.9
    assert matcher.match("Toy Stroy") is None
    assert TitleMatcher(small, fuzzy_threshold=85).match("Toy Stroy") == 1
    assert TitleMatcher(small, fuzzy_threshold=85).match("Toy Stroy", preferred={7}) == 1


def test_equal_titles_prefer_retrieved_then_year_then_lowest_id(matcher):
    assert matcher.match("Hamlet") == 3
    assert matcher.match("Hamlet (1996)") == 4
    assert matcher.match("Hamlet", preferred={4}) == 4
    assert matcher.match("Hamlet (1990)", preferred=[4]) == 4  # retrieved in the episode beats the year
    assert matcher.match("Hamlet (1990)", preferred={3, 4}) == 3
    assert matcher.match("Hamlet (2005)") == 3


def test_match_answer_counts_invalid_and_duplicates(matcher):
    lines = ["1. Toy Story", "2. toy story (1995)", "3. asdfgh", "4. Heat", "5. Hamlet", "6. HEAT"]
    result = matcher.match_answer(lines, preferred={4})
    assert result == AnswerMatch((1, None, None, 8, 4, None), n_invalid=1, n_duplicate=2, ranked_ids=(1, 8, 4))
    assert matcher.match_answer([]) == AnswerMatch((), 0, 0, ())


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=300), tag_soup))
def test_matcher_never_raises(text):
    small_matcher = TitleMatcher(META)
    item = small_matcher.match(text, preferred={1, 3, 99, -5})
    assert item is None or 1 <= item < len(META)


def test_matching_on_a_17k_catalogue():
    # latency is measured by `python -m experiments.bench "bench.tasks=[title_matching]"`, not here
    rng = random.Random(0)
    words = [f"{a}{b}" for a in ("star", "moon", "dark", "red", "lost", "city", "love", "war") for b in
             ("fall", "light", "night", "river", "storm", "heart", "road", "game", "house", "dream")]  # fmt: skip
    titles = sorted({" ".join(rng.sample(words, rng.randint(2, 4))).title() for _ in range(40_000)})[:17_000]
    items = [ItemMeta("<pad>")] + [ItemMeta(t, 1950 + i % 70, ("Drama",)) for i, t in enumerate(titles)]
    big = TitleMatcher(items)
    preferred = set(rng.sample(range(1, len(items)), 160))
    picks = rng.sample(range(1, len(items)), 6)
    lines = [f"{i}. {titles[p - 1]} ({1950 + (p - 1) % 70})" for i, p in enumerate(picks[:3], 1)]
    lines += [titles[p - 1][:-2] + titles[p - 1][-1] for p in picks[3:]]  # one deleted letter -> fuzzy
    lines += ["asdfgh qwerty", "Completely Unknown Movie", "Starlight Riverroad Lovegame Extra", "x"]
    result = big.match_answer(lines, preferred)
    assert result.ranked_ids == tuple(picks)
    assert result.n_invalid == 4


# --- item cards -------------------------------------------------------------------------------------------------


def test_item_cards(small):
    assert item_cards(small, [1, 0, 10], 80) == ["Toy Story (1995) | Animation, Children's", "Pokemon Snap (2000)"]
    assert item_cards(small, np.array([5]), 30) == ["American President, The…"]
