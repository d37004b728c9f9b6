"""How close the time a long command announces before it starts comes to the time it then takes.

Runs each command (by default the demo and ``restkv tune`` with their defaults) in a fresh
output folder, reads the ``about ... here (estimate N s: ...)`` line it prints on stderr, and
times the rest of the run from that line to the command's end. Writes one JSON line per
command to ``--out/forecast.jsonl`` (estimate, actual, their ratio, load average before and
after) and prints a Markdown table.

    python benchmarks/profiling/forecast_accuracy.py --out benchmarks/results/forecast
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ESTIMATE = re.compile(r"restkv: (?P<what>.*); about .* here \(estimate (?P<seconds>\d+) s: ")
COMMANDS = ("restkv demo --fresh --out {tmp}/demo", "restkv tune --out {tmp}/profile.json")


def run(command: str) -> dict:
    """Run ``command`` (``{tmp}`` is a fresh folder); the estimate it printed and the time it took after."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = shlex.split(command.format(tmp=tmp))
        argv[0] = str(Path(sys.executable).with_name(argv[0]))  # this environment's restkv
        load_before = os.getloadavg()[0]
        began = time.perf_counter()
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        estimate, said_at = None, None
        for line in process.stderr:  # progress bars end their updates with \r: lines still arrive
            for part in line.split("\r"):
                match = ESTIMATE.search(part)
                if match and estimate is None:
                    estimate, said_at = int(match["seconds"]), time.perf_counter()
        if process.wait() != 0:
            raise SystemExit(f"{command} failed with exit status {process.returncode}")
        ended = time.perf_counter()
    if estimate is None:
        raise SystemExit(f"{command} printed no estimate")
    actual = ended - said_at
    return {
        "command": command, "estimate_s": estimate, "actual_s": round(actual, 1), "ratio": round(estimate / actual, 2),
        "wall_s": round(ended - began, 1), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), help="restkv command lines ({tmp}: a fresh folder)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| command | estimate s | actual s | estimate / actual | load before, after |\n|---|---|---|---|---|")
    for command in args.commands:
        record = run(command)
        with open(args.out / "forecast.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        print(f"| `{command}` | {record['estimate_s']} | {record['actual_s']} | {record['ratio']} | "
              f"{record['load_before']}, {record['load_after']} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
