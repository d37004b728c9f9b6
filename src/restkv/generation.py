"""Greedy generation with a press, for users and the CLI.

Decoding runs restkv's own loop (:func:`restkv.decoding.greedy`, with :class:`CacheStep` as
its step) rather than ``model.generate``, so that the timings it reports separate prefill (where
the press acts) from decoding, and so that decoding runs on exactly the cache the press left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .cache import cache_entries, select_rows
from .checks import check_int
from .decoding import StopRule, greedy
from .plan import STEP_KEYWORD, PrefillPlan
from .press import KVPress
from .probes import probe_for
from .state import ensure_state, get_state
from .static_decode import check_compile, decodes_static, static_greedy
from .window import question_window


@dataclass
class GenerationResult:
    """A generation and what it cost."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    kept_entries: int  # KV entries (tokens x KV heads) stored over all layers after prefill
    full_entries: int  # what the full cache would have stored
    prefill_s: float
    decode_ms_per_token: float


def eos_ids(tokenizer, model=None) -> set[int]:
    """End tokens: the tokenizer's and the model's generation config's (instruct models often add one)."""
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        ids.update(source if isinstance(source, list) else [source])
    return ids - {None}


def encode_prompt(tokenizer, prompt: str, chat: bool = True, answer_prefix: str = "") -> torch.Tensor:
    """Token ids ``[1, n]`` of ``prompt``, through the chat template when asked and available.

    ``answer_prefix`` is appended after the template's generation prompt (or after the plain
    prompt), so the model's answer continues it.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty")
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text + answer_prefix, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt + answer_prefix, return_tensors="pt")["input_ids"]


@torch.inference_mode()
def prefill(
    model,
    input_ids: torch.Tensor,
    cache,
    chunk_size: int | None = None,
    progress: bool = False,
    question_tokens: int = 0,
    probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the prompt through ``model`` into ``cache``; returns the last position's logits ``[b, vocab]``.

    With ``chunk_size`` the prompt is fed ``chunk_size`` tokens at a time; inside a press block
    every chunk is compressed back to the budget before the next one, so memory stays bounded
    whatever the prompt length. With ``question_tokens`` (the prompt's last tokens, its
    question), the question is kept out of the chunks: it follows each chunk as a probe whose
    queries choose what that chunk leaves behind, and is fed for real after the last chunk
    (:class:`restkv.plan.PrefillPlan` lays the forwards out; each carries its step to the
    press's hooks). Positions come from the press's state (they differ from token counts once
    keys are re-indexed). Only the last position's logits are computed: a full
    ``[n, vocab]`` logits tensor would dominate memory at long contexts. ``probe``: tokens fed
    after the prompt in the same forward whose queries are the observation window, then removed
    (the logits returned are still the prompt's last position's).
    """
    plan = PrefillPlan(chunk_size, question_tokens, probe)
    forwards = plan.forwards(input_ids)
    count = plan.count(input_ids.shape[1])
    if progress and count > 1:
        from tqdm.auto import tqdm

        forwards = tqdm(forwards, total=count, desc="prefill", unit="chunk")
    logits = None
    for ids, start, step in forwards:
        # only the last prompt position's logits (before a probe): its index, or the last one
        keep = torch.tensor([ids.shape[1] - step.probe - 1], device=ids.device) if step.probe else 1
        logits = forward_step(model, cache, ids, start, logits_to_keep=keep, **{STEP_KEYWORD: step})
    return logits[:, -1]


def next_positions(cache, start: int, length: int, rows: int, device) -> torch.Tensor:
    """Position ids ``[rows, length]`` of the next tokens: from the press's state when it has one
    (compressed or re-indexed caches), else counted from ``start``."""
    state = get_state(cache)
    first = state.next_pos[:, None] if state is not None and state.next_pos is not None else start
    return (first + torch.arange(length, device=device)).expand(rows, -1)


def forward_step(model, cache, ids: torch.Tensor, start: int, **kwargs):
    """One forward of ``ids`` into ``cache`` at the next positions (see :func:`next_positions`); its logits."""
    positions = next_positions(cache, start, ids.shape[1], ids.shape[0], ids.device)
    return model(input_ids=ids, cache=cache, position_ids=positions, use_cache=True, **kwargs).logits


