"""The system instructions of both codecs, full (a paraphrase of the paper's `base_prompt_rec`) or brief (the task
alone, for small policies that learn the protocol from demonstrations), and the history listing. With item handles
(`item_refs: handles`) they say that results lead each item with its handle and that answers name items by it; with
the RecGPT options (`interests`, `explanations`) they ask for the interest block and a reason per answer line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from deeprec_env.protocol.interests import INTERESTS_CLOSE, INTERESTS_OPEN
from deeprec_env.protocol.reasons import REASON_SEPARATOR
from deeprec_env.protocol.tags import ITEMS_CLOSE, ITEMS_OPEN, PREF_CLOSE, PREF_OPEN, REC_CLOSE, REC_OPEN, THINK_CLOSE
from deeprec_env.protocol.text import numbered
from deeprec_env.protocol.tool import TOOL_NAME

INSTRUCTIONS = ("full", "brief")
REQUEST_LEAD = "My request: "  # leads the user's request in the prompt (env.requests)
REQUEST_NOTE = "The user may add a request in their own words; it can help, say nothing, or point elsewhere."
REQUEST_HANDLE = "#request"  # with item handles, names the user's request in a preference (env.requests)
REQUEST_HANDLE_NOTE = f"A preference may name the request by {REQUEST_HANDLE}."
PROFILE_LEAD = "About me: "  # leads the user's profile card in the prompt (env.profile)
INTERESTS_NOTE = (
    f"Before your first tool call, state the user's interests as weighted tags (weights sum to 1), over the whole "
    f"history and over the recent items: {INTERESTS_OPEN}\nlong term: tag weight; tag weight\nrecent: tag weight\n"
    f"{INTERESTS_CLOSE}"
)
EXPLANATIONS_NOTE = (
    f'After each answer item write "{REASON_SEPARATOR.strip()}" and one sentence on why it suits this user.'
)


class PromptSettings(Protocol):
    """What the instructions mention (the env config has these fields)."""

    rec_k: int
    recall_k: int
    max_tool_calls: int
    instructions: str
    item_refs: str
    new_results: bool
    requests: bool
    interests: bool
    explanations: bool


def history_listing(history_cards: Sequence[str]) -> str:
    """The numbered history, oldest first, or a note that there is none."""
    return numbered(history_cards) if history_cards else "(no interactions yet)"


def request_notes(settings: PromptSettings) -> str:
    """What the instructions say about the user's request (empty without `requests`); with item handles, that a
    preference can name it by its handle."""
    if not settings.requests:
        return ""
    return f" {REQUEST_NOTE}" + (f" {REQUEST_HANDLE_NOTE}" if settings.item_refs == "handles" else "")


def recgpt_notes(settings: PromptSettings) -> str:
    """What the RecGPT options ask of the agent, one sentence each (empty without them)."""
    notes = [INTERESTS_NOTE] * settings.interests + [EXPLANATIONS_NOTE] * settings.explanations
    return "".join(f" {note}" for note in notes)


def instructions(kind: str, settings: PromptSettings) -> str:
    """The system instructions for codec `kind` ("tags" | "chat")."""
    k = settings.rec_k
    handles = settings.item_refs == "handles"
    new = ", none an earlier call returned" if settings.new_results else ""
    if settings.instructions == "brief":
        phrases = 'short preference phrases separated by ";"'
        if kind == "tags":
            how, close = (
                f"write {phrases} between {PREF_OPEN} and {PREF_CLOSE}",
                f"close your reasoning with {THINK_CLOSE}, then ",
            )
        else:
            how, close = f"call `{TOOL_NAME}(preference)` with {phrases}", ""
        return (
            f"Recommend {k} items the user will enjoy next. To find items, {how} (at most {settings.max_tool_calls} "
            f"calls, {settings.recall_k} items each{new}). Finally {close}answer exactly {k} retrieved "
            f"{'items by their handles (#N)' if handles else 'titles'}, best first, numbered, in {REC_OPEN} "
            f"{REC_CLOSE}." + request_notes(settings) + recgpt_notes(settings)
        )
    first, second = ("#1", "#2") if handles else ("1.", "2.")
    returns = "a list of items, one per line, each led by its handle (#N)" if handles else "a numbered list of items"
    if kind == "tags":
        tool = (
            "The tool input format (you write it):\n"
            f"{PREF_OPEN} [preference phrases, separated by ;] {PREF_CLOSE}\n"
            "The tool output format (the tool writes it right after your call):\n"
            f"{ITEMS_OPEN}\n{first} [retrieved item]\n{second} [retrieved item]\n...\n{ITEMS_CLOSE}"
        )
        call = "write the preference description between the preference tags"
        layout = (
            "Write your whole reply in this layout: reasoning, a tool call, the tool's result, an evaluation and "
            "refinement, more tool calls, then the final ranking reasoning; close the reasoning with "
            f"{THINK_CLOSE} and finish with the recommendation list."
        )
    else:
        tool = (
            f"The tool is the function `{TOOL_NAME}(preference)`: the preference is a description made of short "
            f'phrases separated by ";". It returns {returns}.'
        )
        call = f"call `{TOOL_NAME}` with the preference description"
        layout = "Write a short ranking reasoning, then finish your last message with the recommendation list."
    if handles:
        listed = 'Items are written as "Title (year) | category, category" (year and categories when known), each '
        listed += "led in tool results by its handle (#N): an item keeps its handle for the whole episode.\n"
        output = (
            f"6. Output exactly {k} items, best first, one per line, each named by its handle from the tool results:\n"
            f"{REC_OPEN}\n1. [item handle]\n2. [item handle]\n...\n{k}. [item handle]\n{REC_CLOSE}\n\n"
        )
    else:
        listed = 'Items are written as "Title (year) | category, category" (year and categories when known).\n'
        output = (
            f"6. Output exactly {k} titles, best first, one per line, copied from the tool results (title and year, "
            "without the categories):\n"
            f"{REC_OPEN}\n1. [item title]\n2. [item title]\n...\n{k}. [item title]\n{REC_CLOSE}\n\n"
        )
    return (
        "You are a recommendation assistant. Predict which item the user will interact with next and recommend a "
        f"ranked list of {k} items.\n"
        "You cannot see the item catalogue: to find candidate items you must call an item retrieval tool. The tool "
        "takes a description of the user's preferences and returns the catalogue items "
        f"({settings.recall_k} per call{new}) that best match both the user's history and the description.\n"
        f"{tool}\n"
        f"{listed}"
        "The user's history is a numbered list of the items the user interacted with, ordered by time, oldest "
        f"first.{request_notes(settings)}\n\n"
        "Instructions:\n"
        "1. Reason about the history: which categories, themes, moods and periods the user likes, and how the "
        "taste changes over time.\n"
        f'2. Describe one preference as a few short phrases separated by ";" and {call}.\n'
        f"3. Call the tool several times (at most {settings.max_tool_calls}) with varied preference descriptions "
        "that cover different sides of the user's taste. Quality over quantity: keep exploring with new descriptions "
        "even after you have found good items.\n"
        "4. After each call, judge the retrieved items and refine the next description.\n"
        "5. When you have gathered a diverse pool of retrieved items, rank all of them for this user.\n"
        f"{output}{layout}{recgpt_notes(settings)}"
    )
