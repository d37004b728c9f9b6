"""Score a peer library's rows like restkv's own and add them to a run's results store
(:mod:`restkv.eval.peers`; run from ``run_peers.sh`` and ``openvino/run.sh``).

.venv/bin/python benchmarks/peers/import_rows.py kvpress_rows.jsonl --task passkey --length 470 --samples 20 --out runs/peers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from restkv.eval.peers import import_peer_rows, task_samples
from restkv.eval.tasks import TaskOptions
from restkv.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description="Score a peer library's rows and add them to a run's results store.")
    parser.add_argument("rows", help="the peer's jsonl (one row per prompt and setting)")
    parser.add_argument("--task", default="passkey")
    parser.add_argument("--tasks", default="")
    parser.add_argument("--length", type=int, default=470)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    options = TaskOptions(
        samples=args.samples, length=args.length, seed=args.seed, subtasks=tuple(t for t in args.tasks.split(",") if t)
    )
    samples = task_samples(args.task, load_model(), options)
    with open(args.rows) as lines:
        failures = import_peer_rows((json.loads(line) for line in lines), samples, args.out)
    for key, errors in sorted(failures.items()):
        print(f"{key} failed on {len(errors)} prompts, e.g. {next(iter(errors.values()))}")


if __name__ == "__main__":
    main()
