"""The ``restkv`` command: one module per subcommand, each with ``add_parser`` and ``run``.

Every error a user can cause (bad arguments, a missing file, a model that cannot be loaded, an
installed transformers/torch/lm-eval outside the range restkv's ``_compat`` was written for)
prints one sentence and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from .._compat.versions import UnsupportedVersionError
from ..checks import first_line
from . import (
    bench,
    chat,
    compare_stores,
    demo,
    eval,
    generate,
    leaderboard,
    lm_eval,
    methods,
    models,
    report,
    serve,
    tune,
)
from .common import UsageError

EXIT_USAGE = 2
#: as a program killed by SIGPIPE reports itself (128 + 13)
EXIT_BROKEN_PIPE = 141
#: as a program stopped by SIGTERM reports itself (128 + 15)
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that every ``finally`` runs (a store is closed, a
    run's log line written) as for Ctrl-C; Python's default SIGTERM skips them."""


def _terminate(signum, frame):
    raise Terminated

#: the subcommands, in the order ``restkv --help`` lists them
COMMANDS = (
    methods, models, generate, chat, demo, eval, leaderboard, lm_eval, tune, bench, report, compare_stores, serve,
)

__all__ = ["COMMANDS", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restkv", description="ReST-KV and baseline KV cache eviction on Hugging Face models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)  # each sets ``run`` as its parser's default
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # Python kept the undecodable bytes as surrogates
            print(f"restkv: error: argument {ascii(arg)} is not valid UTF-8", file=sys.stderr)
            return EXIT_USAGE
    args = build_parser().parse_args(argv)  # argparse itself exits with 2 on malformed arguments
    start = time.perf_counter()
    previous = signal.getsignal(signal.SIGTERM)
    ours = previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread()
    if ours:  # a caller's own handler stays (and only the main thread may set one)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        status = args.run(args)
        sys.stdout.flush()  # here, where a reader that left is caught, not at the interpreter's exit
        return status
    # every user error is one of these (an installed project restkv was not written for, too)
    except (ValueError, FileNotFoundError, UnsupportedVersionError) as err:
        print(f"restkv: error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `restkv methods | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot raise
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as stop:
        how = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
        print(f"\nrestkv: {how} after {time.perf_counter() - start:.0f} s; finished rows are kept", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(stop, Terminated) else 130
    finally:
        if ours:
            signal.signal(signal.SIGTERM, previous)
