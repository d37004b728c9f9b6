"""Score a peer library's rows like restkv's own and add them to a run's results store.

.venv/bin/python benchmarks/peers/import_rows.py kvpress_rows.jsonl --task passkey --length 470 --samples 20 --out runs/peers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from restkv.eval.store import ResultStore
from restkv.eval.tasks import TaskOptions, build
from restkv.models import DEFAULT_MODEL, load_model


#: a peer row's timing and memory fields kept in the result's extra (OpenVINO GenAI's measure.py)
PEER_EXTRA = ("engine", "setting", "eviction", "precision", "threads", "ttft_s", "prefill_tokens_per_s",
              "prefill_cpu_s", "decode_cpu_ms_per_token", "peak_rss_mib", "generated_tokens", "wall_s")  # fmt: skip


def result_row(row: dict, sample, score) -> dict:
    """A peer's row as a results-store row, scored by the task's own metric. ``library`` (default
    kvpress 0.5.5, the first peer) and ``decode_ms_per_token`` are taken when the row has them."""
    return {
        "task": row["task"], "sample_id": row["sample_id"], "model": DEFAULT_MODEL, "method": row["method"],
        "budget": row["budget"], "params": {"library": row.get("library", "kvpress 0.5.5"), "method": row["method"]},
        "prediction": row["prediction"], "score": score(row["prediction"], sample), "prompt_tokens": row["prompt_tokens"],
        "kept_entries": row["kept_entries"], "prefill_s": row["prefill_s"], "kl": row.get("kl"), "top1": row.get("top1"),
        "decode_ms_per_token": row.get("decode_ms_per_token"),
        "extra": {"answers": sample.answers, **{k: row[k] for k in PEER_EXTRA if k in row}},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows")
    parser.add_argument("--task", default="passkey")
    parser.add_argument("--tasks", default="")
    parser.add_argument("--length", type=int, default=470)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    loaded = load_model()
    options = TaskOptions(
        samples=args.samples, length=args.length, seed=args.seed, subtasks=tuple(t for t in args.tasks.split(",") if t)
    )
    samples = {(task, s.id): (s, score) for task, group, score in build(args.task, loaded, options) for s in group}
    # failures of earlier imports into the same run stay recorded: method@budget -> prompt -> error
    failures_path = args.out / "peer_failures.json"
    failures = json.loads(failures_path.read_text()) if failures_path.exists() else {}
    with ResultStore(args.out / "results.sqlite") as store:
        for line in open(args.rows):
            row = json.loads(line)
            sample, score = samples[(row["task"], row["sample_id"])]
            if "error" in row:
                failures.setdefault(f"{row['method']}@{row['budget']}", {})[row["sample_id"]] = row["error"]
                continue
            if store.has(row["task"], row["sample_id"], DEFAULT_MODEL, row["method"], row["budget"]):
                continue
            store.add([result_row(row, sample, score)])
    for key, errors in sorted(failures.items()):
        print(f"{key} failed on {len(errors)} prompts, e.g. {next(iter(errors.values()))}")
    failures_path.write_text(json.dumps(failures, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
