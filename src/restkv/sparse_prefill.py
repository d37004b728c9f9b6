"""Block-sparse prefill: a prompt's attention under a block mask, through FlexAttention.

A dense prefill lets every query read every earlier key, so its attention grows as ``n^2`` and is
most of a long prompt's arithmetic (about 73% of SmolLM2's at 16K tokens, counted from its
shapes). Three patterns decide which ``BLOCK x BLOCK`` tiles of the causal attention are computed.

``sparse_prefill="xattention"`` (Xu et al. 2025, arXiv 2503.16428) chooses per layer, head and
query block from the attention itself: each tile's mass is estimated from strided antidiagonals
(query rows and key rows taken ``sparse_stride`` apart, one product per ``sparse_stride^2``
pairs), and a query block keeps its heaviest key blocks until they hold ``sparse_threshold`` of
its estimated mass, with the first block (the sinks) and its own diagonal block always. A layer
whose choice keeps more than :data:`MAX_KEPT_SHARE` of the tiles runs dense. Because the choice
follows the attention, the columns a needle draws stay (which a fixed pattern drops).

``sparse_prefill="vertical_slash"`` (MInference's pattern, Jiang et al. 2024, arXiv 2407.02490,
at tile granularity) reads one estimate per layer and head: the attention of the prompt's last
:data:`LAST_QUERIES` queries, summed per key block (a "vertical": a key block every later query
reads, such as a needle's) and per block of query-key distance (a "slash": a diagonal band). The
heaviest verticals and slashes until each holds ``sparse_threshold`` of that attention are read by
every query block. The estimate costs one ``64 x n`` product, against XAttention's ``n^2 /
stride``, but it sees only what the prompt's end attends to.

Under ``sparse_prefill="trishape"`` a prompt's query reads only:

* the first :data:`SINK` tokens (the attention sinks every query leans on),
* the ``sparse_local`` tokens right before it,
* everything, when it is one of the prompt's last rows: the observation window (and a probe fed
  in the same forward), which therefore attends densely.

Those are MInference's A-shape with a dense last band (OpenVINO GenAI calls it tri-shape). It costs
no estimate and loses needles (measured). Under every pattern the query blocks of the observation
window attend densely, so a window scorer's observation queries (ReST-KV's included) see the exact
attention over the keys the sparse forward produced; the keys themselves differ from a dense
prefill's wherever earlier layers attended sparsely, so the kept set can differ (measured, not
assumed: ``benchmarks/results/sparse-prefill``).

Only a forward that fills a fresh cache in one piece goes sparse (a one-pass prompt, or the first
chunk of a streamed one); later chunks, questions and decoding steps attend densely. Sliding-window
layers keep their own window exactly, but as a :class:`Band` block mask rather than SDPA's dense
mask (which computes every query-key pair and masks most of them away): for gemma-3's 512-token
windows that is the same attention at a fraction of the work. It runs on PyTorch's FlexAttention,
compiled, with blocks of :data:`BLOCK` tokens: on this machine flex costs 1.5-1.7x SDPA for the
same causal work and 0.30x SDPA when it keeps 16% of the blocks
(``benchmarks/results/flex-vs-sdpa``), so a prompt whose mask would keep almost every block is left to SDPA. Each padded length
compiles once per process (5-11 s here); lengths are padded up to shared sizes so nearby prompts
share a graph.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ._compat.torch_inductor import raise_recompile_limit
from ._compat.transformers_config import attention_implementation, set_attention_implementation
from .adapters import is_sliding

#: the patterns ``sparse_prefill`` takes
PATTERNS = ("trishape", "vertical_slash", "xattention")
#: the attention implementation a model runs under while a press with ``sparse_prefill`` holds it
SPARSE_ATTENTION = "restkv_sparse_prefill"
#: the keyword that carries a forward's :class:`TriShape` to every attention layer
LAYOUT_KEYWORD = "restkv_sparse_layout"
#: tokens per block of the mask (FlexAttention's default block size)
BLOCK = 128
#: the leading tokens every query reads
SINK = BLOCK
#: the last queries whose attention ``"vertical_slash"`` reads (MInference's estimate uses 64)
LAST_QUERIES = 64
#: the antidiagonal strides XAttention's estimate takes (a stride divides a block)
STRIDES = (1, 2, 4, 8, 16, 32, 64, 128)
#: a mask that keeps more than this share of the causal blocks is left to SDPA: flex does the
#: same work 1.5-1.7x slower here, so below about 0.6 it starts to pay, and the margin covers
#: the padding and the projections, which sparsity does not touch
MAX_KEPT_SHARE = 0.45


def causal(batch, head, q, k):
    """The mask inside a diagonal tile (keys past the prompt are only ever on the diagonal tiles
    of padded rows, whose output is dropped)."""
    return k <= q


@dataclass(frozen=True)
class XAttention:
    """Which tiles a prompt of ``tokens`` tokens computes is chosen per layer from its attention:
    see the module's docstring. Its last ``dense_tail`` rows read everything."""

    tokens: int
    dense_tail: int
    threshold: float
    stride: int

    def chosen_blocks(self, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """``[b, H, blocks, blocks]`` booleans: the key blocks each query block reads (causal, the
        first and the diagonal always, every block for the dense tail's rows). ``query``
        ``[b, H, n, d]`` and ``key`` ``[b, H, n, d]``, ``n`` a whole number of blocks."""
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        mass = antidiagonal_mass(query, key, self.stride, scale, self.tokens)
        return with_fixed_tiles(heaviest(mass, self.threshold), self.tokens, self.dense_tail)


@dataclass(frozen=True)
class VerticalSlash:
    """Which tiles a prompt of ``tokens`` tokens computes is chosen per layer and head from the
    attention of its last :data:`LAST_QUERIES` queries (MInference's vertical-slash estimate, at
    tile granularity): the key blocks ("verticals") and the block diagonals ("slashes") that hold
    ``threshold`` of those queries' attention are read by every query block. Its last
    ``dense_tail`` rows read everything."""

    tokens: int
    dense_tail: int
    threshold: float

    def chosen_blocks(self, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """``[b, H, blocks, blocks]`` booleans, as :meth:`XAttention.chosen_blocks`."""
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        vertical, slash = vertical_slash_mass(query, key, scale, self.tokens)
        verticals, slashes = heaviest(vertical, self.threshold), heaviest(slash, self.threshold)
        blocks = vertical.shape[-1]
        index = torch.arange(blocks, device=query.device)
        distance = (index[:, None] - index[None, :]).clamp_min(0)
        # a slash at a distance in block d runs through the tiles d and d + 1 blocks below the diagonal
        on_slash = slashes[..., distance] | slashes[..., (distance - 1).clamp_min(0)]
        return with_fixed_tiles(verticals[..., None, :] | on_slash, self.tokens, self.dense_tail)


def heaviest(mass: torch.Tensor, threshold: float) -> torch.Tensor:
    """Booleans over ``mass``'s last dimension: its heaviest entries until they hold ``threshold``
    of the sum (a block is kept while the mass before it falls short)."""
    if threshold >= 1:
        return torch.ones_like(mass, dtype=torch.bool)
    share = mass / mass.sum(-1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
    values, order = share.sort(-1, descending=True)
    before = values.cumsum(-1) - values
    return torch.zeros_like(share, dtype=torch.bool).scatter_(-1, order, before < threshold)


def with_fixed_tiles(chosen: torch.Tensor, tokens: int, dense_tail: int) -> torch.Tensor:
    """``chosen`` ``[..., blocks, blocks]`` with the tiles every pattern reads (the first key block,
    the diagonal, every tile of the dense tail's rows), causal."""
    blocks = chosen.shape[-1]
    index = torch.arange(blocks, device=chosen.device)
    chosen = chosen.clone()
    chosen[..., index, index] = True
    chosen[..., 0] = True
    chosen[..., (tokens - dense_tail) // BLOCK :, :] = True
    return chosen & (index[None, :] <= index[:, None])


def vertical_slash_mass(query, key, scale: float, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[b, H, blocks]`` twice: the attention of the last :data:`LAST_QUERIES` of ``tokens``
    queries summed per key block (verticals) and per block of query-key distance (slashes)."""
    b, heads, n, _ = query.shape
    last = min(LAST_QUERIES, tokens)
    rows = torch.arange(tokens - last, tokens, device=query.device)
    keys = torch.arange(n, device=query.device)
    logits = (query[:, :, rows].float() @ key.float().transpose(-1, -2)).mul_(scale)
    logits.masked_fill_((keys > rows[:, None]) | (keys >= tokens), float("-inf"))
    weights = logits.softmax(-1)  # [b, H, last, n]
    vertical = weights.sum(-2).view(b, heads, n // BLOCK, BLOCK).sum(-1)
    slash = weights.new_zeros(b, heads, n)
    for i, row in enumerate(rows.tolist()):  # row ``row``'s keys, nearest first, are distances 0, 1, ...
        slash[..., : row + 1] += weights[:, :, i, : row + 1].flip(-1)
    return vertical, slash.view(b, heads, n // BLOCK, BLOCK).sum(-1)


def antidiagonal_mass(query, key, stride: int, scale: float, tokens: int) -> torch.Tensor:
    """``[b, H, blocks, blocks]``: each tile's attention mass estimated from its antidiagonals.

    Query rows ``stride - 1 - s`` and key rows ``s`` (``s < stride``) of every ``stride``-row group
    are laid side by side, so one product of the reshaped rows sums a ``stride x stride``
    sub-tile's antidiagonal: every row and every column of the tile is touched at ``1/stride`` of
    the dot products (XAttention's estimate). The softmax runs over those sums, causally, and
    keys past ``tokens`` weigh nothing."""
    b, heads, n, _ = query.shape
    per, blocks = BLOCK // stride, n // BLOCK
    rows = torch.cat([query[:, :, stride - 1 - s :: stride] for s in range(stride)], dim=-1).float()
    cols = torch.cat([key[:, :, s::stride] for s in range(stride)], dim=-1).float()
    mass = rows.new_zeros(b, heads, blocks, blocks)
    index = torch.arange(n // stride, device=query.device)
    step = max(1, 256 // per)  # query blocks per product: bounds the logits at 256 x n/stride a head
    for first in range(0, blocks, step):
        last = min(blocks, first + step)
        logits = rows[:, :, first * per : last * per] @ cols[:, :, : last * per].transpose(-1, -2)
        logits.mul_(scale / stride)
        r, c = index[first * per : last * per, None], index[None, : last * per]
        logits.masked_fill_((c > r) | (c * stride >= tokens), float("-inf"))
        share = logits.softmax(-1).view(b, heads, last - first, per, last, per)
        mass[:, :, first:last, :last] = share.sum((3, 5))
    return mass


def block_mask_of(partial: torch.Tensor, whole: torch.Tensor, mask_mod):
    """The FlexAttention block mask that computes the ``partial`` tiles under ``mask_mod`` and the
    ``whole`` ones without it (both ``[b, H, blocks, blocks]`` booleans)."""
    from torch.nn.attention.flex_attention import BlockMask

    def listed(tiles):
        order = torch.argsort(tiles.to(torch.uint8), dim=-1, descending=True, stable=True)
        return tiles.sum(-1, dtype=torch.int32), order.to(torch.int32)

    return BlockMask.from_kv_blocks(*listed(partial), *listed(whole), BLOCK_SIZE=BLOCK, mask_mod=mask_mod)


@dataclass(frozen=True)
class TriShape:
    """Which keys a prompt of ``tokens`` tokens reads: sinks, ``local`` before each query, and
    everything for its last ``dense_tail`` rows."""

    tokens: int
    local: int
    dense_tail: int
    sink: int = SINK

    def allows(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Whether query ``q`` reads key ``k`` (index tensors; keys past the prompt never)."""
        causal = (k <= q) & (k < self.tokens)
        return causal & ((k < self.sink) | (q - k < self.local) | (q >= self.tokens - self.dense_tail))

    def dense_mask(self) -> torch.Tensor:
        """The ``[tokens, tokens]`` boolean mask (for checks; the forward uses block masks)."""
        index = torch.arange(self.tokens)
        return self.allows(index[:, None], index[None, :])

    def kept_share(self) -> float:
        """The share of the causal query-key pairs the mask keeps (block granularity aside)."""
        n = self.tokens
        return float(self.dense_mask().sum()) / (n * (n + 1) / 2)


@dataclass(frozen=True)
class Band:
    """A sliding-window layer's own mask: each query reads the ``window`` keys up to itself."""

    tokens: int
    window: int

    def kept_share(self) -> float:
        """The share of the causal blocks the band touches."""
        blocks = -(-self.tokens // BLOCK)
        return min(1.0, (self.window // BLOCK + 2) / ((blocks + 1) / 2))


def layout_for(tokens: int, local: int, dense_tail: int) -> TriShape | None:
    """The tri-shape of a ``tokens``-token forward, or None when it would keep so much that SDPA's
    dense attention is faster."""
    if tokens <= SINK + local + dense_tail:
        return None
    # the kept share without building the mask: sinks, a local band and a dense tail of a triangle
    n, body = tokens, tokens - dense_tail
    kept = body * min(local, body) - min(local, body) * (min(local, body) - 1) / 2  # the local band
    kept += max(body - local, 0) * SINK  # sinks outside the band
    kept += dense_tail * (2 * n - dense_tail + 1) / 2  # the tail's rows, whole
    if kept / (n * (n + 1) / 2) > MAX_KEPT_SHARE:
        return None
    return TriShape(tokens, local, dense_tail)


def padded_length(tokens: int) -> int:
    """``tokens`` rounded up to a whole number of blocks, and to at most 1/8 more (shared graphs)."""
    step = max(BLOCK, 1 << max(tokens.bit_length() - 4, 0))
    return -(-tokens // step) * step


@functools.lru_cache(maxsize=8)
def _block_mask(layout: TriShape, length: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, q, k):
        return layout.allows(q, k)

    return create_block_mask(mask_mod, None, None, length, length, device=device, BLOCK_SIZE=BLOCK)


@functools.cache
def _band_mod(window: int):
    """The mask inside a band's edge tiles (one function per window: flex compiles it once)."""

    def inside(batch, head, q, k):
        return (k <= q) & (q - k < window)

    return inside


@functools.lru_cache(maxsize=8)
def _band_mask(window: int, length: int, device: str):
    """The block mask of a ``window``-token band over ``length`` tokens, from each tile's least
    and greatest query-key distance (no ``length x length`` mask is ever built)."""
    blocks = length // BLOCK
    index = torch.arange(blocks, device=device)
    distance = (index[:, None] - index[None, :]) * BLOCK
    nearest, farthest = distance - (BLOCK - 1), distance + (BLOCK - 1)
    touched = (farthest >= 0) & (nearest < window)
    whole = (nearest >= 0) & (farthest < window)
    return block_mask_of((touched & ~whole)[None, None], whole[None, None], _band_mod(window))


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    raise_recompile_limit(64)  # one graph per padded length
    return torch.compile(flex_attention, dynamic=False)


def sparse_attention(query, key, value, layout, scaling: float | None) -> torch.Tensor | None:
    """Attention ``[b, tokens, H, d]`` of ``query`` ``[b, H, tokens, d]`` over ``key``/``value``
    ``[b, H_kv, tokens, d]`` under ``layout`` (padded to :func:`padded_length` inside); None when
    an :class:`XAttention` or :class:`VerticalSlash` layer chose more than :data:`MAX_KEPT_SHARE`
    of its tiles (run it dense)."""
    n = query.shape[2]
    pad = padded_length(n) - n
    if pad:
        query, key, value = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
    gqa = query.shape[1] != key.shape[1]
    if isinstance(layout, TriShape):
        mask = _block_mask(layout, n + pad, str(query.device))
    elif isinstance(layout, Band):
        mask = _band_mask(layout.window, n + pad, str(query.device))
    else:
        grouped = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1) if gqa else key
        chosen = layout.chosen_blocks(query, grouped, scaling)
        blocks = chosen.shape[-1]
        if float(chosen.sum()) > MAX_KEPT_SHARE * chosen.shape[0] * chosen.shape[1] * blocks * (blocks + 1) / 2:
            return None
        diagonal = torch.eye(blocks, dtype=torch.bool, device=chosen.device)
        mask = block_mask_of(chosen & diagonal, chosen & ~diagonal, causal)
    out = _compiled_flex()(query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa)
    return out[:, :, :n].transpose(1, 2).contiguous()


def sparse_prefill_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function of :data:`SPARSE_ATTENTION`: the press's pattern for a forward that
    carries a layout and fills a fresh cache (a sliding-window layer's own window as a
    :class:`Band`), SDPA (the model's own) for everything else."""
    layout = kwargs.pop(LAYOUT_KEYWORD, None)
    dense = (
        layout is None
        or query.shape[2] != layout.tokens
        or key.shape[2] != layout.tokens
        or kwargs.get("softcap") is not None
    )
    if not dense and is_sliding(module, None):
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        layout = Band(layout.tokens, window) if window else None
        dense = layout is None or layout.kept_share() > MAX_KEPT_SHARE
    out = None if dense else sparse_attention(query, key, value, layout, scaling)
    if out is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    return out, None


AttentionInterface.register(SPARSE_ATTENTION, sparse_prefill_attention)
AttentionMaskInterface.register(SPARSE_ATTENTION, sdpa_mask)  # dense forwards get SDPA's masks


class SparsePrefill:
    """A model's attention switched to :data:`SPARSE_ATTENTION` for one press block, and the
    layout of each prompt forward. :meth:`restore` puts the model's own implementation back."""

    def __init__(self, model, press):
        self.configs = list({id(c): c for c in (model.config, model.config.get_text_config())}.values())
        self.own = attention_implementation(model.config)
        if self.own != "sdpa":
            raise ValueError(
                f"sparse_prefill runs on SDPA attention and this model uses {self.own!r}; "
                "load it with attn='sdpa' (--attn sdpa)"
            )
        self.pattern, self.local = press.sparse_prefill, press.sparse_local
        self.threshold, self.stride = press.sparse_threshold, press.sparse_stride
        self.window = press.window_range[1] if press.window_range is not None else press.scorer.window_size
        for config in self.configs:
            set_attention_implementation(config, SPARSE_ATTENTION)

    def layout(self, tokens: int, probe: int) -> TriShape | XAttention | VerticalSlash | None:
        """The layout of a fresh forward of ``tokens`` tokens whose last ``probe`` are a probe
        (None: dense)."""
        tail = self.window + probe
        if self.pattern == "trishape":
            return layout_for(tokens, self.local, tail)
        if tokens < tail + 4 * BLOCK:  # too few blocks outside the dense tail to skip any
            return None
        if self.pattern == "vertical_slash":
            return VerticalSlash(tokens, tail, self.threshold)
        return XAttention(tokens, tail, self.threshold, self.stride)

    def restore(self) -> None:
        for config in self.configs:
            set_attention_implementation(config, self.own)
