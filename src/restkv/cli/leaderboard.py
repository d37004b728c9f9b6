"""``restkv leaderboard``: kvpress's leaderboard protocol (RULER-4K, four compression ratios,
query-agnostic, optionally query-aware too) as one resumable command, then its table and plot."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import UsageError, add_model_args, batch_size, load_from_args, name_list, positive_int, ratio_list


def add_parser(subparsers) -> None:
    from ..eval.protocol import AGNOSTIC_METHODS, LENGTH, RATIOS

    lb = subparsers.add_parser(
        "leaderboard",
        help="kvpress's leaderboard protocol on RULER-4K into resumable stores, then leaderboard.md and a plot",
    )
    lb.add_argument("--out", type=Path, required=True, help="run folder (one store per mode inside; reruns resume)")
    lb.add_argument("--samples", type=positive_int, default=10, help="prompts per RULER task (default 10)")
    lb.add_argument(
        "--methods", type=name_list, default=list(AGNOSTIC_METHODS),
        help=f"comma-separated, each run at every ratio (default {','.join(AGNOSTIC_METHODS)})",
    )  # fmt: skip
    lb.add_argument(
        "--ratios", type=ratio_list, default=list(RATIOS), help="compression ratios (default 0.25,0.5,0.75,0.875)"
    )
    lb.add_argument(
        "--query-aware",
        action="store_true",
        help="also run the window methods (and full) with the question in the prompt, into their own store",
    )
    lb.add_argument("--tasks", type=name_list, default=(), help="a subset of RULER's 13 tasks (default all)")
    lb.add_argument("--length", type=positive_int, default=LENGTH, help=f"prompt length in tokens (default {LENGTH})")
    lb.add_argument("--seed", type=int, default=0)
    lb.add_argument("--batch", type=batch_size, default="auto", help="compressed caches decoded together (auto)")
    lb.add_argument(
        "--time-limit", type=positive_int, metavar="SECONDS",
        help="start no new prompt after this many seconds of running (the stores keep whole prompts; rerun to go on)",
    )  # fmt: skip
    lb.add_argument("--report-only", action="store_true", help="render leaderboard.md from the stores; run nothing")
    add_model_args(lb)
    lb.set_defaults(run=run)


def show(table: Path) -> None:
    """Print the rendered table, then where it is (as the other measuring commands do)."""
    print(table.read_text())
    print(table)


def run(args) -> int:
    from ..eval.protocol import MODES, POOL, configs_for, render, run_mode, window_methods

    started = time.perf_counter()  # --time-limit counts loading the model and building the prompts too
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    if args.report_only:
        show(render(args.out, args.model))
        return 0
    plans = {"query-agnostic": configs_for(args.methods, args.ratios, agnostic=True)}  # refusals before loading
    if args.query_aware:
        aware = window_methods(args.methods)
        if len(aware) < 2:
            raise UsageError("--query-aware needs a window method (restkv, snapkv, tova, ...) in --methods")
        plans["query-aware"] = configs_for(aware, args.ratios, agnostic=False)
    from ..eval.tasks import TaskOptions, get_family
    from ..eval.tasks.registry import TaskGroup

    family = get_family("ruler")
    loaded = load_from_args(args)
    pool = max(args.samples, POOL)  # the same first prompts whatever --samples asks for
    options = TaskOptions(pool, args.length, seed=args.seed, subtasks=tuple(args.tasks))
    groups = [TaskGroup(g.name, g.samples[: args.samples], g.score) for g in family.groups(loaded, options)]
    command = " ".join(sys.argv)
    try:
        for mode, configs in plans.items():
            left = None if args.time_limit is None else max(args.time_limit - (time.perf_counter() - started), 0)
            run_mode(
                loaded, groups, configs, args.out / mode, MODES[mode], args.batch, command=command, time_limit=left
            )
    finally:  # a stopped run still gets the table of what it finished
        try:
            show(render(args.out, loaded.name))
        except ValueError as err:
            print(f"restkv: {err}", file=sys.stderr)
    return 0
