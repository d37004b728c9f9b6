"""``restkv methods``: every method with its parameters and defaults."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list every method with its parameters and defaults")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..scorers import SCORERS, defaults

    for name in sorted(SCORERS):
        cls = SCORERS[name]
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        params = ", ".join(f"{k}={v!r}" for k, v in defaults(name).items())
        print(f"{name}: {summary}\n    {params}; allocator={cls.default_allocator!r}")
    return 0
