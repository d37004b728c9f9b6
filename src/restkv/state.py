"""What a press knows about one sequence, kept on its cache, with typed accessors.

The state lives on the cache (not on the press or the ``with`` block), so a compressed cache
decodes correctly in any later press block and two caches never share state. Every module
reads and writes it through :func:`get_state`, :func:`ensure_state` and :func:`set_state`,
never through ad-hoc attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: the attribute of a transformers cache that carries its :class:`SequenceState`
_ATTRIBUTE = "restkv_state"


@dataclass
class LayerState:
    """A compressed layer: how many prompt entries it kept and which of them are real tokens."""

    prompt_tokens: int
    kept: int
    #: ``[b, H_kv, kept]`` bool, False where a padding token was kept to fill the budget;
    #: None when every kept entry is real (the common case)
    valid: torch.Tensor | None = None


@dataclass
class PressStats:
    """What the last prefill did, for reports: prompt length and entries kept per compressed layer."""

    prompt_tokens: int = 0
    #: KV entries (tokens x KV heads, batch row 0) kept in each compressed layer
    entries_per_layer: dict[int, int] = field(default_factory=dict)
    heads_per_layer: dict[int, int] = field(default_factory=dict)

    @property
    def kept_entries(self) -> int:
        """KV entries (tokens x KV heads) kept over all compressed layers, per batch row."""
        return sum(self.entries_per_layer.values())


@dataclass
class SequenceState:
    """Per-sequence state of a compressed cache."""

    layers: dict[int, LayerState] = field(default_factory=dict)
    #: next position id per batch row (the cache is shorter than the sequence once compressed)
    next_pos: torch.Tensor | None = None
    #: ``[b, n]`` bool, False at the prompt's padding; None without padding
    prompt_mask: torch.Tensor | None = None
    #: entries kept per KV head in each compressible layer, in layer order
    budgets: dict[int, int] | None = None
    #: per layer, what the scorer remembers for decoding-time eviction (its ``remember`` hook:
    #: the last window queries, or H2O's accumulated attention)
    memory: dict[int, torch.Tensor] = field(default_factory=dict)
    #: this prompt's observation window when the press has ``window_size="auto"``
    window: int | None = None
    #: the prompt tokens behind the kept entries, when :func:`restkv.origins.track_origins` is on
    origins: object | None = None

    def layer_position(self, index: int) -> tuple[int, int]:
        """``(position, count)`` of layer ``index`` among the compressed layers (for depth-aware methods)."""
        order = list(self.budgets or ())
        return order.index(index), len(order)

    def copy(self) -> SequenceState:
        """A state whose per-layer tables can change without touching this one's."""
        return SequenceState(
            layers=dict(self.layers),
            next_pos=self.next_pos,
            prompt_mask=self.prompt_mask,
            budgets=self.budgets,
            memory=dict(self.memory),
            window=self.window,
        )


def get_state(cache) -> SequenceState | None:
    """The cache's state, or None for a cache no press has touched."""
    return getattr(cache, _ATTRIBUTE, None) if cache is not None else None


def set_state(cache, state: SequenceState | None) -> None:
    setattr(cache, _ATTRIBUTE, state)


def layer_state(cache, index: int) -> LayerState | None:
    """Layer ``index``'s compression record, or None when it was not compressed."""
    state = get_state(cache)
    return state.layers.get(index) if state is not None else None


def ensure_state(cache) -> SequenceState:
    """The cache's state, created fresh for an empty cache.

    A state set on an empty cache before prefill (carrying the prompt's auto window) is kept;
    a stale one (layers or positions from an earlier sequence) is replaced.
    """
    state = get_state(cache)
    if state is None or (cache.get_seq_length() == 0 and (state.layers or state.next_pos is not None)):
        state = SequenceState()
        set_state(cache, state)
    return state
