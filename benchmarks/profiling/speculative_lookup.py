"""Would draft-and-verify decoding make a sweep's batched decode cheaper on this machine?

A sweep decodes its compressed caches as one batch of rows, greedily, one token per step. RULER
answers copy from the prompt, so a row's next tokens can be guessed by looking its last n-gram
up in the prompt, the full cache's answer and its own tokens (prompt-lookup drafting), and
``k`` guesses verified in one forward of ``k + 1`` tokens per row: same greedy tokens, fewer
steps, but more rows x tokens per step. This measures both sides in one run:

1. the sweep of the README's 6 methods x 3 budgets (one batch, answer stops) on ``--samples``
   RULER prompts (seeds from 100, not the ones ``sweep_cost.py`` reports on), keeping each
   batched row's tokens (the engine decodes a row only from where it leaves the full cache's
   answer; the replay counts from there too);
2. replayed against lookup drafts of ``k`` tokens: accepted tokens per verification step;
3. one forward of R rows x T new tokens on caches of 300 entries, R and T taking turns, and one
   of 18 rows x 44 tokens (a sweep's teacher forcing: the machine's rate on large forwards).

A step of ``k + 1`` tokens pays when ``cost(R, k + 1) / cost(R, 1)`` is below the tokens a step
yields. The large forward's ms per row-token is what the batched decode would cost per token if
its small steps ran as efficiently as big ones: a floor for this machine.

    .venv/bin/python benchmarks/profiling/speculative_lookup.py [--samples 12] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from restkv.eval.engine import Engine
from restkv.eval.tasks import ruler
from restkv.eval.tasks.stops import AnswerStop, prediction_reader
from restkv.generation import encode_prompt, eos_ids
from restkv.models import load_model
from restkv.specs import MethodConfig

METHODS = ["restkv", "snapkv", "pyramidkv", "h2o", "tova", "streamingllm"]
TASKS = ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe", "niah_multivalue"]
DRAFTS = (1, 2, 3, 4)
ROWS = (1, 6, 12, 18)
LARGE = (18, 44)  # rows x tokens of a RULER sweep's teacher forcing at 1K


def lookup_draft(context: list[int], k: int, longest: int = 3) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the context's last n-gram
    (n from ``longest`` down to 1); empty when none occurs."""
    for n in range(longest, 0, -1):
        if len(context) <= n:
            continue
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + k]
    return []


def replay(prompt: list[int], reference: list[int], tokens: list[int], k: int) -> tuple[int, int]:
    """(tokens a one-token loop decodes, verification steps drafting needs) for one row, counted
    from the first token where it leaves ``reference`` (the earlier ones come from teacher forcing)."""
    left = next((i for i, (a, b) in enumerate(zip(reference, tokens)) if a != b), min(len(reference), len(tokens)))
    if left >= len(tokens):
        return 0, 0
    at, steps = left + 1, 0
    while at < len(tokens):
        draft = lookup_draft(prompt + reference + tokens[:at], k)
        accepted = 0
        while accepted < len(draft) and at + accepted < len(tokens) and draft[accepted] == tokens[at + accepted]:
            accepted += 1
        at += accepted + 1
        steps += 1
    return len(tokens) - left - 1, steps


def capture_rows(loaded, samples: int) -> list[tuple[str, list[int], list[int], list[list[int]]]]:
    """Per prompt: task, prompt ids, the full cache's answer and every batched row's tokens."""
    count = lambda t: encode_prompt(loaded.tokenizer, t).shape[1]  # noqa: E731
    eos = eos_ids(loaded.tokenizer, loaded.model)
    configs = [MethodConfig.make("full")] + [MethodConfig.make(m, b) for m in METHODS for b in (128, 256, 512)]
    engine = Engine(loaded.model, configs, text=prediction_reader(loaded.tokenizer, eos))
    found = []
    for i in range(samples):
        task = TASKS[i % len(TASKS)]
        s = ruler.ruler_samples(task, 1, 1024, count, seed=100 + i)[0]
        ids = encode_prompt(loaded.tokenizer, s.prompt, answer_prefix=s.answer_prefix)
        outcomes = engine.run(ids, s.max_new_tokens, eos, batch="auto", answer=AnswerStop.of(s))
        reference = next(o.token_ids for o in outcomes if o.config.method == "full")
        found.append((task, ids[0].tolist(), reference, [o.token_ids for o in outcomes if o.config.method != "full"]))
        print(f"sweep {i + 1}/{samples} ({task})", flush=True)
    return found


@torch.inference_mode()
def step_costs(model, entries: int = 300, rounds: int = 5) -> dict[tuple[int, int], float]:
    """Median ms of one forward of R rows x T new tokens after ``entries`` cached ones, every
    (R, T) measured once per round in turn."""
    caches = {}
    for rows in ROWS:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.randint(0, 1000, (rows, entries)), past_key_values=cache, use_cache=True)
        caches[rows] = cache
    ms = {(r, t): [] for r in ROWS for t in range(1, max(DRAFTS) + 2)} | {LARGE: []}
    for _ in range(rounds):
        for rows, new in ms:
            fresh = DynamicCache(config=model.config)
            for index, layer in enumerate(caches[rows].layers):
                fresh.update(layer.keys, layer.values, index)
            ids = torch.randint(0, 1000, (rows, new))
            start = time.perf_counter()
            model(input_ids=ids, past_key_values=fresh, use_cache=True)
            ms[rows, new].append((time.perf_counter() - start) * 1000)
    return {key: statistics.median(values) for key, values in ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--out", default="/tmp/speculative_lookup.md")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    wall = time.perf_counter()
    loaded = load_model()
    found = capture_rows(loaded, args.samples)
    costs = step_costs(loaded.model)
    lines = [
        f"Command: `.venv/bin/python benchmarks/profiling/speculative_lookup.py --samples {args.samples}`; "
        f"{torch.get_num_threads()} threads; load before: `{load}`",
        "",
        "| draft tokens k | tokens per verification step | "
        + " | ".join(f"cost of k+1 tokens / 1, {r} rows" for r in ROWS)
        + " |",
        "|---|---|" + "---|" * len(ROWS),
    ]
    for k in DRAFTS:
        plain = steps = 0
        for _, prompt, reference, rows in found:
            for tokens in rows:
                a, b = replay(prompt, reference, tokens, k)
                plain, steps = plain + a, steps + b
        per_step = plain / max(steps, 1)
        ratios = " | ".join(f"{costs[r, k + 1] / costs[r, 1]:.2f}" for r in ROWS)
        lines.append(f"| {k} | {per_step:.2f} ({plain} tokens in {steps} steps) | {ratios} |")
    lines += [
        "",
        "One forward, ms (median of 5; rows x new tokens after 300 cached entries):",
        "",
        "| rows | " + " | ".join(f"{t} new" for t in range(1, max(DRAFTS) + 2)) + " |",
        "|---|" + "---|" * (max(DRAFTS) + 1),
    ]
    for r in ROWS:
        lines.append(f"| {r} | " + " | ".join(f"{costs[r, t]:.0f}" for t in range(1, max(DRAFTS) + 2)) + " |")
    rows, new = LARGE
    lines += [
        "",
        f"{rows} rows x {new} tokens in one forward: {costs[LARGE]:.0f} ms, "
        f"{costs[LARGE] / (rows * new):.2f} ms per row-token (18 rows x 1 token: {costs[18, 1] / 18:.2f}).",
    ]
    lines += ["", f"Wall time {time.perf_counter() - wall:.0f} s."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
