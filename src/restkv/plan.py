"""Prefill plans: how a prompt is fed, made explicit and handed to the press's hooks.

A prompt goes through the model in one forward, or in chunks (``chunk_size``), optionally with
its question kept out of the chunks and appended to each as a probe (question-aware streaming).
:class:`PrefillPlan` lays out those forwards; each forward carries its :class:`PrefillStep` as
the keyword ``restkv_prefill``, which transformers passes down to every attention layer, so the
hooks read what this forward is from the forward itself, never from flags left on the cache.
A forward without one (``model.generate`` under a press) is a whole prompt in one piece.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .checks import check_int, check_optional_int

#: the forward keyword that carries a :class:`PrefillStep`
STEP_KEYWORD = "restkv_prefill"


@dataclass
class PrefillStep:
    """One forward of a prefill.

    Attributes:
        prompt_length: the whole prompt's tokens (budgets are planned for it at the first step).
        streaming: this forward is one piece of a prompt that arrives in pieces, so it is
            compressed again after it even though the cache already holds earlier pieces.
        probe: how many trailing tokens of this forward are a question probe, removed after it.
        next_after: set during the forward when re-indexing moved the kept entries: the next
            position once the forward ends.
    """

    prompt_length: int
    streaming: bool = False
    probe: int = 0
    next_after: torch.Tensor | None = None


def step_of(kwargs: dict) -> PrefillStep | None:
    """The step a forward carries (the hooks' ``kwargs``), or None."""
    return kwargs.get(STEP_KEYWORD)


@dataclass(frozen=True)
class PrefillPlan:
    """How a prompt of ``n`` tokens is fed: in one piece, in chunks, or in chunks probed by its question.

    Args:
        chunk_size: tokens per chunk; None feeds the prompt in one forward.
        question_tokens: with ``chunk_size``, the prompt's last tokens are its question: it is kept
            out of the chunks, follows each as a probe, and is fed for real after the last one.
            When the context fits one chunk, the prompt is fed in one forward (the question is
            then simply the end of the prompt).
        probe: tokens ``[1, p]`` that follow the whole prompt in its forward and are removed after
            it, their queries being the observation window (a reconstruction probe: the context
            read again after a repeat instruction, :mod:`restkv.probes`). Not with chunks.
    """

    chunk_size: int | None = None
    question_tokens: int = 0
    probe: torch.Tensor | None = None

    def __post_init__(self):
        check_optional_int("chunk_size", self.chunk_size, 1)
        check_int("question_tokens", self.question_tokens, 0)
        if self.probe is not None and self.chunk_size is not None:
            raise ValueError("a reconstruction probe follows the whole prompt, so it does not combine with chunks yet")

    def forwards(self, input_ids: torch.Tensor) -> Iterator[tuple[torch.Tensor, int, PrefillStep]]:
        """``(ids, start, step)`` per forward: the tokens, the position of the first prompt token
        they continue from, and the step the forward carries."""
        n = input_ids.shape[1]
        if self.probe is not None:
            probe = self.probe.to(input_ids.device).expand(input_ids.shape[0], -1)
            yield torch.cat([input_ids, probe], dim=1), 0, PrefillStep(n, probe=probe.shape[1])
            return
        question, size = self._layout(n)
        context, probe = input_ids[:, : n - question], input_ids[:, n - question :]
        starts = range(0, context.shape[1], size)
        for start in starts:
            chunk = context[:, start : start + size]
            if question:
                chunk = torch.cat([chunk, probe], dim=1)
            yield chunk, start, PrefillStep(n, streaming=len(starts) > 1, probe=question)
        if question:
            yield probe, context.shape[1], PrefillStep(n, streaming=False)

    def count(self, n: int) -> int:
        """How many forwards a prompt of ``n`` tokens takes."""
        if self.probe is not None:
            return 1
        question, size = self._layout(n)
        return -(-(n - question) // size) + (1 if question else 0)

    def _layout(self, n: int) -> tuple[int, int]:
        """The probe's length and the chunk size for an ``n``-token prompt: a context that fits
        one chunk goes in one forward with its question, as an unchunked prompt does."""
        question = self.question_tokens if self.chunk_size else 0
        if question and n - question <= self.chunk_size:
            return 0, n
        return question, self.chunk_size or n
