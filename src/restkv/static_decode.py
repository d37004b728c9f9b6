"""Decoding on preallocated static-shape buffers, optionally compiled with ``torch.compile``.

After prefill a compressed cache's size is known: what each layer kept plus the tokens still to
come (or, with ``decode_budget``, at most ``decode_budget + every``). :func:`to_static` copies
the cache into :class:`SlotLayer` buffers of that size, so a decoding step only writes one slot
per layer instead of concatenating whole layers, and every step has the same tensor shapes:

* full-attention layers keep their entries in slots ``0 .. length - 1`` and write the new token
  at slot ``length``; each layer has its own length (pyramid budgets, eviction);
* sliding-window layers are rings of ``sliding_window`` slots (attention does not depend on the
  order of the keys, which are already rotated);
* the rotary position is the true one, kept in a ``[b, 1]`` tensor that advances in place.

The masks of all layers are one ``[layers, 1, 1, 1, slots]`` tensor derived from the lengths
inside the step, and reach each layer through a registered attention function
(:data:`STATIC_ATTENTION`) that picks the layer's row and calls the model's own attention. The
model then builds no mask of its own. Because shapes never change, the step compiles once per
buffer size (sizes are rounded up to a few buckets so prompts of nearby lengths share a graph).

Decoding-time eviction runs eagerly between steps: the attention function records each layer's
post-rotary query into a buffer, and :func:`restkv.decode_eviction.observe_and_evict` scores and
compacts the kept entries back into the front of the same buffers.

Caches that cannot be made static fall back to the eager loop with a reason
(:func:`static_unsupported`): AdaKV's per-head lengths, quantized layers, padded batches,
origin tracking and re-indexing during decoding.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from ._compat.torch_inductor import inductor_config_patch, raise_recompile_limit
from ._compat.transformers_config import attention_implementation, set_attention_implementation
from .adapters import attention_function, attention_modules
from .decode_eviction import observe_and_evict
from .decoding import Decoded, StopRule, greedy
from .options import refusal
from .state import get_state, set_state

#: the attention implementation the static step runs under (registered with transformers)
STATIC_ATTENTION = "restkv_static"


def _static_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """The model's own attention with this layer's row of the static masks; records the query
    when decoding-time eviction needs it."""
    masks = kwargs.pop("restkv_masks")
    queries = kwargs.pop("restkv_queries", None)
    inner = kwargs.pop("restkv_inner", "sdpa")
    index = module.layer_idx
    if queries is not None:
        queries[index].copy_(query)
    mask = masks[index][..., : key.shape[-2]]
    if inner == "sdpa" and query.shape[2] == 1 and kwargs.get("softcap") is None:
        return _grouped_sdpa(query, key, value, mask, kwargs.get("scaling")), None
    return attention_function(module, inner)(module, query, key, value, mask, *args, **kwargs)


def _grouped_sdpa(query, key, value, mask, scaling):
    """One new token's attention with grouped-query heads as rows of their KV head: the ``g``
    query heads sharing a KV head become ``g`` queries of it, so the keys and values are read
    in place instead of being repeated ``g`` times (what transformers does whenever there is a
    mask). Returns ``[b, 1, H, d]`` like transformers' attention functions."""
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(b, kv_heads, heads // kv_heads, d)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, 1, d).transpose(1, 2)


AttentionInterface.register(STATIC_ATTENTION, _static_attention)


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values in a fixed buffer ``[b, H_kv, slots, d]``.

    ``lengths[index]`` (a tensor shared by all layers, advanced inside the step) is how many
    tokens the layer has seen since its last compaction; the new token goes to slot
    ``lengths[index] % ring``. ``keys``/``values`` are views of the filled slots, and assigning
    them (as eviction does) compacts the new entries into the front of the buffers.
    """

    is_compileable = True
    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slots: int, lengths: torch.Tensor, index: int,
                 sliding_window: int | None = None):  # fmt: skip
        # no CacheLayerMixin.__init__: it would assign keys = None through the compacting setter
        b, heads, n, _ = keys.shape
        self.is_sliding = sliding_window is not None
        self.ring = sliding_window if self.is_sliding else slots
        self.key_buffer = keys.new_zeros(b, heads, slots, keys.shape[-1])
        self.value_buffer = values.new_zeros(b, heads, slots, values.shape[-1])
        self.key_buffer[..., :n, :] = keys
        self.value_buffer[..., :n, :] = values
        self.lengths, self.index = lengths, index
        lengths[index] = n
        self.device, self.dtype = keys.device, keys.dtype
        self.is_initialized = True

    @property
    def length(self) -> int:
        """Filled slots (a ring holds at most its window)."""
        return min(int(self.lengths[self.index]), self.ring)

    @property
    def keys(self) -> torch.Tensor:
        return self.key_buffer[..., : self.length, :]

    @keys.setter
    def keys(self, new: torch.Tensor) -> None:
        self._compact(self.key_buffer, new)

    @property
    def values(self) -> torch.Tensor:
        return self.value_buffer[..., : self.length, :]

    @values.setter
    def values(self, new: torch.Tensor) -> None:
        self._compact(self.value_buffer, new)

    def _compact(self, buffer: torch.Tensor, new: torch.Tensor) -> None:
        if self.is_sliding:
            raise ValueError("a sliding-window layer keeps its own window; it is never compacted")
        n = new.shape[-2]
        if n > buffer.shape[-2]:
            raise ValueError(f"{n} entries do not fit the {buffer.shape[-2]} reserved slots")
        buffer[..., :n, :] = (
            new.clone() if new.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr() else new
        )
        self.lengths[self.index] = n

    # -- the transformers cache-layer interface --------------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:  # built initialized
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        slot = self.lengths[self.index : self.index + 1] % self.ring
        self.key_buffer.index_copy_(2, slot, key_states)
        self.value_buffer.index_copy_(2, slot, value_states)
        return self.key_buffer, self.value_buffer

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.key_buffer.shape[-2], 0

    def get_max_length(self) -> int:
        return self.key_buffer.shape[-2]

    def reset(self) -> None:
        raise NotImplementedError("a static decoding cache cannot be reset; build a new one")


class StaticDecodeCache(Cache):
    """The layers of a compressed cache as :class:`SlotLayer` buffers, with the press's state."""

    def __init__(self, layers: list[SlotLayer], lengths: torch.Tensor):
        super().__init__(layers=layers)
        self.lengths = lengths
        # each layer's ring size and the slot indices, for the masks built inside the step
        self.rings = torch.tensor([layer.ring for layer in layers], device=lengths.device)
        self.slots = torch.arange(max(layer.key_buffer.shape[-2] for layer in layers), device=lengths.device)


def static_unsupported(cache, press=None) -> str | None:
    """Why ``cache`` (under ``press``) cannot decode on static buffers, or None when it can
    (the ``compiled decoding`` rules of :mod:`restkv.options`)."""
    return refusal("compiled decoding", press, cache=cache)


def bucket(n: int) -> int:
    """``n`` rounded up to a buffer size shared with nearby lengths (at most 1/8 larger, at least 64)."""
    step = max(64, 1 << max(n.bit_length() - 4, 0))
    return -(-n // step) * step


def slots_needed(cache, max_new_tokens: int, press=None) -> int:
    """Slots a full-attention layer needs to decode ``max_new_tokens`` more tokens."""
    kept = max(layer.keys.shape[-2] for layer in cache.layers if not getattr(layer, "is_sliding", False))
    needed = kept + max_new_tokens
    if press is not None and press.decode_budget is not None:  # eviction keeps it at most budget + every
        needed = min(needed, max(kept + 1, press.decode_budget + press.every))
    return needed


def to_static(cache, max_new_tokens: int, press=None, slots: int | None = None) -> StaticDecodeCache:
    """A :class:`StaticDecodeCache` holding ``cache``'s entries and room for ``max_new_tokens`` more
    (``slots`` overrides the bucketed size). The press's state is shared, not copied."""
    reason = static_unsupported(cache, press)
    if reason is not None:
        raise ValueError(f"this cache cannot decode on static buffers: {reason}")
    slots = slots or bucket(slots_needed(cache, max_new_tokens, press))
    first = cache.layers[0].keys
    lengths = torch.zeros(len(cache.layers), dtype=torch.long, device=first.device)
    layers = []
    for index, layer in enumerate(cache.layers):
        window = layer.sliding_window if getattr(layer, "is_sliding", False) else None
        layers.append(SlotLayer(layer.keys, layer.values, window or slots, lengths, index, window))
    static = StaticDecodeCache(layers, lengths)
    set_state(static, get_state(cache))
    return static


def _step(model, ids, positions, cache: StaticDecodeCache, queries, inner: str, dtype):
    """One decoding step on static buffers: every tensor keeps its shape from step to step."""
    limit = torch.minimum(cache.lengths + 1, cache.rings)  # filled slots once the new token is in
    visible = cache.slots[None, :] < limit[:, None]  # [layers, slots]
    masks = torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
        ~visible, torch.finfo(dtype).min
    )[:, None, None, None, :]
    logits = model(
        input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1,
        restkv_masks=masks, restkv_queries=queries, restkv_inner=inner,
    ).logits  # fmt: skip
    cache.lengths.add_(1)
    positions.add_(1)
    return logits[:, -1]


_compiled_step = None

#: inductor settings the step compiles under on a CPU. Passed as ``torch.compile(options=...)``
#: they did not take effect here (torch 2.13: the step still ran aten::mm on unpacked weights),
#: so they are applied with ``torch._inductor.config.patch`` around each call instead:
#: ``freezing`` makes the weights constants, and ``max_autotune`` with the ``CPP`` backend lets
#: inductor benchmark its own C++ GEMM template (weights prepacked into blocks) against MKL for
#: each linear's shape. For one decoded row that template streams the weights about twice as
#: fast as MKL's ``mm`` (SmolLM2 budget 128: 47 -> 25 ms per step, see
#: ``benchmarks/results/decode-compiled``); compiling takes a minute longer the first time.
CPU_INDUCTOR = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def compiled_step():
    """The step compiled with inductor (built once; each buffer size compiles once, on first use)."""
    global _compiled_step
    if _compiled_step is None:
        # one graph per model, buffer size and eviction setting: allow more than the default 8
        raise_recompile_limit(64)
        _compiled_step = torch.compile(_step, dynamic=False, fullgraph=True)
    return _compiled_step


def inductor_settings(device: torch.device):
    """The context a compiled step runs (and, on its first call, compiles) in on ``device``."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    return inductor_config_patch(CPU_INDUCTOR)


#: buffer shapes this process has announced a compilation for
_ANNOUNCED: set = set()


def announce_compile(shape: tuple) -> bool:
    """Say once per buffer shape, before its first step, that compiling takes a while."""
    if shape in _ANNOUNCED:
        return False
    _ANNOUNCED.add(shape)
    print(
        "restkv: compiling the decoding step (torch.compile) before the first token; on a 2-core CPU this took "
        "71-160 s for SmolLM2 (benchmarks/results/decode-compiled), and about half of that again in every new "
        "process (benchmarks/results/compiled-warm-start)",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return True


class StaticDecoder:
    """Decode one compressed cache step by step on static buffers.

    Args:
        model: the model the cache was filled with.
        cache: the filled (compressed) cache; it is copied into buffers and left unchanged.
        max_new_tokens: tokens this decoder may still feed.
        press: the press that filled it (its ``decode_budget`` evicts between steps).
        compile: run the step through ``torch.compile`` (inductor) instead of eagerly.
    """

    def __init__(self, model, cache, max_new_tokens: int, press=None, compile: bool = False, slots=None):
        self.model, self.press, self.compile = model, press, compile
        self.cache = to_static(cache, max_new_tokens, press, slots)
        state = get_state(self.cache)
        self.state = state
        rows = self.cache.layers[0].key_buffer.shape[0]
        device = self.cache.lengths.device
        start = state.next_pos if state is not None and state.next_pos is not None else None
        if start is None:
            start = torch.full((rows,), cache.get_seq_length(), device=device)
        self.positions = start.reshape(rows, 1).clone()
        self.evicting = press is not None and press.decode_budget is not None and state is not None
        self.queries = None
        self.modules = {}
        if self.evicting:
            modules = attention_modules(model)
            self.modules = {m.layer_idx: m for m in modules if m.layer_idx in state.layers}
            first = modules[0]
            heads = model.config.get_text_config().num_attention_heads
            self.queries = torch.zeros(len(self.cache.layers), rows, heads, 1, first.head_dim,
                                       dtype=self.cache.layers[0].dtype, device=device)  # fmt: skip
        self.inner = attention_implementation(model.config) or "eager"
        # full-attention layers must never wrap around their buffer (sliding rings do, by design)
        self.full = torch.tensor([i for i, layer in enumerate(self.cache.layers) if not layer.is_sliding])
        self.slots = max((layer.key_buffer.shape[-2] for layer in self.cache.layers if not layer.is_sliding), default=0)
        self.dtype = self.cache.layers[0].dtype
        if compile:
            announce_compile((rows, self.slots, self.dtype, str(device)))

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` ``[b, 1]``; returns the next-token logits ``[b, vocab]``."""
        if self.full.numel() and int(self.cache.lengths[self.full].max()) >= self.slots:
            raise ValueError(
                f"the {self.slots} reserved slots are full: build the decoder with a larger max_new_tokens"
            )
        configs = {id(c): c for c in (self.model.config, self.model.config.get_text_config())}.values()
        for config in configs:  # the attention modules read the (text) config's implementation
            set_attention_implementation(config, STATIC_ATTENTION)
        try:
            run = compiled_step() if self.compile else _step
            settings = inductor_settings(self.positions.device) if self.compile else contextlib.nullcontext()
            with settings:
                logits = run(self.model, ids, self.positions, self.cache, self.queries, self.inner, self.dtype)
        finally:
            for config in configs:
                set_attention_implementation(config, self.inner)
        if self.state is not None:
            self.state.next_pos = self.positions[:, 0].clone()
        if self.evicting:
            for index, module in self.modules.items():
                observe_and_evict(self.press, module, self.cache.layers[index], self.queries[index], self.state)
        return logits


@torch.inference_mode()
def static_greedy(model, cache, logits: torch.Tensor, stop: StopRule, press=None, compile: bool = False,
                  keep_logits: bool = False) -> Decoded:  # fmt: skip
    """Greedy decoding (:func:`restkv.decoding.greedy` under ``stop``) from the next-token
    ``logits`` ``[1, vocab]`` of a filled ``cache``, with :meth:`StaticDecoder.step` as the step.
    Building the buffers counts as decoding time; a first compilation does too (call once
    before timing to leave it out)."""
    began = time.perf_counter()
    decoder = StaticDecoder(model, cache, stop.max_new_tokens, press, compile)
    return greedy(decoder.step, logits, stop, keep_logits=keep_logits, started=began)


def check_compile(compile) -> None:
    """``compile`` must be True, False or ``"static"``."""
    if compile not in (True, False, "static"):
        raise ValueError(f'compile must be True, False or "static", got {compile!r}')


def decodes_static(compile, cache, press, max_new_tokens: int) -> bool:
    """Whether decoding ``max_new_tokens`` from ``cache`` runs on static buffers: ``compile`` asks
    for them, there is more than one token to feed, and the cache can be made static (when it
    cannot, a warning says why and decoding stays in the eager loop)."""
    if not compile or max_new_tokens <= 1:
        return False
    reason = static_unsupported(cache, press)
    if reason is not None:
        warnings.warn(f"compiled decoding falls back to the eager loop: {reason}", stacklevel=3)
    return reason is None
