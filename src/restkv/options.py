"""Which options combine: one table of rules, checked once where a setting is built.

Every rule says what an option does not combine with, where that matters, and the one sentence
a user gets. The rules are checked when the thing that would break is built, never later:

* ``press``: when a press is built (:class:`restkv.press.KVPress`);
* ``quantized cache``: when a press meets a quantized cache (a prefill into one, or an engine
  built with ``kv_quant``);
* ``compiled decoding``: when decoding on static buffers is asked for; a cache that cannot be
  made static decodes in the eager loop, with a warning that gives the rule's sentence;
* ``serving``: when ``restkv serve`` or a request names a press;
* ``query-agnostic``: when a context is compressed before its question is known.

:func:`combination_table_markdown` renders the table for the documentation, so the page and
the checks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers.cache_utils import DynamicLayer

from ._compat.transformers_layers import BaseQuantizedLayer
from .adapters import attention_modules, is_sliding
from .blocks import min_block_budget
from .cache import VarlenLayer
from .state import get_state

#: where a rule is checked, in the order the documentation lists them
PLACES = ("press", "quantized cache", "compiled decoding", "serving", "query-agnostic")


@dataclass(frozen=True)
class Rule:
    """One combination that is refused (or, for compiled decoding, decoded eagerly).

    ``breaks(press, context)`` says whether ``press`` breaks the rule; ``context`` holds what
    else the place knows (a ``cache`` being decoded, the ``model`` being served). ``message``
    is the sentence the user gets (a function of the press when it quotes the press's values);
    ``why`` is the reason in a few words, for the documentation's table.
    """

    place: str
    option: str
    clash: str
    why: str
    breaks: Callable[[object, dict], bool]
    message: str | Callable[[object], str]

    def sentence(self, press) -> str:
        """The sentence a user gets when ``press`` breaks this rule."""
        return self.message(press) if callable(self.message) else self.message


def _method(press) -> bool:
    return press is not None and press.scorer is not None


def _window(press) -> int:
    return press.scorer.window_size


def _adakv(press) -> bool:
    return press.allocator == "adakv"


def _block_floor(press) -> int:
    return min_block_budget(_window(press), press.block_size)


def _block_clash(name: str, on: Callable[[object], bool]) -> Rule:
    return Rule(
        "press", "block_size", name, "block-aligned selection is built for one compression at prefill",
        lambda p, c: p.block_size is not None and _method(p) and on(p),
        f"block_size (block-aligned selection at prefill) does not combine with {name} yet",
    )  # fmt: skip


def _layers(context) -> list:
    cache = context.get("cache")
    return list(cache.layers) if cache is not None else []


def _layer_kind(context, kind: str) -> bool:
    if kind == "varlen":
        return any(isinstance(layer, VarlenLayer) for layer in _layers(context))
    if kind == "quantized":
        return any(isinstance(layer, BaseQuantizedLayer) for layer in _layers(context))
    return any(
        not isinstance(layer, (DynamicLayer, BaseQuantizedLayer, VarlenLayer))
        or not getattr(layer, "is_initialized", False)
        for layer in _layers(context)
    )


def _state(context):
    cache = context.get("cache")
    return get_state(cache) if cache is not None else None


def _padded(context) -> bool:
    state = _state(context)
    return state is not None and (
        state.prompt_mask is not None or any(s.valid is not None for s in state.layers.values())
    )


def _sliding_model(context) -> bool:
    model = context.get("model")
    if model is None:
        return False
    return any(is_sliding(m, None) for m in attention_modules(model))


RULES: tuple[Rule, ...] = (
    # -- when a press is built --------------------------------------------------------------------
    Rule("press", "decode_budget", "the full cache", "the full cache keeps everything",
         lambda p, c: p.decode_budget is not None and not _method(p),
         "decode_budget needs an eviction method; the full cache keeps everything"),
    Rule("press", "decode_budget", "a decode_budget not above window_size", "the window is always kept",
         lambda p, c: p.decode_budget is not None and _method(p) and not _int_above(p.decode_budget, _window(p)),
         lambda p: f"decode_budget must be an integer larger than window_size ({_window(p)}), got {p.decode_budget!r}"),
    Rule("press", "decode_budget", "the adakv allocator", "per-head lengths cannot be cut back per step",
         lambda p, c: p.decode_budget is not None and _method(p) and _adakv(p),
         "decode_budget is not supported with the adakv allocator (per-head lengths)"),
    Rule("press", "chunk_size", "the full cache", "the full cache keeps everything",
         lambda p, c: p.chunk_size is not None and not _method(p),
         "chunk_size needs an eviction method; the full cache keeps everything"),
    Rule("press", "chunk_size", "the adakv allocator", "per-head lengths cannot be recompressed per chunk",
         lambda p, c: p.chunk_size is not None and _method(p) and _adakv(p),
         "chunk_size is not supported with the adakv allocator (per-head lengths)"),
    Rule("press", "chunk_size", "compression_ratio", "a ratio of a total not yet seen is undefined",
         lambda p, c: p.chunk_size is not None and _method(p) and p.budget is None,
         "chunk_size needs a budget in tokens (a compression ratio of an unknown total is undefined)"),
    Rule("press", "chunk_size", "a chunk_size not above window_size", "each chunk must hold its window",
         lambda p, c: p.chunk_size is not None and _method(p) and p.chunk_size <= _window(p),
         lambda p: f"chunk_size ({p.chunk_size}) must be larger than window_size ({_window(p)})"),
    *(Rule("press", name, "a method scored once (expected_attention)",
           "later chunks and steps see compressed keys at positions it cannot know",
           lambda p, c, on=on: _method(p) and p.scorer.one_prefill_only and on(p),
           lambda p, name=name: f"{name} is not supported with {p.scorer.name} (it scores once, from every "
           "prompt query at its position)")
      for name, on in (("decode_budget", lambda p: p.decode_budget is not None),
                       ("chunk_size", lambda p: p.chunk_size is not None))),
    Rule("press", "rerotate", "the adakv allocator", "per-head lengths have no one contiguous span",
         lambda p, c: p.rerotate and _adakv(p),
         "rerotate is not supported with the adakv allocator (per-head lengths)"),
    Rule("press", "block_size", "the full cache", "the full cache keeps everything",
         lambda p, c: p.block_size is not None and not _method(p),
         "block_size needs an eviction method; the full cache keeps everything"),
    _block_clash("the adakv allocator", _adakv),
    _block_clash("decode_budget", lambda p: p.decode_budget is not None),
    _block_clash("chunk_size", lambda p: p.chunk_size is not None),
    _block_clash("rerotate", lambda p: p.rerotate),
    _block_clash("probe", lambda p: p.probe is not None),
    Rule("press", "block_size", "a budget below window_size + block_size - 1",
         "the window, rounded out to whole blocks, is always kept",
         lambda p, c: p.block_size is not None and _method(p) and p.budget is not None and p.budget < _block_floor(p),
         lambda p: f"budget ({p.budget}) must hold the window rounded out to whole blocks: at least "
                   f"{_block_floor(p)} (window_size {_window(p)} + block_size {p.block_size} - 1)"),
    Rule("press", "probe", "the full cache", "the full cache keeps everything",
         lambda p, c: p.probe is not None and not _method(p),
         "probe needs an eviction method; the full cache keeps everything"),
    Rule("press", "probe", 'window_size="auto"', "the question is already the observation window",
         lambda p, c: p.probe is not None and _method(p) and p.window_range is not None,
         'probe reads a context without its question; window_size="auto" reads the question: choose one'),
    Rule("press", "probe", "chunk_size", "the probe re-reads the whole context after it",
         lambda p, c: p.probe is not None and _method(p) and p.chunk_size is not None,
         "a reconstruction probe follows the whole prompt, so it does not combine with chunk_size yet"),
    Rule("press", "probe", "the adakv allocator", "a probed prompt is compressed as a dense layer",
         lambda p, c: p.probe is not None and _method(p) and _adakv(p),
         "probe is not supported with the adakv allocator (per-head lengths)"),
    Rule("press", "probe", "a method that reads every prompt query (h2o)", "its own queries are its scores",
         lambda p, c: p.probe is not None and _method(p) and p.scorer.query_span != "window",
         lambda p: f"{p.name} does not read an observation window, so a probe would change nothing"),
    Rule("press", "sparse_prefill", "the full cache", "sparse prefill is a press's, for a method's prefill",
         lambda p, c: p.sparse_prefill is not None and not _method(p),
         "sparse_prefill needs an eviction method (the full cache installs no hooks)"),
    # -- when a press meets a quantized cache -------------------------------------------------------
    Rule("quantized cache", "chunk_size", "a quantized cache", "each chunk would be quantized before scoring",
         lambda p, c: p.chunk_size is not None,
         "a quantized cache cannot be prefilled in chunks (chunk_size): it would quantize each chunk"),
    Rule("quantized cache", "decode_budget", "a quantized cache", "quantized entries are frozen in place",
         lambda p, c: p.decode_budget is not None,
         "decode_budget evicts while decoding, which a quantized cache's frozen entries do not allow"),
    Rule("quantized cache", "allocator=adakv", "a quantized cache", "quantized layers store one length",
         lambda p, c: _adakv(p),
         "the adakv allocator keeps per-head lengths, which a quantized cache cannot store"),
    # -- when decoding on static buffers is asked for (the eager loop decodes instead) --------------
    Rule("compiled decoding", "allocator=adakv", "static buffers", "per-head lengths have no static shape",
         lambda p, c: _layer_kind(c, "varlen") or (_method(p) and _adakv(p) and "cache" not in c),
         "the adakv allocator's per-head lengths (VarlenLayer) have no static shape"),
    Rule("compiled decoding", "a quantized cache", "static buffers", "it dequantizes its layers on every step",
         lambda p, c: _layer_kind(c, "quantized"),
         "a quantized cache dequantizes its layers on every step"),
    Rule("compiled decoding", "a cache of other layers", "static buffers", "only filled dense layers are copied",
         lambda p, c: _layer_kind(c, "other"),
         "the cache has layers that are not filled dense layers"),
    Rule("compiled decoding", "a padded batch", "static buffers", "rows keep per-row masks",
         lambda p, c: _padded(c),
         "a padded batch keeps per-row masks"),
    Rule("compiled decoding", "track_origins", "static buffers", "origins follow every compaction eagerly",
         lambda p, c: getattr(_state(c), "origins", None) is not None,
         "origin tracking follows every compaction eagerly"),
    Rule("compiled decoding", "several rows decoded together", "static buffers",
         "the static buffers hold one row decoded from its start (the engine's batched sweep)",
         lambda p, c: c.get("rows", 1) > 1 or c.get("resumed", False),
         "the static buffers hold one row decoded from its start, and this batch decodes several rows "
         "or resumes them from the full cache's answer"),
    Rule("compiled decoding", "rerotate with decode_budget", "static buffers",
         "re-indexing while decoding moves the next position",
         lambda p, c: _method(p) and p.decode_budget is not None and p.rerotate,
         "re-indexing during decoding moves the next position"),
    # -- when a press is served (restkv serve, or a request's own press) -----------------------------
    Rule("serving", "allocator", "pyramid or adakv", "a request's block table is shared by all layers",
         lambda p, c: _method(p) and p.allocator != "uniform",
         lambda p: "serving supports the uniform allocator only (a request's block table is shared by all "
                   f"layers), got {p.allocator!r}"),
    *(Rule("serving", name, "serving", "compression happens once, after prefill",
           lambda p, c, on=on: _method(p) and on(p),
           f"serving does not support {name} yet (compression happens once, after prefill)")
      for name, on in (("decode_budget", lambda p: p.decode_budget is not None),
                       ("chunk_size", lambda p: p.chunk_size is not None),
                       ('window_size="auto"', lambda p: p.window_range is not None),
                       ("rerotate", lambda p: p.rerotate),
                       ("probe", lambda p: p.probe is not None),
                       ("sparse_prefill", lambda p: p.sparse_prefill is not None))),
    Rule("serving", "a method that reads every prompt query (h2o)", "serving",
         "a server keeps only the observation window's queries",
         lambda p, c: _method(p) and p.scorer.query_span == "all",
         lambda p: f"{p.name} reads every prompt query; serving keeps only the observation window's"),
    Rule("serving", "a model with sliding-window layers", "serving", "sliding layers keep their own window",
         lambda p, c: _method(p) and _sliding_model(c),
         "serving with eviction does not support models with sliding-window layers yet"),
    # -- when a context is compressed before its question ----------------------------------------------
    Rule("query-agnostic", 'window_size="auto"', "compressing before the question",
         "the question is the auto window, and it is not there yet",
         lambda p, c: _method(p) and p.window_range is not None,
         'window_size="auto" takes the question as the observation window, which a context compressed '
         "before its question does not have; use a fixed window_size"),
)  # fmt: skip


def _int_above(value, floor: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > floor


def refusal(place: str, press, **context) -> str | None:
    """The sentence of the first rule of ``place`` that ``press`` breaks, or None."""
    if place not in PLACES:
        raise ValueError(f"unknown place {place!r}; one of {', '.join(PLACES)}")
    for rule in RULES:
        if rule.place == place and rule.breaks(press, context):
            return rule.sentence(press)
    return None


def check(place: str, press, **context) -> None:
    """Raise ``ValueError`` with the sentence of the first rule of ``place`` that ``press`` breaks."""
    sentence = refusal(place, press, **context)
    if sentence is not None:
        raise ValueError(sentence)


def combination_table_markdown() -> str:
    """The rules as a markdown table, grouped by where they are checked (for the docs)."""
    outcome = {"compiled decoding": "decodes in the eager loop, with a warning"}
    lines = ["| checked when | option | does not combine with | because | then |", "|---|---|---|---|---|"]
    for place in PLACES:
        for rule in (r for r in RULES if r.place == place):
            then = outcome.get(place, "refused")
            lines.append(f"| {place} | `{rule.option}` | {rule.clash} | {rule.why} | {then} |")
    return "\n".join(lines) + "\n"
