"""How long a run will take on this machine, said before it starts.

A long command measures the model here first (one forward over a prompt of the run's length,
capped at :data:`CALIBRATION_TOKENS`, and one decoding step after it) and multiplies by the work
it is about to do: a prefill per prompt, and per configuration a compression and its answer's
decoding steps. The result is an estimate, printed as one stderr line before the work; the
progress bar then shows the real rate.

:data:`COMPRESS_SHARE` (a compression as a share of the prompt's prefill) and
:data:`STEPS_SHARE` (the decoding steps a configuration really runs, as a share of the answer
budget, since answers stop early) are round figures; ``benchmarks/results/forecast`` measures
what they give: within 20% of the demo's and tune's time, twice a short NIAH eval's.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

#: longest calibration prefill: longer prompts are extrapolated linearly from it
CALIBRATION_TOKENS = 1024
#: a configuration's compression, as a share of its prompt's prefill
COMPRESS_SHARE = 0.25
#: the decoding steps a configuration runs, as a share of its answer budget (answers stop early)
STEPS_SHARE = 0.5


#: rows of the batched decoding step timed (what ``batch="auto"`` decodes together, about)
BATCH_ROWS = 8


@dataclass(frozen=True)
class Rates:
    """What one prefill of ``tokens`` tokens, one decoding step after it, and one step of
    :data:`BATCH_ROWS` rows (per row) took here."""

    tokens: int
    prefill_s: float
    step_s: float
    row_step_s: float = 0.0  # one row's share of a batched step (0: not measured, use step_s)

    def per_config_step(self, batch) -> float:
        """Seconds a configuration's decoding step costs when ``batch`` rows decode together."""
        return self.step_s if batch == 1 or not self.row_step_s else self.row_step_s

    def prefill(self, length: int) -> float:
        """Seconds for a prefill of ``length`` tokens (linear beyond the calibration length)."""
        return self.prefill_s * length / self.tokens


@torch.no_grad()
def measure(model, length: int) -> Rates:
    """Time one prefill of ``min(length, CALIBRATION_TOKENS)`` random tokens and one decoding step."""
    tokens = max(1, min(length, CALIBRATION_TOKENS))
    vocab = model.config.get_text_config().vocab_size
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    model(input_ids=ids[:, :8])  # a first call pays one-time costs (lazy initialisation) a run does not
    cache = DynamicCache(config=model.config)
    began = time.perf_counter()
    model(input_ids=ids, cache=cache, use_cache=True)
    prefill_s = time.perf_counter() - began
    began = time.perf_counter()
    model(input_ids=ids[:, -1:], cache=cache, use_cache=True)
    step_s = time.perf_counter() - began
    cache.batch_repeat_interleave(BATCH_ROWS)
    began = time.perf_counter()
    model(input_ids=ids[:, -1:].expand(BATCH_ROWS, 1), cache=cache, use_cache=True)
    return Rates(tokens, prefill_s, step_s, (time.perf_counter() - began) / BATCH_ROWS)


def sweep_seconds(rates: Rates, prompts: list[tuple[int, int, int]], batch=1) -> float:
    """Seconds for ``prompts``, each ``(prompt tokens, answer budget, configurations)``: one
    prefill, then per configuration a compression and its answer's decoding steps (``batch``:
    the rows decoded together, as the engine's ``batch``)."""
    step = rates.per_config_step(batch)
    total = 0.0
    for length, new_tokens, configs in prompts:
        prefill = rates.prefill(length)
        total += prefill + configs * (COMPRESS_SHARE * prefill + STEPS_SHARE * new_tokens * step)
    return total


def duration(seconds: float) -> str:
    """``42 s``, ``17 min`` or ``2.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def announce(what: str, seconds: float, rates: Rates) -> str:
    """The stderr line said before a run: the estimate and what it rests on."""
    line = (
        f"restkv: {what}; about {duration(seconds)} here (estimate {seconds:.0f} s: a {rates.tokens}-token prefill took "
        f"{rates.prefill_s:.2f} s and a decoding step {1000 * rates.step_s:.0f} ms on this machine)"
    )
    print(line, file=sys.stderr, flush=True)
    return line
