"""Where the time goes: named phases that library code marks and a benchmark can record.

Library code marks a phase boundary with ``with phase("prefill"):`` or the decorator
``@phased("prefill")``; a benchmark collects seconds and counts per phase name::

    from restkv.timing import record_phases

    with record_phases() as phases:
        engine.run(ids, 32, eos)
    phases.seconds["prefill"], phases.counts["decode"]

Nobody recording (the usual case) costs one context-variable read per marked call. The
recorders live in a :mod:`contextvars` variable, so a recording sees only the phases run in its
own thread (or asyncio task), never another's. Times are inclusive, in host wall time
(``time.perf_counter``, no device synchronisation). A phase run inside an open phase of the
same name is part of it and is counted once; phases of other names nest freely (a chunk's
``chunk_compress`` inside ``prefill`` counts towards both).

The phases the library marks:

``prefill``          the evaluation engine's prompt forward (shared or streamed in chunks)
``compress``         the engine building compressed caches from the recorded prefill
``stack``            compressed caches stacked into the rows of one decoding batch
``decode``           the engine's greedy decoding under a press (compressed caches)
``full_decode``      the engine's greedy decoding without a press (the full cache's reference)
``teacher_forcing``  the engine feeding known tokens at once (fidelity, rows decoding from a reference)
``chunk_compress``   one layer of one chunk cut back to its budget during chunked prefill
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["PhaseTimes", "phase", "phased", "record_phases"]


class PhaseTimes:
    """Seconds and calls per phase name, filled while its :func:`record_phases` block runs."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.counts: defaultdict[str, int] = defaultdict(int)
        self._lock = threading.Lock()  # a copied context may share one recorder between threads

    def add(self, name: str, seconds: float) -> None:
        """Count one call of phase ``name`` that took ``seconds``."""
        with self._lock:
            self.seconds[name] += seconds
            self.counts[name] += 1

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}: {self.seconds[name]:.3f} s / {self.counts[name]}" for name in self.seconds)
        return f"PhaseTimes({parts})"


#: the recorders of the current context, innermost last
_RECORDERS: ContextVar[tuple[PhaseTimes, ...]] = ContextVar("restkv_phase_recorders", default=())
#: the phase names open in the current context (a repeated name is not counted again)
_OPEN: ContextVar[frozenset[str]] = ContextVar("restkv_open_phases", default=frozenset())
_NOT_RECORDING = contextlib.nullcontext()


@contextlib.contextmanager
def record_phases() -> Iterator[PhaseTimes]:
    """Record every phase run in this context until the block ends; blocks nest (each sees its own)."""
    times = PhaseTimes()
    token = _RECORDERS.set((*_RECORDERS.get(), times))
    try:
        yield times
    finally:
        _RECORDERS.reset(token)


class _Timed:
    """One recorded run of a phase: adds its duration to every recorder open when it started."""

    __slots__ = ("name", "recorders", "start", "token")

    def __init__(self, name: str, recorders: tuple[PhaseTimes, ...]) -> None:
        self.name, self.recorders = name, recorders

    def __enter__(self) -> None:
        self.token = _OPEN.set(_OPEN.get() | {self.name})
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self.start
        _OPEN.reset(self.token)
        for times in self.recorders:
            times.add(self.name, elapsed)


def phase(name: str) -> contextlib.AbstractContextManager:
    """A context manager marking phase ``name``; a shared no-op when nobody records."""
    recorders = _RECORDERS.get()
    if not recorders or name in _OPEN.get():
        return _NOT_RECORDING
    return _Timed(name, recorders)


def phased(name: str | Callable[[dict], str]):
    """Decorator: every call of the function is phase ``name``.

    ``name`` may be a function of the call's arguments (a dict from parameter name to value,
    defaults filled in) that returns the phase name, for a function whose calls belong to
    different phases (the engine's decoding with and without a press). It is only called while
    something records.
    """

    def decorate(fn):
        signature = inspect.signature(fn) if callable(name) else None

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not _RECORDERS.get():
                return fn(*args, **kwargs)
            if signature is not None:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                label = name(bound.arguments)
            else:
                label = name
            with phase(label):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
