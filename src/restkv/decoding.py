"""The greedy decoding loop, with one stop rule, shared by every way of decoding.

Whatever runs a decoding step (the eager model on a cache under the press hooks, static
buffers compiled or not, a batch of compressed caches, rows resuming from the full cache's
answer), the loop around it is the same: choose each row's next token, decide whether the row
is done, let finished rows leave the batch, feed the rest. That loop is :func:`greedy`; a
caller supplies only a *step function*, ``step(tokens [rows, 1]) -> logits [rows, vocab]``, that
feeds one token per row still in the batch and keeps its own positions.

When a row stops is :class:`StopRule`: an end token, the task's answer complete (read through
the caller's text reader), or ``max_new_tokens``.

This module imports nothing but torch and the standard library, so that a script running in
another project's environment (the kvpress peer, with an older transformers) can load it by
file path and decode exactly as restkv does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class StopRule:
    """When a row stops decoding.

    Args:
        max_new_tokens: the most tokens a row generates (a row's prefix counts towards it).
        eos_ids: end tokens; a row stops after writing one (it is kept in the row's tokens).
        answer: an object with ``complete(text) -> bool`` (e.g.
            :class:`restkv.eval.tasks.stops.AnswerStop`); a row stops once its text completes it.
        text: how a row's token ids read as text, for ``answer``.
    """

    max_new_tokens: int
    eos_ids: frozenset = field(default_factory=frozenset)
    answer: object | None = None
    text: Callable[[list[int]], str] | None = None

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a whole number >= 0, got {self.max_new_tokens!r}")
        if self.answer is not None and self.text is None:
            raise ValueError("an answer stop needs a text reader (token ids -> text)")
        self.eos_ids = frozenset(self.eos_ids)

    def reason(self, tokens: list[int]) -> str | None:
        """Why decoding stops after the last of ``tokens`` (``"eos"``, ``"answer"``, ``"limit"``), or None."""
        if tokens[-1] in self.eos_ids:
            return "eos"
        if self.answer is not None and self.answer.complete(self.text(tokens)):
            return "answer"
        return "limit" if len(tokens) >= self.max_new_tokens else None

    def first_stop(self, tokens: list[int]) -> tuple[int, str] | None:
        """``(index, reason)`` of the first of ``tokens`` at which decoding stops, as :func:`greedy`
        would stop there; None when none does."""
        for i in range(len(tokens)):
            why = self.reason(tokens[: i + 1])
            if why is not None:
                return i, why
        return None


@dataclass
class Decoded:
    """What :func:`greedy` produced."""

    tokens: list[list[int]]  # per row: its prefix, then its tokens up to and including the one it stopped at
    stopped: list[str]  # per row: "eos", "answer" or "limit"
    logits: torch.Tensor | None  # with keep_logits: [steps + 1, rows, vocab], the given logits first
    ms_per_step: float  # wall milliseconds per step function call (the whole loop over the calls)
    steps: int  # step function calls


@torch.inference_mode()
def greedy(
    step: Callable[[torch.Tensor], torch.Tensor],
    first_logits: torch.Tensor,
    stop: StopRule,
    *,
    prefixes: list[list[int]] | None = None,
    drop_rows: Callable[[list[int]], bool] | None = None,
    keep_logits: bool = False,
    started: float | None = None,
) -> Decoded:
    """Greedy decoding of every row from its next-token logits ``first_logits`` ``[rows, vocab]``.

    Each round every unfinished row takes its argmax token and is checked against ``stop``;
    once all rows are done the loop ends, so ``step`` is never called after the last token
    (with ``max_new_tokens=1`` it is not called at all). Otherwise ``step`` is fed one token per
    row still in the batch.

    Args:
        step: feeds ``tokens`` ``[batch rows, 1]`` and returns the next logits ``[batch rows, vocab]``.
        prefixes: per row, tokens it has already generated (the step side's state already holds
            them); they count towards the limit and the answer and lead the row's tokens.
        drop_rows: called with the batch rows still going (indices into the current batch) when
            some have finished; returns True if the step side dropped the others, which then stop
            costing compute, or False to keep feeding them (their tokens are ignored).
        keep_logits: also return every round's logits ``[steps + 1, rows, vocab]`` (in
            ``first_logits``' dtype); a finished row keeps the logits it stopped at.
        started: a ``time.perf_counter()`` reading the timing starts from (default: now), for
            callers that count setting the step up as decoding time.
    """
    rows = first_logits.shape[0]
    if prefixes is not None and len(prefixes) != rows:
        raise ValueError(f"{len(prefixes)} prefixes for {rows} rows: give one per row")
    started = time.perf_counter() if started is None else started
    tokens = [list(p) for p in prefixes] if prefixes is not None else [[] for _ in range(rows)]
    stopped = ["limit"] * rows
    done = [False] * rows
    batch = list(range(rows))  # the original row of each batch row
    logits, kept, steps = first_logits, ([first_logits] if keep_logits else None), 0
    for _ in range(stop.max_new_tokens):
        chosen = logits.argmax(-1)
        for i, r in enumerate(batch):
            if not done[r]:
                tokens[r].append(int(chosen[i]))
                why = stop.reason(tokens[r])
                if why is not None:
                    done[r], stopped[r] = True, why
        going = [i for i, r in enumerate(batch) if not done[r]]
        if not going:
            break
        if len(going) < len(batch) and drop_rows is not None and drop_rows(going):
            batch, chosen = [batch[i] for i in going], chosen[going]
        logits = step(chosen[:, None])
        steps += 1
        if keep_logits:
            latest = kept[-1].clone()  # finished rows keep their last logits
            live = [i for i, r in enumerate(batch) if not done[r]]
            latest[[batch[i] for i in live]] = logits[live].to(latest.dtype)
            kept.append(latest)
    ms = (time.perf_counter() - started) * 1000 / max(steps, 1)
    return Decoded(tokens, stopped, torch.stack(kept) if keep_logits else None, ms, steps)
