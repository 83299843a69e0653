"""The agent's one tool, `retrieve(preference)`: its schema (the single description every consumer reads), the
definition of a tool call shared by the environment and the TRL adapter, and chat-message helpers.

A tool call names `retrieve` and passes exactly one argument, `preference`, a string. The chat codec reads calls
from `<tool_call>{json}</tool_call>` blocks as Qwen2.5-style chat templates render them (and as TRL parses them back
with the tokenizer's response template) or from the structured `tool_calls` of a message; a call that names another
tool or passes other arguments is a failed call: it runs nothing and its result is an error message, as in TRL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deeprec_env.protocol.tags import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from deeprec_env.protocol.text import normalize_preference

TOOL_NAME = "retrieve"
TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Retrieve items matching a preference description.",
        "parameters": {
            "type": "object",
            "properties": {
                "preference": {
                    "type": "string",
                    "description": "Short preference phrases separated by ';', e.g. \"light-hearted comedy; 1990s; "
                    'animation".',
                }
            },
            "required": ["preference"],
        },
        "return": {
            "type": "string",
            "description": 'A numbered list of matching items, one "Title (year) | categories" card per line.',
        },
    },
}


def tool_docstring(schema: Mapping[str, Any] = TOOL_SCHEMA) -> str:
    """The Google-style docstring from which `transformers.utils.get_json_schema` (what TRL reads from a tool
    function) derives `schema` back: give it to a function named after the tool to hand the tool to TRL."""
    function = schema["function"]
    properties = function["parameters"]["properties"]
    args = "\n".join(f"    {name}: {spec['description']}" for name, spec in properties.items())
    return f"{function['description']}\n\nArgs:\n{args}\n\nReturns:\n    {function['return']['description']}\n"


@dataclass(frozen=True)
class ToolRequest:
    """One tool call an agent asked for: its normalised preference, or (`error`) why it cannot run."""

    preference: str = ""
    error: str = ""

    @property
    def runs(self) -> bool:
        return not self.error


def tool_request(name: Any, arguments: Any) -> ToolRequest:
    """The request of a call of tool `name` with `arguments` (a mapping, or a JSON string of one)."""
    if name != TOOL_NAME:
        return ToolRequest(error=f"unknown tool {str(name)[:40]!r}")
    if isinstance(arguments, str):  # some templates serialise the arguments as a JSON string
        arguments, error = loads_json(arguments)
        if error:
            return ToolRequest(error="bad JSON arguments")
    if not isinstance(arguments, Mapping):
        return ToolRequest(error="arguments are not an object")
    if set(arguments) != {"preference"}:
        return ToolRequest(error=f"{TOOL_NAME} takes exactly one argument, preference")
    if not isinstance(arguments["preference"], str):
        return ToolRequest(error="preference is not a string")
    return ToolRequest(normalize_preference(arguments["preference"]))


def structured_call(preference: str) -> dict[str, Any]:
    """A structured `tool_calls` entry calling the tool, as chat templates and TRL write it."""
    return {"type": "function", "function": {"name": TOOL_NAME, "arguments": {"preference": preference}}}


def requests_of_message(message: Mapping[str, Any]) -> tuple[ToolRequest, ...]:
    """The requests of a message's structured `tool_calls` (empty when it has none)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        return ()
    requests = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            requests.append(ToolRequest(error="tool call is not an object"))
            continue
        requests.append(tool_request(function.get("name"), function.get("arguments", {})))
    return tuple(requests)


def loads_json(text: str) -> tuple[Any, str]:
    """(decoded value, "") or (None, "bad JSON")."""
    try:
        return json.loads(text), ""
    except (ValueError, RecursionError):
        return None, "bad JSON"


def content_text(content: Any) -> str:
    """A message content as text: a string, or a list of parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, Sequence) and not isinstance(content, str):
        return "".join(_as_text(p.get("text", "")) if isinstance(p, Mapping) else _as_text(p) for p in content)
    return _as_text(content)


def _as_text(value: Any) -> str:
    """`value` as a string; "" for an object whose `__str__` fails (an agent's message may hold anything)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        return ""


def render_assistant_message(message: Mapping[str, Any] | Any) -> str:
    """An assistant message as the chat template writes it: its content, then a `<tool_call>` block per structured
    call."""
    if not isinstance(message, Mapping):
        return str(message)
    parts = [content_text(message.get("content"))]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, Sequence) and not isinstance(calls, str) else ():
        function = call.get("function", call) if isinstance(call, Mapping) else {}
        function = function if isinstance(function, Mapping) else {}
        try:
            payload = {"name": function.get("name"), "arguments": function.get("arguments", {})}
            body = json.dumps(payload, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            body = "{}"
        parts.append(f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}")
    return "\n".join(p for p in parts if p)
