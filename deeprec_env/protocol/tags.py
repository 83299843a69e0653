"""The protocol's fixed strings: the paper's tags (plain text, never added tokenizer specials), the chat codec's
tool-call tags, and the strings an answer or a prompt must never carry."""

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PREF_OPEN = "<|begin_of_preference|>"
PREF_CLOSE = "<|end_of_preference|>"
ITEMS_OPEN = "<|begin_of_item_list|>"
ITEMS_CLOSE = "<|end_of_item_list|>"
REC_OPEN = "<recommendation_list>"
REC_CLOSE = "</recommendation_list>"
# Chat codec: Qwen2.5 / Hermes style tool calling, as the common chat templates render it.
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

ALL_TAGS = (
    THINK_OPEN, THINK_CLOSE, PREF_OPEN, PREF_CLOSE, ITEMS_OPEN, ITEMS_CLOSE, REC_OPEN, REC_CLOSE,
    TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE,
)  # fmt: skip
# Substrings that must never appear inside an answer (the paper checks the tag cores, so "<|begin_of_item_list"
# without its closing bar still counts).
TAG_CORES = (
    "begin_of_preference", "end_of_preference", "begin_of_item_list", "end_of_item_list", "<think>", "</think>",
    "recommendation_list>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
)  # fmt: skip
# The tags prompt ends with this; the "solution" (what the agent wrote) is the text after its first occurrence.
PROMPT_END = "\nAssistant:\n" + THINK_OPEN + "\n"
# Placeholder strings of the prompts; an agent that copies one into its text fails the format check.
PLACEHOLDERS = ("[preference phrases", "[retrieved item", "[item title", "[item handle")
EMPTY_RESULT = "None"  # the tool result body when retrieval returns nothing (the paper writes the literal None)
