"""Run OpenVINO GenAI's continuous-batching pipeline on restkv's exported prompts (the peer env only).

benchmarks/peers/openvino/.venv/bin/python benchmarks/peers/openvino/measure.py \
    --prompts prompts.jsonl --settings full,evict128 --threads 2 --precision fp32 --out rows.jsonl

Reads the jsonl of ``benchmarks/peers/export_prompts.py`` (``task``, ``sample_id``, ``input_ids``,
``max_new_tokens``, ``eos_ids``) and feeds exactly those token ids to the pipeline as an
``ov.Tensor`` (no re-tokenisation), greedy, one request at a time, stopping at ``max_new_tokens``
or at one of ``eos_ids``. Writes one JSON row per prompt x setting (see ``row()``).

Settings (comma-separated; they take turns on each prompt, so a slow spell of the shared machine
hits every setting alike):
- ``full``: no eviction.
- ``evict<B>``: ``use_cache_eviction`` with ``CacheEvictionConfig(start_size=32, recent_size=32,
  max_cache_size=B)``: our per-layer, per-head budget ``B`` as OpenVINO's per-layer,
  per-sequence token limit (all heads of a layer keep the same blocks). CPU blocks hold 32
  tokens; start and recent must be whole blocks, so ``B`` must be a multiple of 32 and at
  least 96. Eviction runs once the prompt is in the cache and removes whole blocks from the
  middle area, so a layer keeps ``B`` plus the filled part of its last block (up to ``B + 31``).
  Options after ``-``: ``w<N>`` SnapKV window (OpenVINO default 8; ours is 32), ``sum`` for
  ``AggregationMode.SUM`` (default NORM_SUM), ``rkv`` for ADAPTIVE_RKV, ``rot`` for cache rotation,
  ``r<N>`` recent size, ``s<N>`` start size. E.g. ``evict128-w32``.
- ``xattn<T>``: the full cache with OpenVINO's own XAttention sparse prefill
  (``use_sparse_attention``, ``SparseAttentionMode.XATTENTION``) at threshold ``T``/100; options
  ``d<N>``: prompt tokens at the end that attend densely (``num_last_dense_tokens_in_prefill``,
  default 32, our observation window), ``b<N>`` its block size, ``s<N>`` its stride (default:
  the library's). E.g. ``xattn90``, ``xattn95-b128``.

Precision (``--precision``): ``fp32``: the fp32-weights IR, ``INFERENCE_PRECISION_HINT=f32`` (this
CPU has avx512_bf16, where the plugin's default would be bf16) and an f32 KV cache;
``int8``: the int8-weights IR, f32 activations and KV cache; ``default``: the int8 IR with the
plugin's own defaults (bf16 compute where the CPU has it, its default KV cache precision).

Timing: the pipeline is stepped by hand (``add_request`` + ``step``) with the whole prompt in
one step (``max_num_batched_tokens`` >= prompt), so the first step is the prefill plus the
first token (TTFT) and every later step is one decoded token; its own PerfMetrics are not
exposed for add_request, and ``generate`` hides per-step times. Each step's process CPU time
is recorded too (``prefill_cpu_s``, ``decode_cpu_ms_per_token``): with one thread it is the
work itself, much less sensitive to a shared machine's load than wall time. Peak RSS is the process's
``ru_maxrss`` so far (monotone within one process: run one setting per process for per-setting
peaks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy

OV_HOME = Path(
    os.environ.get("OV_HOME", Path(os.environ.get("RESTKV_HOME", Path.home() / ".cache/restkv")) / "openvino")
)
BLOCK = 32  # the CPU plugin's KV cache block size (tokens)


def parse_setting(name: str) -> dict:
    """``full``, ``evict<B>[-opt...]`` or ``xattn<T>[-opt...]`` -> a dict with budget, eviction
    and sparse prefill options."""
    if name == "full":
        return {"name": name, "budget": None}
    if name.startswith("xattn"):
        head, *opts = name[len("xattn") :].split("-")
        if not head.isdigit() or not 0 < int(head) <= 100:
            raise SystemExit(f"setting {name!r}: xattn needs a threshold in percent, e.g. xattn90")
        sparse = {"threshold": int(head) / 100, "dense_tail": 32}
        for opt in opts:
            keys = {"d": "dense_tail", "b": "block_size", "s": "stride"}
            if opt[:1] not in keys or not opt[1:].isdigit():
                raise SystemExit(f"setting {name!r}: unknown option {opt!r}")
            sparse[keys[opt[0]]] = int(opt[1:])
        return {"name": name, "budget": None, "sparse": sparse}
    if not name.startswith("evict"):
        raise SystemExit(f"unknown setting {name!r}: use full or evict<B>[-w<N>][-sum|-rkv][-rot][-r<N>][-s<N>]")
    head, *opts = name[len("evict") :].split("-")
    if not head.isdigit():
        raise SystemExit(f"setting {name!r}: evict needs a budget, e.g. evict128")
    s = {"name": name, "budget": int(head), "start": BLOCK, "recent": BLOCK, "window": 8, "mode": "NORM_SUM",
         "rotation": False}  # fmt: skip
    for opt in opts:
        if opt in ("sum", "rkv"):
            s["mode"] = {"sum": "SUM", "rkv": "ADAPTIVE_RKV"}[opt]
        elif opt == "rot":
            s["rotation"] = True
        elif opt[:1] in "wrs" and opt[1:].isdigit():
            s[{"w": "window", "r": "recent", "s": "start"}[opt[0]]] = int(opt[1:])
        else:
            raise SystemExit(f"setting {name!r}: unknown option {opt!r}")
    for key in ("budget", "start", "recent"):
        if s[key] % BLOCK:
            raise SystemExit(f"setting {name!r}: {key} {s[key]} is not a multiple of the CPU block size {BLOCK}")
    if s["budget"] <= s["start"] + s["recent"]:
        raise SystemExit(f"setting {name!r}: budget must exceed start + recent ({s['start'] + s['recent']})")
    return s


def properties(precision: str, threads: int) -> dict:
    props = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    if precision in ("fp32", "int8"):
        props.update({"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
    return props


def build_pipeline(ov_genai, model_dir: Path, setting: dict, precision: str, threads: int, max_prompt: int):
    config = ov_genai.SchedulerConfig()
    config.max_num_seqs = 1
    config.max_num_batched_tokens = max_prompt + 64  # the whole prompt in one step
    config.dynamic_split_fuse = True
    config.enable_prefix_caching = False  # repeats must not reuse an earlier run's cache
    if setting["budget"] is not None:
        extra = {}
        if setting["mode"] == "ADAPTIVE_RKV":
            extra["adaptive_rkv_config"] = ov_genai.AdaptiveRKVConfig(0.9, 8)
        config.use_cache_eviction = True
        config.cache_eviction_config = ov_genai.CacheEvictionConfig(
            start_size=setting["start"], recent_size=setting["recent"], max_cache_size=setting["budget"],
            aggregation_mode=getattr(ov_genai.AggregationMode, setting["mode"]), apply_rotation=setting["rotation"],
            snapkv_window_size=setting["window"], **extra,
        )  # fmt: skip
    sparse = setting.get("sparse")
    if sparse is not None:
        attention = ov_genai.SparseAttentionConfig()
        attention.mode = ov_genai.SparseAttentionMode.XATTENTION
        attention.xattention_threshold = sparse["threshold"]
        attention.num_last_dense_tokens_in_prefill = sparse["dense_tail"]
        if "block_size" in sparse:
            attention.xattention_block_size = sparse["block_size"]
        if "stride" in sparse:
            attention.xattention_stride = sparse["stride"]
        config.use_sparse_attention = True
        config.sparse_attention_config = attention
    return ov_genai.ContinuousBatchingPipeline(str(model_dir), config, "CPU", properties(precision, threads))


def kept_tokens(n: int, setting: dict) -> int:
    """Tokens each layer holds after the post-prefill eviction of an ``n``-token prompt, from the
    algorithm's rule (start and recent areas whole, ``max - start - recent`` tokens of whole
    middle blocks, plus the filled part of the last block); derived, not read from the engine."""
    budget = setting["budget"]
    if budget is None or n <= budget + BLOCK - 1:
        return n
    return budget + n % BLOCK


def method_label(setting: dict, precision: str) -> str:
    """The row's method in restkv's store: ``openvino-full``, ``openvino-evict-w32``, ``openvino-int8-evict``..."""
    name = (
        setting["name"] if setting["budget"] is None else "evict" + setting["name"][len(f"evict{setting['budget']}") :]
    )
    return f"openvino-{precision + '-' if precision != 'fp32' else ''}{name}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(ov, ov_genai, pipe, prompt: dict, request_id: int) -> dict:
    """Greedy decode of one prompt by hand-stepping the pipeline; ids and per-step times."""
    gen = ov_genai.GenerationConfig()
    gen.max_new_tokens = prompt["max_new_tokens"]
    gen.do_sample = False
    gen.stop_token_ids = set(prompt["stop_ids"])
    gen.ignore_eos = not prompt["stop_ids"]
    ids = ov.Tensor(numpy.array([prompt["input_ids"]], dtype=numpy.int64))
    began = time.perf_counter()
    handle = pipe.add_request(request_id, ids, gen)
    steps, cpu, tokens = [], [], []
    while pipe.has_non_finished_requests():
        start, start_cpu = time.perf_counter(), time.process_time()
        pipe.step()
        steps.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if handle.can_read():
            for out in handle.read().values():
                tokens.extend(out.generated_ids)
    wall = time.perf_counter() - began
    return {"tokens": tokens, "steps": steps, "cpu": cpu, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", required=True, help="jsonl from benchmarks/peers/export_prompts.py")
    parser.add_argument("--settings", default="full,evict128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "int8", "default"], default="fp32")
    parser.add_argument("--model-dir", type=Path, help="IR folder (default: OV_HOME/smollm2-<fp32|int8>)")
    parser.add_argument("--tokenizer-dir", type=Path, help="for the text of predictions (default: the IR folder)")
    parser.add_argument("--repeats", type=int, default=1, help="run each prompt this many times per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of the first prompt per setting")
    parser.add_argument("--max-new-tokens", type=int, help="override the prompts' max_new_tokens (latency runs)")
    parser.add_argument("--ignore-eos", action="store_true", help="decode exactly max_new_tokens (latency runs)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import openvino as ov
    import openvino_genai as ov_genai

    settings = [parse_setting(s) for s in args.settings.split(",") if s]
    prompts = [json.loads(line) for line in open(args.prompts) if line.strip()]
    if args.limit:
        prompts = prompts[: args.limit]
    for p in prompts:
        p["max_new_tokens"] = args.max_new_tokens or p["max_new_tokens"]
        p["stop_ids"] = [] if args.ignore_eos else p["eos_ids"]
    if not prompts:
        raise SystemExit(f"{args.prompts} holds no prompts")
    weights = "int8" if args.precision in ("int8", "default") else "fp32"
    model_dir = args.model_dir or OV_HOME / f"smollm2-{weights}"
    if not (model_dir / "openvino_model.xml").exists():
        raise SystemExit(f"no IR at {model_dir}: run benchmarks/peers/openvino/setup.sh")
    tokenizer = ov_genai.Tokenizer(str(args.tokenizer_dir or model_dir))
    shape = json.loads((model_dir / "config.json").read_text())
    args.kv_heads_x_layers = shape["num_key_value_heads"] * shape["num_hidden_layers"]
    args.library = f"openvino-genai {ov_genai.__version__.split('-')[0]}"
    max_prompt = max(len(p["input_ids"]) for p in prompts)

    rss_before = peak_rss_mib()
    loaded = time.perf_counter()
    pipes = {
        s["name"]: build_pipeline(ov_genai, model_dir, s, args.precision, args.threads, max_prompt) for s in settings
    }
    load_s = time.perf_counter() - loaded
    rss_loaded = peak_rss_mib()
    request = 0
    # warm-up on a short cut of the first prompt: first inference, kernel selection, cache allocation
    short = {**prompts[0], "input_ids": prompts[0]["input_ids"][-256:], "max_new_tokens": 4}
    for s in settings:
        for _ in range(args.warmup):
            run_one(ov, ov_genai, pipes[s["name"]], short, request)
            request += 1
    with open(args.out, "a") as out:
        for prompt in prompts:
            for rep in range(args.repeats):
                for s in settings:  # settings take turns on each prompt
                    res = run_one(ov, ov_genai, pipes[s["name"]], prompt, request)
                    request += 1
                    out.write(
                        json.dumps(row(prompt, s, res, tokenizer, args, rep, load_s, rss_before, rss_loaded)) + "\n"
                    )
                    out.flush()
    print(
        f"measure.py: {len(prompts)} prompts x {len(settings)} settings x {args.repeats} -> {args.out}", file=sys.stderr
    )


def row(prompt, setting, res, tokenizer, args, rep, load_s, rss_before, rss_loaded) -> dict:
    tokens = res["tokens"]
    eos = set(prompt["eos_ids"])
    n = len(prompt["input_ids"])
    ttft = res["steps"][0] if res["steps"] else None
    decode = res["steps"][1:]
    return {
        "engine": "openvino-genai", "library": args.library, "setting": setting["name"],
        "method": method_label(setting, args.precision), "budget": setting["budget"],
        "eviction": {k: v for k, v in setting.items() if k not in ("name", "budget")} if setting["budget"] else None,
        "sparse_prefill": setting.get("sparse"),
        "precision": args.precision, "threads": args.threads, "repeat": rep,
        "task": prompt["task"], "sample_id": prompt["sample_id"],
        "prediction_ids": tokens, "prediction": tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True),
        "prompt_tokens": n, "generated_tokens": len(tokens),
        "kept_entries": args.kv_heads_x_layers * kept_tokens(n, setting), "prefill_s": ttft,
        "ttft_s": ttft, "prefill_tokens_per_s": n / ttft if ttft else None,
        "decode_ms_per_token": 1000 * statistics.mean(decode) if decode else None,
        "decode_ms_median": 1000 * statistics.median(decode) if decode else None,
        "prefill_cpu_s": res["cpu"][0] if res["cpu"] else None,
        "decode_cpu_ms_per_token": 1000 * statistics.mean(res["cpu"][1:]) if decode else None,
        "peak_rss_mib": peak_rss_mib(), "rss_before_load_mib": rss_before, "rss_after_load_mib": rss_loaded,
        "load_s": load_s, "wall_s": res["wall_s"],
    }  # fmt: skip


if __name__ == "__main__":
    main()
