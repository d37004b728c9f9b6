"""Compare the rows of two results stores: same keys, same predictions, KL within a tolerance.

Used to check that a Ray sweep writes what the local run writes:

    .venv/bin/python benchmarks/compare_stores.py runs/ruler-local runs/ruler-ray [--kl-tol 1e-6]

Prints one line per difference and a summary; exits 1 when the stores differ.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

FIELDS = ("prediction", "score", "kl", "top1", "kept_entries", "prompt_tokens")


def rows(folder: Path) -> dict[tuple, dict]:
    db = sqlite3.connect(f"file:{folder / 'results.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    out = {}
    for r in db.execute("SELECT * FROM results"):
        out[(r["task"], r["sample_id"], r["model"], r["method"], r["budget"])] = dict(r)
    db.close()
    return out


def differences(a: dict, b: dict, kl_tol: float) -> list[str]:
    found = [f"only in the first: {k}" for k in sorted(a.keys() - b.keys())]
    found += [f"only in the second: {k}" for k in sorted(b.keys() - a.keys())]
    for key in sorted(a.keys() & b.keys()):
        for field in FIELDS:
            x, y = a[key][field], b[key][field]
            if field == "kl" and x is not None and y is not None:
                if abs(x - y) > kl_tol:
                    found.append(f"{key}: kl {x!r} vs {y!r}")
            elif x != y:
                found.append(f"{key}: {field} {x!r} vs {y!r}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--kl-tol", type=float, default=1e-6)
    args = parser.parse_args()
    a, b = rows(args.first), rows(args.second)
    found = differences(a, b, args.kl_tol)
    for line in found:
        print(line)
    kls = [
        abs(a[k]["kl"] - b[k]["kl"]) for k in a.keys() & b.keys() if a[k]["kl"] is not None and b[k]["kl"] is not None
    ]
    print(
        f"{len(a)} and {len(b)} rows; {len(a.keys() & b.keys())} shared; {len(found)} differences; "
        f"largest KL difference {max(kls, default=0.0):.3g}"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
