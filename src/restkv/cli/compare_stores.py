"""``restkv compare-stores``: do two results stores hold the same results?"""

from __future__ import annotations

import argparse
from pathlib import Path


def kl_tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare-stores",
        help="compare two results stores row by row (exit 1 when they differ)",
        description="Same rows, same predictions, scores and kept entries, KL within --kl-tol: one line "
        "per difference, then a summary. Exit status 0 when the stores agree, 1 when they differ.",
    )
    parser.add_argument("first", type=Path, help="a run folder (with results.sqlite) or a results database")
    parser.add_argument("second", type=Path, help="the run folder or database to compare it with")
    parser.add_argument("--kl-tol", type=kl_tolerance, default=1e-6, help="largest KL difference taken as equal")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..eval.compare import compare_stores

    comparison = compare_stores(args.first, args.second, args.kl_tol)
    for line in comparison.differences:
        print(line)
    print(comparison.summary())
    return 0 if comparison.equal else 1
