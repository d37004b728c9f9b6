"""The bridge to transformers: a context manager that compresses each attention layer's cache at prefill.

``with press(model): model.generate(...)`` installs three kinds of hooks and removes them all
on exit, whatever happens inside:

* after each attention layer's forward on a prompt (more than one token), the layer's full
  attention output is already computed; the hook scores the cached keys and keeps
  ``budget`` entries per KV head, layer by layer, so the full cache of every layer is never
  alive at once;
* before each compressed layer's forward, the attention mask is rebuilt for that layer's
  compressed cache (kept entries visible, padding kept only to fill a budget masked, new
  tokens causal), since transformers builds one mask for the uncompressed length;
* before the decoder's forward, missing ``position_ids`` are filled in from the true number of
  tokens seen, since the compressed cache is shorter than the sequence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import (
    attention_modules,
    check_cache,
    check_supported,
    decoder_model,
    is_sliding,
    last_queries,
    needs_frequencies,
    rope_frequencies,
)
from .blocks import BLOCK_REDUCTIONS
from .budgets import ALLOCATORS, validate_budget
from .checks import check_choice, check_int, check_optional_int, is_int, is_number
from .compress import compress_layer, compressed_mask, effective_scorer, plan_budgets
from .decode_eviction import evict_step, recompress_chunk, settle, sliding_layers
from .options import check
from .plan import STEP_KEYWORD, PrefillStep, step_of
from .presets import with_preset
from .probes import PROBES
from .profiles import load_profile
from .quantized import full_precision_layers, is_quantized, requantize
from .scorers import Scorer, get_scorer
from .sparse_prefill import LAYOUT_KEYWORD, SparsePrefill
from .sparse_prefill import PATTERNS as SPARSE_PATTERNS
from .sparse_prefill import STRIDES as SPARSE_STRIDES
from .state import PressStats, SequenceState, ensure_state, get_state, layer_state
from .static_decode import StaticDecodeCache
from .window import AUTO, DEFAULT_RANGE


@dataclass(eq=False)
class KVPress:
    """Prefill-time KV cache eviction with any registered scorer.

    Args:
        scorer: a :class:`~restkv.scorers.Scorer`, or None for the full cache.
        budget: entries kept per KV head in each compressed layer (the paper's unit).
        compression_ratio: alternatively, the fraction of the prompt's entries to remove.
        allocator: ``uniform`` (every layer keeps ``budget``) or ``pyramid`` (more in lower
            layers, same total) or ``adakv`` (heads of a layer share ``H_kv x budget`` entries,
            stored without padding); by default the scorer's own (``pyramid`` for PyramidKV).
        head_floor: with ``adakv``, the share of the uniform per-head budget every head is
            guaranteed (AdaKV's safeguard).
        decode_budget: keep each layer at this many entries per head while generating,
            re-scoring with the method's own rule (see :mod:`restkv.decode_eviction`).
        every: with ``decode_budget``, evict once the cache is ``every`` entries over it
            (1: every step, as TOVA does).
        chunk_size: prefill long prompts ``chunk_size`` tokens at a time (``restkv.generate``
            and the CLI do the chunking); after each chunk every layer is compressed back to
            its budget, the chunk's last ``window_size`` queries being the observation window.
            Memory then stays bounded and prefill time grows linearly with the prompt.
        window_range: ``(low, high)`` when the observation window is the prompt's question
            (``window_size="auto"``; :func:`get_press` sets it). With ``chunk_size`` too, the
            compression is question-aware: the question is kept out of the chunks and appended
            to each one as a probe whose queries are the observation window, then removed.
        rerotate: after every compression, move each layer's kept keys to contiguous positions
            ending right before the next token's (re-applying their rotary embedding), so the
            model never sees a position beyond about budget + chunk + question.
        block_size: keep whole blocks of this many tokens, the same blocks for every KV head of
            a layer (block-aligned mode, for paged caches that free whole blocks; see
            :mod:`restkv.blocks`); None keeps tokens.
        block_reduce: with ``block_size``, a block's score is the ``sum`` or ``max`` of its tokens'.
        probe: ``"reconstruct"`` to read a context compressed before its question with a
            reconstruction probe (the context re-read after a repeat instruction, see
            :mod:`restkv.probes`): its queries are the observation window, then it is removed.
            :func:`restkv.compress_context`, ``generate`` and the engine feed it.
        sparse_prefill: run a prompt's attention block-sparse (see :mod:`restkv.sparse_prefill`);
            the observation window (with a probe) reads everything. ``"xattention"``: each query
            block reads the key blocks that hold ``sparse_threshold`` of its attention, estimated
            from antidiagonals ``sparse_stride`` apart; ``"vertical_slash"``: every query block
            reads the key blocks and block diagonals that hold ``sparse_threshold`` of the last
            64 queries' attention; ``"trishape"``: each query reads the first tokens and the
            ``sparse_local`` tokens before it. None: dense.
        sparse_local: with ``"trishape"``, the tokens before each query it reads.
        sparse_threshold: with ``"xattention"``, the share of each query block's estimated
            attention its kept key blocks hold; with ``"vertical_slash"``, the share of the last
            queries' attention its key blocks and diagonals hold (1 keeps every block).
        sparse_stride: with ``"xattention"``, the antidiagonal stride of the estimate (a divisor of
            128; larger is cheaper and coarser).
    """

    scorer: Scorer | None = None
    budget: int | None = None
    compression_ratio: float | None = None
    allocator: str | None = None
    head_floor: float = 0.2
    decode_budget: int | None = None
    every: int = 1
    chunk_size: int | None = None
    window_range: tuple[int, int] | None = None
    rerotate: bool = False
    block_size: int | None = None
    block_reduce: str = "sum"
    probe: str | None = None
    sparse_prefill: str | None = None
    sparse_local: int = 1024
    sparse_threshold: float = 0.95
    sparse_stride: int = 16
    #: what the last prefill under this press did
    last_stats: PressStats = field(default_factory=PressStats, init=False, repr=False)

    def __post_init__(self):
        check_optional_int("chunk_size", self.chunk_size, 1)
        check_int("every", self.every, 1)
        if not is_number(self.head_floor) or not 0 <= self.head_floor <= 1:
            raise ValueError(f"head_floor must be a number in [0, 1], got {self.head_floor!r}")
        self.head_floor = float(self.head_floor)
        default = self.scorer.default_allocator if self.scorer is not None else "uniform"
        self.allocator = check_choice("allocator", self.allocator or default, ALLOCATORS)
        if self.scorer is not None:
            validate_budget(self.budget, self.compression_ratio, self.scorer.window_size)
        if not isinstance(self.rerotate, bool):
            raise ValueError(f"rerotate must be True or False, got {self.rerotate!r}")
        check_optional_int("block_size", self.block_size, 1)
        check_choice("block_reduce", self.block_reduce, BLOCK_REDUCTIONS)
        if self.probe is not None:
            check_choice("probe", self.probe, PROBES)
        if self.sparse_prefill is not None:
            check_choice("sparse_prefill", self.sparse_prefill, SPARSE_PATTERNS)
        check_int("sparse_local", self.sparse_local, 1)
        if not is_number(self.sparse_threshold) or not 0 < self.sparse_threshold <= 1:
            raise ValueError(f"sparse_threshold must be a number in (0, 1], got {self.sparse_threshold!r}")
        self.sparse_threshold = float(self.sparse_threshold)
        check_int("sparse_stride", self.sparse_stride, 1)
        check_choice("sparse_stride", self.sparse_stride, SPARSE_STRIDES)
        check("press", self)  # which settings combine: restkv.options

    @property
    def name(self) -> str:
        return self.scorer.name if self.scorer is not None else "full"

    def params(self) -> dict:
        """Every parameter of the method and the press (for records and the CLI)."""
        params = self.scorer.params() if self.scorer is not None else {}
        params.update(budget=self.budget, compression_ratio=self.compression_ratio, allocator=self.allocator)
        if self.allocator == "adakv":
            params["head_floor"] = self.head_floor
        if self.decode_budget is not None:
            params.update(decode_budget=self.decode_budget, every=self.every)
        if self.chunk_size is not None:
            params["chunk_size"] = self.chunk_size
        if self.window_range is not None:
            params.update(window_size=AUTO, window_range=list(self.window_range))
        if self.rerotate:
            params["rerotate"] = True
        if self.block_size is not None:
            params.update(block_size=self.block_size, block_reduce=self.block_reduce)
        if self.probe is not None:
            params["probe"] = self.probe
        if self.sparse_prefill == "trishape":
            params.update(sparse_prefill=self.sparse_prefill, sparse_local=self.sparse_local)
        elif self.sparse_prefill == "vertical_slash":
            params.update(sparse_prefill=self.sparse_prefill, sparse_threshold=self.sparse_threshold)
        elif self.sparse_prefill is not None:
            params.update(sparse_prefill=self.sparse_prefill, sparse_threshold=self.sparse_threshold,
                          sparse_stride=self.sparse_stride)  # fmt: skip
        return params

    @property
    def question_aware(self) -> bool:
        """Whether a chunked prefill probes each chunk with the prompt's question."""
        return self.chunk_size is not None and self.window_range is not None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if v is not None)
        return f"{type(self).__name__}({self.name}, {args})"

    @contextlib.contextmanager
    def __call__(self, model: nn.Module):
        """Apply the press to ``model`` for the duration of the ``with`` block (one press at a time).

        The model is claimed before any hook goes on and released after every hook is off, so a
        second press (nested, or in another thread) is refused instead of sharing the hooks.
        """
        if self.scorer is not None:
            check_supported(model)
        claim = _claim(model, self)
        session = None
        try:
            if self.scorer is not None:
                session = _Session(self, model)
            yield self
        finally:
            _release(model, claim, session)


#: the attribute that marks a model as being under a press (its value: the block's :class:`_Claim`)
_ACTIVE = "_restkv_active_press"
#: makes checking a model's marker and setting it one step for every thread
_CLAIMS = threading.Lock()


@dataclass(eq=False)
class _Claim:
    """Who holds a model: the press and the thread of one ``with`` block (compared by identity)."""

    press: KVPress
    thread: int


def _claim(model: nn.Module, press: KVPress) -> _Claim:
    """Mark ``model`` as under ``press`` in this thread, or refuse when any press holds it."""
    with _CLAIMS:
        held = vars(model).get(_ACTIVE)
        if held is not None:
            raise _refusal(model, held)
        claim = _Claim(press, threading.get_ident())
        vars(model)[_ACTIVE] = claim
        return claim


def _refusal(model: nn.Module, held: _Claim) -> ValueError:
    """The one sentence for a model already held: by an outer block of this thread, or another thread."""
    name = model.__class__.__name__
    if getattr(held, "thread", None) == threading.get_ident():
        return ValueError(
            f"{name} is already under a press; a nested press would be ignored, "
            "so leave the first `with` block before entering another"
        )
    return ValueError(
        f"{name} is already under a press in another thread, and one model runs one press at a time, "
        "so wait for that block to end or give this thread its own copy of the model"
    )


def _release(model: nn.Module, claim: _Claim, session: _Session | None) -> None:
    """Take the block's hooks off, then its own marker (never another block's), the marker even
    when taking a hook off raised: a model is never left marked, nor hooked, after its block."""
    try:
        if session is not None:
            session.remove()
    finally:
        with _CLAIMS:
            if vars(model).get(_ACTIVE) is claim:
                del vars(model)[_ACTIVE]


#: the settings of a press itself (everything else given to :func:`get_press` is the method's)
PRESS_SETTINGS = tuple(
    f.name for f in dataclasses.fields(KVPress) if f.init and f.name not in ("scorer", "window_range")
)


def hooks_only_press() -> KVPress:
    """A press that evicts nothing but installs the hooks compressed caches decode with."""
    return KVPress(get_scorer("full"), budget=1)


def _cache_of(kwargs):
    """The forward's cache; None for a static decoding cache, which builds its own masks and
    evicts between steps (:mod:`restkv.static_decode`), so every hook leaves it alone."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return None if isinstance(cache, StaticDecodeCache) else cache


def _hidden_of(args, kwargs):
    return kwargs.get("hidden_states", args[0] if args else None)


class _Session:
    """The hooks of one ``with press(model)`` block."""

    def __init__(self, press: KVPress, model: nn.Module):
        self.press = press
        self.quantized = None  # a quantized cache's own layers while its prompt runs at full precision
        self.modules = attention_modules(model)
        self.frequencies = rope_frequencies(model) if needs_frequencies(press) else {}
        decoder = decoder_model(model)
        self.handles = []
        self.sparse = None
        try:
            if press.sparse_prefill is not None:
                self.sparse = SparsePrefill(model, press)
            self.handles.append(decoder.register_forward_pre_hook(self._before_model, with_kwargs=True))
            self.handles.append(decoder.register_forward_hook(self._after_model, with_kwargs=True))
            for module in self.modules:
                self.handles.append(module.register_forward_pre_hook(self._before_attention, with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._after_attention, with_kwargs=True))
        except BaseException:  # never leave half the hooks behind
            self.remove()
            raise

    def remove(self) -> None:
        """Take every hook off (a handle already removed is skipped, so this cannot fail), and give
        the model its own attention back."""
        while self.handles:
            self.handles.pop().remove()
        if self.sparse is not None:
            self.sparse.restore()
            self.sparse = None

    # -- hooks ------------------------------------------------------------------------------
    def _before_model(self, module, args, kwargs):
        cache = _cache_of(kwargs)
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if cache is None or tokens is None:
            return None
        check_cache(cache)
        fresh = cache.get_seq_length() == 0
        if fresh and is_quantized(cache):  # compress at full precision, quantize what is kept (_after_model)
            check("quantized cache", self.press)
            self.quantized = full_precision_layers(cache)
        state = ensure_state(cache)
        q = tokens.shape[1]
        # what this forward is reaches every layer with it (a forward without a plan is a whole
        # prompt in one piece, or a decoding step)
        step = step_of(kwargs) or PrefillStep(prompt_length=q)
        kwargs[STEP_KEYWORD] = step
        position_ids = kwargs.get("position_ids")
        if position_ids is None and state.layers and state.next_pos is not None:
            position_ids = state.next_pos[:, None] + torch.arange(q, device=state.next_pos.device)
            kwargs["position_ids"] = position_ids
        if position_ids is not None:
            state.next_pos = position_ids.reshape(-1, position_ids.shape[-1])[:, -1] + 1
        elif state.next_pos is None:
            state.next_pos = torch.full((tokens.shape[0],), q, device=tokens.device)
        else:
            state.next_pos = state.next_pos + q
        mask = kwargs.get("attention_mask")
        padded = isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all())
        if fresh and padded:
            state.prompt_mask = mask[:, -q:].bool()
        if fresh and self.sparse is not None and not padded:  # padded rows keep SDPA's masks
            layout = self.sparse.layout(q, step.probe)
            if layout is not None:
                kwargs[LAYOUT_KEYWORD] = layout
        if step.probe:  # sliding layers keep the probe's predecessors until it is cut out again
            for _, layer in sliding_layers(cache):
                layer.record_past = True
        return args, kwargs

    def _after_model(self, module, args, kwargs, output):
        """Once every layer has run: drop a probe from sliding layers and settle the next position."""
        cache = _cache_of(kwargs)
        state = get_state(cache)
        step = step_of(kwargs)
        if state is not None and step is not None:
            settle(cache, state, step, self.frequencies)
        if self.quantized is not None:
            requantize(cache, self.quantized)
            self.quantized = None
        return None

    def _before_attention(self, module, args, kwargs):
        cache = _cache_of(kwargs)
        compressed = layer_state(cache, module.layer_idx)
        if compressed is None:
            return None
        hidden = _hidden_of(args, kwargs)
        stored = cache.layers[module.layer_idx].get_seq_length()
        kwargs["attention_mask"] = compressed_mask(
            compressed, stored, hidden.shape[1], module.num_key_value_groups, hidden.dtype, hidden.device
        )
        return args, kwargs

    def _after_attention(self, module, args, kwargs, output):
        cache = _cache_of(kwargs)
        hidden = _hidden_of(args, kwargs)
        if cache is None or hidden is None:
            return None
        layer = cache.layers[module.layer_idx]
        if is_sliding(module, layer) or layer.keys is None:
            return None
        inv_freq = self.frequencies.get(module.layer_idx)
        step = step_of(kwargs) or PrefillStep(prompt_length=hidden.shape[1])
        if hidden.shape[1] == 1:
            state = get_state(cache)
            if self.press.decode_budget is not None and state is not None and module.layer_idx in state.layers:
                evict_step(self.press, module, layer, hidden, kwargs["position_embeddings"], state, step, inv_freq)
            return None
        state = ensure_state(cache)
        fresh = layer.get_seq_length() == hidden.shape[1]
        if not (fresh or step.streaming):
            return None  # tokens fed after a compressed prompt (a question, teacher forcing) stay
        self._plan(cache, state, step)
        if fresh and not step.probe:
            scorer = effective_scorer(self.press, state)
            n = layer.keys.shape[-2]
            queries = last_queries(module, hidden, kwargs["position_embeddings"], scorer.query_count(n))
            compress_layer(
                self.press, module, cache, queries, state, self.press.last_stats, inv_freq=inv_freq, step=step
            )
        else:  # a chunk of a streamed prompt (the first one too when it carries a probe)
            recompress_chunk(
                self.press, self.press.scorer, module, layer, hidden, kwargs["position_embeddings"], state, step,
                inv_freq,
            )  # fmt: skip
            kept = layer.keys.shape[-2]
            self.press.last_stats.entries_per_layer[module.layer_idx] = kept * layer.keys.shape[1]
            self.press.last_stats.heads_per_layer[module.layer_idx] = layer.keys.shape[1]
        return None

    def _plan(self, cache, state: SequenceState, step: PrefillStep) -> None:
        """Budgets for this prompt, planned once (for the whole prompt when it arrives in chunks)."""
        if state.budgets is None:
            state.budgets = plan_budgets(self.press, self.modules, cache, step.prompt_length)
            self.press.last_stats = PressStats(prompt_tokens=step.prompt_length)


def get_press(name: str, **settings) -> KVPress:
    """A press by method name: ``get_press("restkv", budget=128, alpha=0.3)``; ``full`` keeps everything.

    Settings named in :data:`PRESS_SETTINGS` (``budget``, ``compression_ratio``, ``allocator``,
    ``head_floor``, ``decode_budget``, ``every``, ``chunk_size``) go to the press, the rest to
    the method's scorer. ``preset="agnostic"`` (or ``"paper"``) sets ReST-KV's parameters by
    name (:mod:`restkv.presets`); parameters given explicitly override the preset's.
    """
    if "preset" in settings:
        settings = with_preset(name, settings)
    press_settings = {k: settings.pop(k) for k in PRESS_SETTINGS if k in settings}
    if name == "full":
        given = sorted(k for k, v in {**settings, **press_settings}.items() if v is not None)  # None: not given
        if given:
            raise ValueError(f"full takes no parameters, got {', '.join(given)}")
        return KVPress(None)  # no hooks at all: exactly the model's own behaviour
    scorer, window_range = build_scorer(name, settings, press_settings.get("budget"))
    return KVPress(scorer, window_range=window_range, **press_settings)


def build_scorer(name: str, params: dict, budget: int | None = None) -> tuple[Scorer, tuple[int, int] | None]:
    """The scorer, and the auto window's range when ``window_size="auto"`` (the scorer then
    gets the range's upper end as its window, the largest a prompt may use; never more than
    ``budget - 1``)."""
    params = dict(params)
    profile = params.pop("profile", None)
    if profile is not None:  # tuned parameters; explicit ones win
        if name != "restkv":
            raise ValueError(f"profile is a tuned ReST-KV setting; {name} takes no profile")
        params = {**load_profile(profile), **params}
    window_range = params.pop("window_range", None)
    if params.get("window_size") == AUTO:
        low, high = _check_range(window_range or DEFAULT_RANGE)
        if is_int(budget) and budget > low:
            high = min(high, budget - 1)
        window_range = (low, high)
        params["window_size"] = high
    elif window_range is not None:
        raise ValueError('window_range goes with window_size="auto"')
    return get_scorer(name, **params), window_range


def _check_range(window_range) -> tuple[int, int]:
    ok = isinstance(window_range, (tuple, list)) and len(window_range) == 2
    ok = ok and all(is_int(v) for v in window_range)
    if not ok or not 1 <= window_range[0] <= window_range[1]:
        raise ValueError(f"window_range must be two integers (low, high) with 1 <= low <= high, got {window_range!r}")
    return int(window_range[0]), int(window_range[1])


class RestKVPress(KVPress):
    """ReST-KV at prefill: ``RestKVPress(budget=128)`` or ``RestKVPress(compression_ratio=0.75)``.

    Takes the settings of :class:`KVPress` and the scorer's parameters (``window_size``,
    ``alpha``, ``temporal``, ``metric_mode``, ``use_wo``, ``tau``, ``pooling``, ``kernel_size``,
    ``scale``, ``gqa_reduce``), which default to the paper's main setting.
    """

    def __init__(self, budget: int | None = None, **settings):
        built = get_press("restkv", budget=budget, **settings)
        super().__init__(**{f.name: getattr(built, f.name) for f in dataclasses.fields(KVPress) if f.init})
