"""The side-by-side latency table from measure.py's and ours.py's rows (any Python, no deps).

python3 benchmarks/peers/openvino/table.py runs/openvino-peer/latency_t1.jsonl

Medians over rounds per (engine, setting, precision, prompt length): TTFT and prefill tokens/s
(wall), prefill CPU seconds, decode ms/token (wall and process CPU), peak RSS and its growth
over the loaded model.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

ORDER = ["openvino-genai fp32 full", "restkv fp32 full", "openvino-genai fp32 evict128", "restkv fp32 snapkv@128",
         "restkv fp32 restkv@128", "openvino-genai int8 full", "openvino-genai int8 evict128"]  # fmt: skip


def main() -> None:
    groups = defaultdict(list)
    for path in sys.argv[1:]:
        for line in open(path):
            r = json.loads(line)
            groups[(f"{r['engine']} {r['precision']} {r['setting']}", r["prompt_tokens"])].append(r)
    lengths = sorted({n for _, n in groups})
    names = sorted({k for k, _ in groups}, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
    med = lambda rows, f: statistics.median(r[f] for r in rows)  # noqa: E731
    print("| prompt tokens | engine, precision, setting | n | TTFT s | prefill tok/s | prefill CPU s | decode ms/tok | "
          "decode CPU ms/tok | peak RSS MiB | RSS growth MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in lengths:
        for name in names:
            rows = groups.get((name, n))
            if not rows:
                continue
            growth = statistics.median(r["peak_rss_mib"] - r["rss_after_load_mib"] for r in rows)
            print(f"| {n} | {name} | {len(rows)} | {med(rows, 'ttft_s'):.2f} | {med(rows, 'prefill_tokens_per_s'):.0f} | "
                  f"{med(rows, 'prefill_cpu_s'):.2f} | {med(rows, 'decode_ms_per_token'):.1f} | "
                  f"{med(rows, 'decode_cpu_ms_per_token'):.1f} | {med(rows, 'peak_rss_mib'):.0f} | {growth:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
