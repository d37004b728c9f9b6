"""KeyDiff: keep the tokens whose keys point away from the layer's average key direction.

Follows KeyDiff (arXiv 2504.15364), as NVIDIA ``kvpress``'s ``KeyDiffPress`` scores it: the anchor is the mean of the unit-normalised keys
of a head, and a token scores the negative cosine similarity of its key to that anchor. The
scores read no queries, so the method is query-agnostic. The paper evicts block by block; this
scores the whole prompt at once (kvpress's press, not its ``BlockPress`` wrapping).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional as F

from .base import Scorer


@dataclass
class KeyDiffScorer(Scorer):
    """Negative cosine similarity of each key to its head's mean unit key."""

    name = "keydiff"
    query_span = "none"

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """Per-KV-head scores ``[b, H_kv, n - window]``: minus each key's cosine similarity to the
        head's mean unit key (padding left out of the mean); reads no queries."""
        n = keys.shape[-2]
        k = keys.float()
        unit = F.normalize(k, p=2, dim=-1)
        if key_mask is None:
            anchor = unit.mean(dim=-2, keepdim=True)
        else:  # padding keys are not part of the prompt: they do not pull the anchor
            real = key_mask[:, None, :, None].to(unit.device, unit.dtype)
            anchor = (unit * real).sum(dim=-2, keepdim=True) / real.sum(dim=-2, keepdim=True).clamp_min(1)
        # the anchor is every key's (the window's too); only the prefix is ranked
        return -F.cosine_similarity(k[..., : n - min(self.window_size, n), :], anchor, dim=-1)
