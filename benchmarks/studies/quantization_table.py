"""Quality against bytes: eviction alone, quantization alone, and both, from one results store.

    python benchmarks/studies/quantization_table.py runs/quantization

Rows of ``restkv eval ... --kv-quant B:N`` are labelled ``<method>+<B><N>``; rows without it are
full precision. Prints markdown: per method, budget and quantization, the mean score, the
mean KL to the full-precision full cache, and the mean bytes the cache stores, also as a share
of the full-precision full cache's bytes on the same prompts.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from restkv.eval.store import ResultStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    args = parser.parse_args()
    with ResultStore(f"{args.folder}/results.sqlite") as store:
        rows = store.rows()
    full_bytes = {(r["task"], r["sample_id"]): r["kv_bytes"] for r in rows if r["method"] == "full"}
    cells = defaultdict(list)
    for r in rows:
        method, _, quant = r["method"].partition("+")
        cells[(r["task"], method, r["budget"] or -1, quant or "none")].append(r)
    print("| task | method | budget | quantization | score | KL to full | KV bytes | share of full fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for (task, method, budget, quant), group in sorted(
        cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "full", kv[0][1], kv[0][2], kv[0][3])
    ):
        score = statistics.mean(r["score"] for r in group)
        kl = statistics.mean(r["kl"] or 0.0 for r in group)
        size = statistics.mean(r["kv_bytes"] for r in group)
        shares = [
            r["kv_bytes"] / full_bytes[(r["task"], r["sample_id"])]
            for r in group
            if (r["task"], r["sample_id"]) in full_bytes
        ]
        share = f"{statistics.mean(shares):.4f}" if shares else "-"
        shown = "all" if budget == -1 else budget
        print(f"| {task} | {method} | {shown} | {quant} | {score:.2f} | {kl:.3f} | {size / 2**20:.2f} MiB | {share} |")


if __name__ == "__main__":
    main()