@torch.inference_mode()
def greedy_decode(
    model,
    input_ids: torch.Tensor,
    press: KVPress | None,
    max_new_tokens: int,
    eos_ids=(),
    window: int | None = None,
    progress: bool = False,
    cache=None,
    compile: bool | str = False,
    probe: torch.Tensor | None = None,
):
    """Prefill ``input_ids`` under ``press`` (in chunks if the press has ``chunk_size``), then
    decode greedily. Returns the new ids, the KV entries kept, prefill seconds and decode ms/token.

    ``compile``: ``True`` decodes on static buffers through ``torch.compile`` (the first call per
    buffer size compiles, which takes a while; see :mod:`restkv.static_decode`), ``"static"`` on
    static buffers without compiling, ``False`` in the eager loop on the cache itself. A cache
    that cannot be made static decodes eagerly, with a warning that says why.

    ``window`` is the prompt's observation window for presses with ``window_size="auto"``
    (with ``chunk_size`` as well, those last tokens are the question that probes each chunk).
    ``cache``: an empty cache to fill (default: a new ``DynamicCache``), for callers that read
    it afterwards, e.g. with :func:`restkv.origins.track_origins` on. ``probe``: the tokens of the
    press's reconstruction probe (:func:`restkv.probes.probe_for`), when it has one.
    """
    press = press or KVPress(None)
    input_ids = input_ids.to(model.device)
    cache = DynamicCache(config=model.config) if cache is None else cache
    if window is not None:
        ensure_state(cache).window = window
    n = input_ids.shape[1]
    with press(model):
        start = time.perf_counter()
        question = window if press.question_aware and window is not None else 0
        logits = prefill(model, input_ids, cache, press.chunk_size, progress, question, probe)
        prefill_s = time.perf_counter() - start
        kept = cache_entries(cache)
        generated, decode_ms = decode(model, cache, logits, n, max_new_tokens, eos_ids, press, compile)
    return generated, kept, prefill_s, decode_ms


class CacheStep:
    """The eager decoding step on a cache, for :func:`restkv.decoding.greedy`: one forward of a
    token per row at the next positions (see :func:`next_positions`; ``start``, the tokens seen
    so far, counts on from there with every call when no press keeps positions). Run it inside
    the press block that filled the cache, so its hooks mask and evict."""

    def __init__(self, model, cache, start: int):
        self.model, self.cache, self.start, self.calls = model, cache, start, 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        logits = forward_step(self.model, self.cache, ids.to(self.model.device), self.start + self.calls)[:, -1]
        self.calls += 1
        return logits

    def drop_rows(self, keep: list[int]) -> bool:
        """Keep only batch rows ``keep`` of the cache (:func:`restkv.cache.select_rows`)."""
        return select_rows(self.cache, keep)


@torch.inference_mode()
def decode(
    model, cache, logits: torch.Tensor, start: int, max_new_tokens: int, eos_ids=(), press=None, compile=False
) -> tuple[list[int], float]:
    """Greedy tokens from the next-token ``logits`` ``[1, vocab]`` of a filled ``cache`` (inside the
    press block that filled it); returns the tokens and decode ms per token. ``start``: tokens
    seen so far (used only when no press keeps positions). ``press`` and ``compile``: see
    :func:`greedy_decode` (with static buffers the given ``cache`` is left as prefill left it)."""
    check_compile(compile)
    stop = StopRule(max_new_tokens, eos_ids)
    if decodes_static(compile, cache, press, max_new_tokens):
        done = static_greedy(model, cache, logits, stop, press, compile is True)
    else:
        done = greedy(CacheStep(model, cache, start), logits, stop)
    return done.tokens[0], done.ms_per_step


def full_cache_entries(model, n: int) -> int:
    """Entries a full cache holds for ``n`` tokens (sliding layers counted at their window)."""
    config = getattr(model.config, "text_config", None) or model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    window = getattr(config, "sliding_window", None) or n
    return sum(kv_heads * (min(n, window) if t == "sliding_attention" else n) for t in layer_types)


def generate_with_stats(
    model,
    tokenizer,
    prompt: str,
    press: KVPress | None = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    progress: bool = False,
    compile: bool | str = False,
) -> GenerationResult:
    """Like :func:`generate`, with prompt length, kept entries and timings (``progress``: a bar
    over the chunks of a chunked prefill; ``compile``: see :func:`greedy_decode`)."""
    check_int("max_new_tokens", max_new_tokens, 1)
    input_ids = encode_prompt(tokenizer, prompt, chat)
    window = None
    if press is not None and press.window_range is not None:
        window = question_window(tokenizer, prompt, chat, "", *press.window_range)
    stop = eos_ids(tokenizer, model)
    ids, kept, prefill_s, decode_ms = greedy_decode(
        model, input_ids, press, max_new_tokens, stop, window, progress, compile=compile,
        probe=probe_for(press, tokenizer, input_ids),
    )  # fmt: skip
    text = tokenizer.decode([t for t in ids if t not in stop], skip_special_tokens=True)
    n = input_ids.shape[1]
    return GenerationResult(text, ids, n, kept, full_cache_entries(model, n), prefill_s, decode_ms)


def generate(
    model,
    tokenizer,
    prompt: str,
    press: KVPress | None = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    compile: bool | str = False,
) -> str:
    """Answer ``prompt`` greedily with ``press`` applied at prefill; returns the new text.

    Args:
        model: a Hugging Face causal LM.
        tokenizer: its tokenizer.
        prompt: the user's text (wrapped in the chat template when ``chat`` and the tokenizer
            has one).
        press: e.g. ``RestKVPress(budget=128)``; None keeps the full cache.
        max_new_tokens: stop after this many tokens (or at end of sequence).
        compile: decode on static buffers compiled with ``torch.compile`` (``True``; the first
            call compiles, minutes on a small CPU), on static buffers alone (``"static"``), or in
            the eager loop (``False``); see :func:`greedy_decode`.
    """
    return generate_with_stats(model, tokenizer, prompt, press, max_new_tokens, chat, compile=compile).text
