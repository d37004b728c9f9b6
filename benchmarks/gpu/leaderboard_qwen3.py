"""kvpress's leaderboard protocol on Qwen3-8B in one 10-minute GPU window, at a reduced sample count.

    python benchmarks/gpu/leaderboard_qwen3.py --model Qwen/Qwen3-8B --out runs/lb-qwen3   # one H200
    python benchmarks/gpu/leaderboard_qwen3.py --model /models/Qwen3-8B --out runs/lb-qwen3 --samples 3
    python benchmarks/gpu/leaderboard_qwen3.py --out runs/lb-smoke --smoke   # a tiny random model on a CPU (CI)

Everything goes through ``restkv leaderboard`` (RULER-4K from RULER's own generators, ratios
0.25 / 0.5 / 0.75 / 0.875, query-agnostic, every default method, bfloat16 on ``cuda``), with
``--time-limit`` so the run starts no prompt after ``--budget-s`` seconds: the stores keep
whole prompts, prompts are taken round-robin over the 13 tasks, and a second call resumes. The
script then prints the leaderboard's table for ratio 0.75 and, beside it, kvpress's published
score for the same method and ratio where ``--published`` gives one.

kvpress's published Qwen3-8B numbers are the metrics files of its leaderboard space
(huggingface.co/spaces/nvidia/kvpress-leaderboard, files
``benchmark/ruler__4096__Qwen--Qwen3-8B__<press>__<ratio>/metrics.json``).
None of them could be read from the machine this script was written on, so no number is written
here: pass them as ``--published FILE.json`` (``{"<method>@<ratio>": score, ...}``, e.g.
``{"full@0": 95.x, "snapkv@0.75": ...}``, the method names as restkv's). The one published figure
restkv's issue quotes is for Llama-3.1-8B, not Qwen3-8B (KVzip 95.3 at ratio 0.7, full cache 95.7),
and kvzip is not yet runnable through restkv's engine. Prints one JSON summary and writes it to
``--out/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

#: the window a lent GPU gives one command, less time for loading and the final table
DEFAULT_BUDGET_S = 480
SMOKE_METHODS = "full,snapkv[window_size=8],streamingllm,restkv[preset=agnostic;window_size=8]"


def tiny_model_folder(folder: Path) -> Path:
    """A random-weight Llama with a whitespace word tokenizer, saved where ``--model`` can load it."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=4096, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    words = {"[UNK]": 0, "[EOS]": 1}
    inner = Tokenizer(WordLevel(words, unk_token="[UNK]"))
    inner.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]", eos_token="[EOS]")
    tokenizer.save_pretrained(folder)
    return folder


def command(args, model: str) -> list[str]:
    """The ``restkv leaderboard`` call this script makes."""
    cmd = [sys.executable, "-m", "restkv", "leaderboard", "--model", model, "--out", str(args.out),
           "--samples", str(args.samples), "--time-limit", str(args.budget_s)]  # fmt: skip
    if args.smoke:
        smoke = ["--tasks", "niah_single_1", "--length", "1024", "--ratios", "0.5,0.75", "--methods", SMOKE_METHODS]
        return cmd + smoke
    return cmd + ["--device", args.device, "--dtype", "bfloat16"]


def table_at(out: Path, ratio: float, published: dict) -> list[dict]:
    """Per method at ``ratio`` (and the full cache): our mean x100 with its interval and n, and
    kvpress's published score where given."""
    from restkv.eval.leaderboard import curves
    from restkv.eval.store import ResultStore

    with ResultStore(out / "query-agnostic" / "results.sqlite") as store:
        rows = [r for r in store.rows() if r.get("score") is not None]
    table = []
    for method, points in sorted(curves(rows).items()):
        for at, interval in points:
            if at in (0.0, ratio):
                key = f"{method}@{at:g}"
                table.append(
                    {
                        "method": method, "ratio": at, "score": round(interval.value * 100, 1),
                        "low": round(interval.low * 100, 1), "high": round(interval.high * 100, 1), "n": interval.n,
                        "kvpress_published": published.get(key),
                    }
                )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen/Qwen3-8B", help="a local folder or hub id (default Qwen/Qwen3-8B)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=2, help="prompts per RULER task (default 2: 26 prompts)")
    parser.add_argument("--budget-s", type=int, default=DEFAULT_BUDGET_S, help="start no prompt after this (s)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--published", type=Path, help='kvpress\'s published scores: {"<method>@<ratio>": score}')
    parser.add_argument("--ratio", type=float, default=0.75, help="the ratio the printed table shows (default 0.75)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model on the CPU, one task at 1K")
    args = parser.parse_args()
    published = json.loads(args.published.read_text()) if args.published else {}
    model = args.model
    if args.smoke:
        args.samples, args.budget_s = 1, 600
        model = str(tiny_model_folder(args.out / "tiny-model"))
    start = time.perf_counter()
    subprocess.run(command(args, model), check=True)
    table = table_at(args.out, args.ratio, published)
    result = {
        "model": args.model if not args.smoke else "tiny-llama (random)", "samples_per_task": args.samples,
        "ratio": args.ratio, "table": table, "wall_s": round(time.perf_counter() - start, 1),
        "published_source": str(args.published) if args.published else None,
    }  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    print(f"{'method':40} {'ratio':>5} {'restkv (95% CI), n':>28} {'kvpress published':>18}")
    for row in table:
        ours = f"{row['score']:.1f} [{row['low']:.1f}, {row['high']:.1f}] n={row['n']}"
        theirs = "-" if row["kvpress_published"] is None else f"{row['kvpress_published']:.1f}"
        print(f"{row['method']:40} {row['ratio']:>5g} {ours:>28} {theirs:>18}")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
