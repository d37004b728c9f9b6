"""OpenVINO GenAI's XAttention against its dense prefill, on restkv's pass-key prompts (issue 37).

Reads the rows of ``measure.py --settings full,xattn95`` run on prompts exported with
``benchmarks/peers/export_prompts.py --task passkey --seed 37`` and prints, per length, the keys
each setting found (Wilson 95% interval) and the paired time-to-first-token ratio (bootstrap 95%
interval). Sample 0 is left out: restkv's ``sparse_prefill_ttft.py`` spends it on warming up, so
samples 1.. are the prompts both tables share.

    .venv/bin/python benchmarks/peers/openvino/sparse_summary.py benchmarks/results/sparse-prefill/openvino-xattention/rows.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from restkv.eval.intervals import bootstrap_mean, wilson


def main(keys: dict[str, str]) -> None:
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines()]
    rows = [r for r in rows if not r["sample_id"].endswith("-0")]
    table = []
    for length in sorted({r["prompt_tokens"] for r in rows}):
        here = [r for r in rows if r["prompt_tokens"] == length]
        settings = sorted({r["setting"] for r in here}, key=lambda s: s != "full")
        pairs: dict[str, dict] = {}
        for r in here:
            pairs.setdefault(r["sample_id"], {})[r["setting"]] = r
        for setting in settings:
            cell = [p[setting] for p in pairs.values() if setting in p]
            found = [keys[r["sample_id"]] in r["prediction"] for r in cell]
            rate = wilson(sum(found), len(found))
            entry = {"prompt_tokens": length, "setting": setting, "n": len(cell),
                     "found": f"{sum(found)}/{len(found)} ({rate.low:.0%}-{rate.high:.0%})"}  # fmt: skip
            if setting != "full":
                ratios = [p[setting]["ttft_s"] / p["full"]["ttft_s"] for p in pairs.values() if {setting, "full"} <= set(p)]
                mean = bootstrap_mean(ratios)
                entry["ttft_ratio"] = f"{mean.value:.3f} [{mean.low:.3f}, {mean.high:.3f}]"
            else:
                mean = bootstrap_mean([r["ttft_s"] for r in cell])
                entry["ttft_s"] = f"{mean.value:.2f} [{mean.low:.2f}, {mean.high:.2f}]"
            table.append(entry)
    print(json.dumps(table, indent=1))


def pass_keys() -> dict[str, str]:
    """Each sample's key (restkv's pass-key task, rebuilt from its seed)."""
    from restkv.eval.tasks.base import token_counter
    from restkv.eval.tasks.passkey import passkey_samples
    from restkv.models import load_model

    loaded = load_model()
    count = token_counter(loaded)
    out = {}
    for length in (4096, 8192, 16384):
        for sample in passkey_samples(9, length, count, seed=37):
            out[sample.id] = sample.answers[0]
    return out


if __name__ == "__main__":
    main(pass_keys())
