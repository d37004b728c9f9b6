"""Per-model tuning of ReST-KV's knobs on a calibration set (``restkv tune``).

A coordinate search from the paper's setting: for each knob in turn (window, EMA alpha,
temporal rule, pooling, GQA reduction), every value is tried with the others held at the best
so far, and the best kept. Candidates of a round share one prefill per prompt (the evaluation
engine), so a round costs little more than one decode per candidate. The objective is task
accuracy when the calibration prompts have answers, then mean KL divergence to the full
cache's next-token distributions (lower is better) to break ties and for prompts without
answers.

The result is a JSON profile that ``get_press("restkv", profile=PATH)`` and the CLI's
``--profile`` load.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

from .eval.engine import Engine
from .eval.runner import prompt_length
from .eval.tasks.base import Sample
from .forecast import announce, measure, sweep_seconds
from .generation import encode_prompt, eos_ids
from .profiles import paper_setting
from .specs import MethodConfig
from .window import question_window

PAPER = paper_setting()
GRID = {
    "window_size": ["auto", 8, 16, 32],
    "alpha": [0.3, 0.5, 0.7],
    "temporal": ["ema", "mean", "last"],
    "pooling": ["adaptive", "avgpool", "none"],
    # a wider kernel keeps the neighbours of an attended token: with digit-by-digit tokenizers
    # the window attends to a number's first digit and kernel 5 keeps only two more
    "kernel_size": [5, 9, 15],
    "gqa_reduce": ["mean", "max"],
}


def builtin_calibration(loaded, count: int, length: int, seed: int = 101) -> list[Sample]:
    """The default calibration set: pass-key prompts and needle-in-a-haystack prompts, half each.

    Seeded apart from the evaluation sets (their seed is 0), so tuning never sees a test prompt.
    """
    from .eval.tasks import token_counter
    from .eval.tasks.niah import niah_samples
    from .eval.tasks.passkey import passkey_samples

    count_tokens = token_counter(loaded)
    needles = count // 2
    depths = [(i + 0.5) / needles for i in range(needles)]
    return passkey_samples(count - needles, length, count_tokens, seed=seed) + niah_samples(
        [length], depths, 1, count_tokens, seed=seed
    )


def calibration_samples(path: str | Path) -> list[Sample]:
    """The user's prompts: a JSONL file of ``{"prompt": ..., "answers": [...]}`` (answers optional)."""
    samples = []
    for number, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            samples.append(
                Sample(
                    f"calibration-{number}",
                    item["prompt"],
                    list(item.get("answers") or []),
                    int(item.get("max_new_tokens", 16)),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} line {number + 1} is not a calibration record with a 'prompt' ({err})") from err
    if not samples:
        raise ValueError(f"{path} holds no calibration prompts")
    return samples


def _evaluate(loaded, samples, candidates: list[dict], budget: int, batch: int | str) -> dict[str, dict]:
    """Mean accuracy and KL of each candidate parameter set over the samples."""
    configs = [MethodConfig.make("restkv", budget, **c) for c in candidates]
    engine = Engine(loaded.model, [MethodConfig.make("full")] + configs)
    stop = eos_ids(loaded.tokenizer, loaded.model)
    scores = {c: {"accuracy": [], "kl": []} for c in configs}
    for sample in tqdm(samples, desc=f"{len(configs)} candidates", unit="prompt", leave=False):
        ids = encode_prompt(loaded.tokenizer, sample.prompt, chat=loaded.chat, answer_prefix=sample.answer_prefix)
        window = question_window(
            loaded.tokenizer, sample.prompt, loaded.chat, sample.answer_prefix, 8, min(64, budget - 1)
        )
        for o in engine.run(ids, sample.max_new_tokens, stop, configs=configs, batch=batch, window=window):
            text = loaded.tokenizer.decode([t for t in o.token_ids if t not in stop], skip_special_tokens=True)
            if sample.answers:
                scores[o.config]["accuracy"].append(float(all(a.lower() in text.lower() for a in sample.answers)))
            scores[o.config]["kl"].append(o.kl)
    out = {}
    for candidate, config in zip(candidates, configs):
        acc = scores[config]["accuracy"]
        out[json.dumps(candidate, sort_keys=True)] = {
            "params": candidate,
            "accuracy": statistics.mean(acc) if acc else None,
            "kl": statistics.mean(scores[config]["kl"]),
        }
    return out


def _better(a: dict, b: dict) -> bool:
    """Is result ``a`` better than ``b``: higher accuracy, then lower KL."""
    if a["accuracy"] is not None and b["accuracy"] is not None and a["accuracy"] != b["accuracy"]:
        return a["accuracy"] > b["accuracy"]
    return a["kl"] < b["kl"]


def tune(loaded, samples: list[Sample], budget: int, grid: dict | None = None, batch: int | str = "auto") -> dict:
    """Coordinate search; returns the profile (chosen parameters, paper defaults, every result)."""
    grid = grid or GRID
    lengths = [prompt_length(loaded, s) for s in samples]
    # each knob is tuned once, from the paper's value: a round tries its other values (the first
    # round the starting point too), and prefills every prompt once
    rounds = [sum(v != PAPER.get(knob) for v in values) + (i == 0) for i, (knob, values) in enumerate(grid.items())]
    work = [(n, s.max_new_tokens, candidates) for candidates in rounds for n, s in zip(lengths, samples)]
    if samples:
        rates = measure(loaded.model, max(lengths))
        what = f"tune: {sum(rounds)} settings on {len(samples)} prompts"
        announce(what, sweep_seconds(rates, work, batch), rates)
    start = time.perf_counter()
    best = dict(PAPER)
    seen: dict[str, dict] = {}
    for knob, values in grid.items():
        candidates = [{**best, knob: v} for v in values] + [best]  # the incumbent stays a candidate
        fresh = [c for c in candidates if json.dumps(c, sort_keys=True) not in seen]
        if fresh:
            seen.update(_evaluate(loaded, samples, fresh, budget, batch))
        results = [seen[json.dumps(c, sort_keys=True)] for c in candidates]
        winner = results[0]
        for r in results[1:]:
            if _better(r, winner):
                winner = r
        best = dict(winner["params"])
    paper = seen[json.dumps(PAPER, sort_keys=True)]
    chosen = seen[json.dumps(best, sort_keys=True)]
    return {
        "method": "restkv",
        "model": loaded.name,
        "budget": budget,
        "params": best,
        "chosen": {"accuracy": chosen["accuracy"], "kl": chosen["kl"]},
        "paper_defaults": {"params": PAPER, "accuracy": paper["accuracy"], "kl": paper["kl"]},
        "samples": len(samples),
        "candidates_evaluated": len(seen),
        "search_s": round(time.perf_counter() - start, 1),
        "results": list(seen.values()),
    }
