"""What the plugin has done to each request, shared by the model runner (which compacts a
request's cache) and the scheduler (which frees its blocks and sizes what it allocates next).

Both live in vLLM's engine-core process when the engine has one worker (the plugin refuses
other engines), so one object per process is the channel between them.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Compaction:
    """One request's compression, as the model runner did it."""

    request_id: str
    prompt_tokens: int
    kept: int  # entries per layer and KV head after compaction
    blocks_kept: int  # the request's blocks after compaction
    blocks_before: int
    indices: dict[int, torch.Tensor]  # layer -> kept positions [H_kv, kept]
    written: bool  # False when only observed (decoding goes on over the full cache)

    @property
    def dropped(self) -> int:
        return self.prompt_tokens - self.kept if self.written else 0


class Ledger:
    """Per request: entries dropped from its cache; compactions the scheduler has not applied."""

    def __init__(self, history: int = 256):
        self._lock = threading.Lock()
        self._dropped: dict[str, int] = {}
        self._pending: dict[str, Compaction] = {}
        self.history: deque = deque(maxlen=history)  # the last compactions, with the pool's free count after

    def compacted(self, compaction: Compaction) -> None:
        """The runner compacted (or only scored) a request; the scheduler applies it after the step."""
        with self._lock:
            if compaction.written:
                self._dropped[compaction.request_id] = compaction.dropped
                self._pending[compaction.request_id] = compaction
            else:
                self.history.append((compaction, None))

    def dropped(self, request_id: str) -> int:
        """Entries that are no longer in the request's cache (0 when it was not compacted)."""
        return self._dropped.get(request_id, 0)

    def take_pending(self) -> list[Compaction]:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        return pending

    def applied(self, compaction: Compaction, free_after: int) -> None:
        """The scheduler gave the compaction's emptied blocks back; ``free_after``: the pool's free count."""
        with self._lock:
            self.history.append((compaction, free_after))

    def forget(self, request_id: str) -> None:
        """The request's blocks were all freed (it finished, was aborted or preempted)."""
        with self._lock:
            self._dropped.pop(request_id, None)
            self._pending.pop(request_id, None)

    def active(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    def clear_history(self) -> None:
        with self._lock:
            self.history.clear()


LEDGER = Ledger()
