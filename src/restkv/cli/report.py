"""``restkv report``: render report.md and plots from a run folder."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    report = subparsers.add_parser("report", help="render report.md and plots from a run folder")
    report.add_argument("run_dir", type=Path)
    report.add_argument(
        "--leaderboard",
        action="store_true",
        help="also write leaderboard.md: each method's mean over tasks per compression ratio with a stratified "
        "bootstrap 95%% interval, and paired differences against the best other method and the full cache",
    )
    report.set_defaults(run=run)


def run(args) -> int:
    from ..eval.report import render_report

    print(render_report(args.run_dir))
    if args.leaderboard:
        from ..eval.leaderboard import leaderboard_markdown
        from ..eval.store import ResultStore

        with ResultStore(args.run_dir / "results.sqlite") as store:
            rows = store.rows()
        path = args.run_dir / "leaderboard.md"
        path.write_text(leaderboard_markdown(rows))
        print(path)
    return 0
