"""Cache layers of our own, cache measures, and cache utilities (fork, stack, reserve).

:class:`VarlenLayer`: a layer whose heads keep different numbers of entries, stored without padding.
:class:`ReservedLayer`: a dense layer that appends in place (used while decoding sweeps).
:func:`fork_cache`, :func:`stack_caches`: independent copies and batches of compressed caches.

AdaKV-style allocation gives each KV head its own number of prompt entries. Padding every head
back to the largest one would keep the memory the method claims to free, so this layer stores
the kept prompt entries of all heads in one flat ``[entries, head_dim]`` tensor. Tokens
generated afterwards reach every head alike and are stored densely as a tail.

transformers' attention functions want dense ``[b, H_kv, length, d]`` tensors, so
:meth:`update` returns a padded view built on the fly (freed after the layer's attention), and
the press masks the padding slots per head; the stored tensors never hold padding.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from transformers import DynamicCache
from transformers.cache_utils import BaseQuantizedLayer, CacheLayerMixin, DynamicLayer

from .quantized import stored_bytes, stored_entries
from .state import LayerState, SequenceState, get_state, set_state
from .timing import phased


class VarlenLayer(CacheLayerMixin):
    """Per-head variable-length prompt entries plus a dense tail of generated tokens."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor):
        """Keep, for each (row, head), the first ``lengths`` of ``positions`` ``[b, H, L_max]``."""
        b, heads, width = positions.shape
        d = keys.shape[-1]
        self.width = width
        self.lengths = lengths
        self.valid = torch.arange(width, device=positions.device) < lengths[..., None]  # [b, H, L_max]
        gather = positions[..., None].expand(-1, -1, -1, d)
        self.flat_keys = keys.gather(2, gather)[self.valid]  # [entries, d]
        self.flat_values = values.gather(2, gather)[self.valid]
        # where each padded slot reads from: its flat row, or the zero row appended at the end
        slot = torch.full((b, heads, width), self.flat_keys.shape[0], dtype=torch.long, device=positions.device)
        slot[self.valid] = torch.arange(self.flat_keys.shape[0], device=positions.device)
        self.slot = slot
        self.tail_keys = keys[..., :0, :]
        self.tail_values = values[..., :0, :]
        self.device = keys.device
        self.is_initialized = True

    # -- storage ------------------------------------------------------------------------------
    def stored_elements(self) -> int:
        """Key elements actually stored (the same count again for values)."""
        return self.flat_keys.numel() + self.tail_keys.numel()

    def entries(self) -> int:
        """Key entries (tokens x heads) of batch row 0."""
        return int(self.lengths[0].sum()) + self.tail_keys.shape[1] * self.tail_keys.shape[2]

    def _dense(self, flat: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        table = torch.cat([flat, flat.new_zeros(1, flat.shape[-1])])
        return torch.cat([table[self.slot], tail], dim=-2)

    @property
    def keys(self) -> torch.Tensor:
        """A padded dense view ``[b, H, L_max + generated, d]`` (built on demand, not stored)."""
        return self._dense(self.flat_keys, self.tail_keys)

    @property
    def values(self) -> torch.Tensor:
        return self._dense(self.flat_values, self.tail_values)

    # -- the transformers cache-layer interface --------------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:  # built initialized
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.tail_keys = torch.cat([self.tail_keys, key_states], dim=-2)
        self.tail_values = torch.cat([self.tail_values, value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.width + self.tail_keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise ValueError(
            "the adakv allocator's per-head-length cache cannot be reordered or repeated (beam search, several "
            "return sequences); decode one sequence per prompt, or use another allocator"
        )

    batch_repeat_interleave = batch_select_indices = reorder_cache

    def reset(self) -> None:
        raise NotImplementedError("a compressed cache cannot be reset; start a new DynamicCache")


def _dense(layer) -> bool:
    return getattr(layer, "keys", None) is not None and layer.keys.dim() == 4


def cache_entries(cache) -> int:
    """Key entries (tokens x KV heads) stored for batch row 0, over all layers."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, VarlenLayer):
            total += layer.entries()
        elif isinstance(layer, BaseQuantizedLayer):
            total += stored_entries(layer)
        elif _dense(layer):
            total += layer.keys.shape[1] * layer.keys.shape[2]
    return total


def cache_bytes(cache) -> int:
    """Bytes of keys and values really stored, all batch rows (quantized: codes, scales, zero points)."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, VarlenLayer):
            total += 2 * layer.stored_elements() * layer.flat_keys.element_size()
        elif isinstance(layer, BaseQuantizedLayer):
            total += stored_bytes(layer)
        elif _dense(layer):
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


class ReservedLayer(DynamicLayer):
    """A dense layer with room reserved for the tokens still to come.

    transformers' dynamic layer concatenates on every appended token, copying the whole layer:
    for a batch of compressed caches decoded together that copy costs more than the model's
    matrix products. This layer writes new tokens into spare capacity instead (doubling it
    when full) and exposes ``keys``/``values`` as views of the filled part. Code that assigns
    new ``keys``/``values`` (eviction) is honoured: the next update adopts them.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self._adopt(keys, values, extra)

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        length = keys.shape[-2]
        shape = (*keys.shape[:-2], length + max(extra, 1), keys.shape[-1])
        self._keys = keys.new_empty(shape)
        self._values = values.new_empty(shape[:-1] + (values.shape[-1],))
        self._keys[..., :length, :] = keys
        self._values[..., :length, :] = values
        self._length = length
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[..., : self._length, :]
        self.values = self._values[..., : self._length, :]
        self._exposed = (self.keys, self.values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        added = key_states.shape[-2]
        if self.keys is not self._exposed[0] or self.values is not self._exposed[1]:
            self._adopt(self.keys, self.values, added)  # replaced from outside since the last update
        if self._length + added > self._keys.shape[-2]:
            self._adopt(self.keys, self.values, max(added, self._keys.shape[-2]))
        self._keys[..., self._length : self._length + added, :] = key_states
        self._values[..., self._length : self._length + added, :] = value_states
        self._length += added
        self._expose()
        return self.keys, self.values


def reserve(cache, extra: int):
    """``cache`` with every plain dense layer replaced by a :class:`ReservedLayer` holding room for
    ``extra`` more tokens (the layers' current tensors are copied; other caches sharing them are
    unaffected). Sliding and variable-length layers are left as they are."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and getattr(layer, "is_initialized", False) and layer.keys.numel():
            cache.layers[i] = ReservedLayer(layer.keys, layer.values, extra)
    return cache


def select_rows(cache, rows: list[int]) -> bool:
    """Keep only batch ``rows`` of ``cache``, in place, so finished rows stop costing compute.

    Every dense layer and every per-row tensor of the sequence state are indexed alike, so the
    remaining rows decode exactly as before. Returns False, changing nothing, for a cache that
    cannot be split by rows (variable-length or quantized layers, tracked origins).
    """
    state = get_state(cache)
    dense = all(_dense(layer) for layer in cache.layers if getattr(layer, "is_initialized", False))
    if not dense or any(isinstance(layer, (VarlenLayer, BaseQuantizedLayer)) for layer in cache.layers):
        return False
    if state is not None and state.origins is not None:
        return False
    index = torch.tensor(rows, dtype=torch.long, device=cache.layers[0].keys.device)
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        keys, values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        if isinstance(layer, ReservedLayer):  # keep the room already reserved
            layer._adopt(keys, values, layer._keys.shape[-2] - layer._length)
        else:
            layer.keys, layer.values = keys, values
    if state is not None:

        def pick(t):
            return None if t is None else t.index_select(0, index.to(t.device))

        state.next_pos, state.prompt_mask = pick(state.next_pos), pick(state.prompt_mask)
        # new records, not edits: forks of this cache share the old ones
        state.layers = {i: dataclasses.replace(ls, valid=pick(ls.valid)) for i, ls in state.layers.items()}
        state.memory = {i: pick(m) for i, m in state.memory.items()}
    return True


def rewindable(cache) -> bool:
    """Whether :func:`rewind_rows` can forget tokens of ``cache``: every layer dense and full-attention
    (a sliding window has already dropped what it would need back), each with its layer state."""
    state = get_state(cache)
    if state is None or state.next_pos is None or state.origins is not None:
        return False
    for index, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer or not getattr(layer, "is_initialized", False):
            return False
        if getattr(layer, "is_sliding", False) or index not in state.layers:
            return False
    return True


def rewind_rows(cache, appended: int, keep: list[int]) -> None:
    """Forget, in place, all but the first ``keep[r]`` of the last ``appended`` entries of row ``r``
    in every layer, as if only those tokens had been fed (the cache must be :func:`rewindable`).

    Layers are cut to the longest kept run; a row keeping fewer has the rest masked as padding
    through its layer state, and every row's next position goes back to just after its last kept
    token, so the row decodes on exactly as if fed only its kept tokens."""
    state = get_state(cache)
    longest = max(keep)
    layers = {}
    for index, layer in enumerate(cache.layers):
        base = layer.keys.shape[-2] - appended
        width = base + longest
        layer.keys, layer.values = layer.keys[..., :width, :], layer.values[..., :width, :]
        old = state.layers[index]
        if min(keep) == longest:
            layers[index] = old
            continue
        valid = torch.ones(len(keep), layer.keys.shape[1], width, dtype=torch.bool, device=layer.keys.device)
        if old.valid is not None:
            valid[..., : old.kept] = old.valid
        for row, kept in enumerate(keep):
            valid[row, :, base + kept :] = False
        # new records, not edits: forks of this cache share the old ones
        layers[index] = dataclasses.replace(old, kept=width, valid=valid)
    state.layers = layers
    state.next_pos = state.next_pos - torch.tensor([appended - k for k in keep], device=state.next_pos.device)


def fork_cache(cache) -> DynamicCache:
    """A cache that shares tensors with ``cache`` but not its future.

    transformers' dynamic layers replace (never write into) their tensors when tokens are
    appended, and compression replaces them too, so shallow layer copies are independent.
    """
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    state = get_state(cache)
    if state is not None:
        set_state(forked, state.copy())
    return forked


@phased("stack")
def stack_caches(caches: list, device) -> DynamicCache:
    """One batched cache whose rows are ``caches`` (each of batch 1), padded per layer.

    Padding slots are masked through the sequence state, so each row attends to exactly the
    entries its own cache holds.
    """
    stacked = fork_cache(caches[0])
    layers, states = {}, {}
    for index in range(len(caches[0].layers)):
        keys = [c.layers[index].keys for c in caches]
        values = [c.layers[index].values for c in caches]
        width = max(k.shape[-2] for k in keys)
        valid = []
        for c, k in zip(caches, keys):
            state = get_state(c)
            layer_state = state.layers.get(index) if state is not None else None
            v = torch.zeros(1, k.shape[1], width, dtype=torch.bool, device=k.device)
            v[..., : k.shape[-2]] = True
            if layer_state is not None and layer_state.valid is not None:
                v[..., : layer_state.kept] &= layer_state.valid
            valid.append(v)
        layer = stacked.layers[index]
        if isinstance(layer, VarlenLayer) or not getattr(layer, "is_sliding", False):
            layer = DynamicLayer()
            layer.lazy_initialization(keys[0], values[0])
        layer.keys = torch.cat([_pad_to(k, width) for k in keys])
        layer.values = torch.cat([_pad_to(v, width) for v in values])
        layers[index] = layer
        if not getattr(layer, "is_sliding", False):
            all_valid = torch.cat(valid)
            states[index] = LayerState(
                prompt_tokens=width, kept=width, valid=None if bool(all_valid.all()) else all_valid
            )
    stacked.layers = [layers[i] for i in range(len(caches[0].layers))]
    # each row goes on from its own next position (re-indexed caches differ from the prompt length)
    row_states = [get_state(c) for c in caches]
    zero = torch.zeros(1, dtype=torch.long, device=device)
    next_pos = torch.cat([zero if st is None or st.next_pos is None else st.next_pos for st in row_states])
    set_state(stacked, SequenceState(layers=states, next_pos=next_pos, budgets={i: 0 for i in states}))
    return stacked


def _pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[-2]))
