"""Which prompt tokens a compressed cache still holds (diagnostics: is the needle still there?).

Turn tracking on with :func:`track_origins` on a cache before its prefill. Every compression
of a dense layer (one-shot, chunk by chunk with or without a question probe, decode-time
eviction) then records the prompt token each kept entry came from, and
:meth:`KeptOrigins.share` says how much of a span of the prompt survived. The per-head-length
(``adakv``) layout is not followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .state import ensure_state


@dataclass
class KeptOrigins:
    """Per compressed layer, the prompt token index of each kept entry (``-1`` for entries that
    are not prompt tokens: a question probe, generated tokens)."""

    #: layer index -> ``[b, H_kv, kept]`` token indices
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    #: layer index -> prompt tokens this layer has been fed so far
    seen: dict[int, int] = field(default_factory=dict)

    def update(self, index: int, entries: int, idx: torch.Tensor, probe: int = 0, prompt: bool = True) -> None:
        """Layer ``index`` held ``entries`` entries (the last ``probe`` a probe) and keeps ``idx``.

        Entries added since the last update are the next prompt tokens in order (or, with
        ``prompt=False``, generated tokens).
        """
        b, heads = idx.shape[:2]
        held = self.kept.get(index, torch.empty(b, heads, 0, dtype=torch.long, device=idx.device))
        added = entries - held.shape[-1] - probe
        seen = self.seen.get(index, 0)
        fresh = torch.arange(seen, seen + added, device=idx.device) if prompt else torch.full((added,), -1)
        tail = torch.full((probe,), -1, device=idx.device)
        every = torch.cat([held, torch.cat([fresh.to(idx.device), tail]).expand(b, heads, -1)], dim=-1)
        self.kept[index] = every.gather(-1, idx)
        self.seen[index] = seen + (added if prompt else 0)

    def share(self, positions, row: int = 0) -> float:
        """Share of the prompt tokens at ``positions`` still cached, averaged over compressed
        layers and KV heads. Tokens a layer received after its last compression count as cached."""
        if not self.kept:
            return 1.0
        wanted = torch.as_tensor(list(positions), dtype=torch.long)
        shares = []
        for index, held in self.kept.items():
            after = wanted >= self.seen[index]
            for head in held[row].cpu():
                shares.append(float((torch.isin(wanted, head) | after).float().mean()))
        return sum(shares) / len(shares)


def track_origins(cache) -> KeptOrigins:
    """Start recording the origins of ``cache``'s kept entries (call before its prefill)."""
    state = ensure_state(cache)
    state.origins = KeptOrigins()
    return state.origins
