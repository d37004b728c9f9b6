"""The question-aware observation window (``window_size="auto"``).

A fixed 32-token window at the end of a short chat prompt is mostly haystack tail plus the
chat template; the queries that know what matters are the question's. The auto window starts
at the question and runs to the end of the prompt (generation prompt and any answer prefix
included), clipped to ``[low, high]`` tokens.

The question is the last non-empty line of the user's text; if that line alone is longer than
``high`` tokens, its last sentence. Token positions come from the tokenizer's offsets, so this
works for any chat template and for plain completion prompts alike.
"""

from __future__ import annotations

import re

AUTO = "auto"
DEFAULT_RANGE = (8, 64)


def question_start(text: str, count_tokens=None, high: int = 64) -> int:
    """Character index in ``text`` where its question (last line, or last sentence) starts."""
    stripped = text.rstrip()
    line_start = stripped.rfind("\n") + 1
    line = stripped[line_start:]
    if count_tokens is not None and count_tokens(line) > high:
        sentences = [m.start() for m in re.finditer(r"(?<=[.?!])\s+\S", line)]
        if sentences:
            return line_start + sentences[-1] + 1
    return line_start


def question_tokens(
    tokenizer, prompt: str, chat: bool, answer_prefix: str = "", high: int = 64, question_at: int | None = None
) -> int:
    """How many of the last tokens of ``prompt``, as :func:`restkv.generation.encode_prompt`
    encodes it, are its question and what follows it (template, answer prefix); unclipped.

    ``question_at``: the character in ``prompt`` where the question starts, when the caller
    knows it; otherwise :func:`question_start` finds it (``high`` only decides when an overlong
    last line is cut to its last sentence).
    """
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        text, specials = text + answer_prefix, False
        user_at = text.rfind(prompt)
    else:
        text, specials = prompt + answer_prefix, True
        user_at = 0
    user = prompt if user_at >= 0 else text
    if question_at is None:
        question_at = question_start(user, lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]), high)
    start_char = max(user_at, 0) + question_at
    encoded = tokenizer(text, add_special_tokens=specials, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    first = next((i for i, (a, b) in enumerate(offsets) if b > start_char and b > a), len(offsets) - 1)
    return len(offsets) - first


def question_window(tokenizer, prompt: str, chat: bool, answer_prefix: str = "", low: int = 8, high: int = 64) -> int:
    """Observation window in tokens for ``prompt`` as :func:`restkv.generation.encode_prompt` encodes it."""
    return max(low, min(high, question_tokens(tokenizer, prompt, chat, answer_prefix, high)))
