"""``restkv bench latency|memory``: timings and peak memory per method, budget and length."""

from __future__ import annotations

import time
from pathlib import Path

from .common import UsageError, add_model_args, check_attention, int_list, method_configs, name_list, positive_int


def add_parser(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="latency and memory per method, budget and context length")
    bench.add_argument("kind", choices=["latency", "memory"])
    bench.add_argument(
        "--shape", help="random-weight model of a real shape instead of --model (llama-3.1-8b, mistral-7b, qwen2.5-7b)"
    )
    bench.add_argument("--layers", type=positive_int, help="with --shape: keep only this many layers")
    bench.add_argument("--lengths", type=int_list, default=[1024, 2048, 4096])
    bench.add_argument("--methods", type=name_list, default=["full", "restkv", "snapkv"])
    bench.add_argument("--budgets", type=int_list, default=[128])
    bench.add_argument("--repeats", type=positive_int, default=3)
    bench.add_argument("--decode-tokens", type=positive_int, default=16)
    bench.add_argument("--chunk-size", type=positive_int, help="chunked prefill for the compressing methods")
    bench.add_argument("--no-prefill", action="store_true", help="latency: measure decoding only (long contexts)")
    bench.add_argument(
        "--compile",
        action="store_true",
        help="latency: also decode on static buffers through torch.compile (rows <method>+compiled, with the first "
        "step's latency including compilation, often minutes)",
    )
    bench.add_argument(
        "--kv-quant", metavar="BACKEND:BITS", help="memory: quantize the caches (quanto:2/4, hqq:1/2/3/4/8)"
    )
    bench.add_argument("--out", type=Path, required=True)
    add_model_args(bench)
    bench.set_defaults(run=run)


def check_chunk_size(chunk_size: int | None, configs) -> None:
    """A chunk must hold the observation window of every compressing method."""
    if chunk_size is None:
        return
    for c in configs:
        if c.method != "full":
            window = c.press().scorer.window_size
            if chunk_size <= window:
                raise UsageError(f"--chunk-size ({chunk_size}) must be larger than window_size ({window})")


def run(args) -> int:
    from ..bench import runner
    from ..eval.report import bench_table
    from ..eval.store import ResultStore

    configs = method_configs(args.methods, args.budgets, None)
    check_chunk_size(args.chunk_size, configs)
    check_attention(args.attn)
    if args.kv_quant:
        from ..quantized import parse_kv_quant

        parse_kv_quant(args.kv_quant)  # one sentence before any work
        if args.kind != "memory":
            raise UsageError("--kv-quant goes with bench memory")
    if args.compile and args.kind != "latency":
        raise UsageError("--compile goes with bench latency")
    if args.layers is not None and args.shape is None:
        raise UsageError("--layers goes with --shape")
    name = f"{args.shape}-{args.layers or 'all'}L" if args.shape else args.model
    start = time.perf_counter()
    with ResultStore(args.out / "results.sqlite", writer=True) as store:
        if args.kind == "latency":
            runner.run_latency(
                runner.bench_model(args.shape, args.layers, args.model, args.device, args.dtype, args.attn),
                name,
                args.lengths,
                configs,
                store,
                args.repeats,
                args.decode_tokens,
                args.chunk_size,
                not args.no_prefill,
                args.compile,
            )
        else:  # each measurement runs in a fresh process, which loads the model from this spec
            spec = {"device": args.device, "dtype": args.dtype, "attn": args.attn, "decode_tokens": args.decode_tokens}
            spec["kv_quant"] = args.kv_quant
            spec.update({"shape": args.shape, "layers": args.layers} if args.shape else {"model": args.model})
            runner.run_memory(spec, name, args.lengths, configs, store, args.chunk_size)
        # the table of this model's rows (earlier runs in the same store included, as the report shows them)
        rows = [r for r in store.rows(task=f"bench-{args.kind}") if r["model"] == name]
    print(bench_table(rows, f"bench-{args.kind}"))
    print(f"bench {args.kind}: {time.perf_counter() - start:.0f} s; results in {args.out}")
    return 0
