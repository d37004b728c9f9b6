"""``restkv report``: render report.md and plots from a run folder."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    report = subparsers.add_parser("report", help="render report.md and plots from a run folder")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(run=run)


def run(args) -> int:
    from ..eval.report import render_report

    print(render_report(args.run_dir))
    return 0
