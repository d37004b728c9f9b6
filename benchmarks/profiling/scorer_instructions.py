"""Instructions per ``select`` call, ReST-KV against SnapKV, counted by callgrind: a measure
that does not depend on the machine's load.

Run under valgrind with instrumentation off at start; the script switches it on around each
call through callgrind's client requests (``callgrind_region.c``, compiled here with gcc into
a small library loaded by ctypes), so importing torch and building the tensors are not
counted. Each call is dumped to its own file; the totals are read back from them.

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=runs/cg/out.%p \\
        .venv/bin/python benchmarks/profiling/scorer_instructions.py --dir runs/cg --out runs/cg/new.json
    .venv/bin/python benchmarks/profiling/scorer_instructions.py --dir runs/cg --out runs/cg/new.json --collect

Valgrind does not emulate AVX-512, so torch and oneDNN run their AVX2 kernels under it: the
counts are of those code paths (the ratio between scorers is what is meant to carry over).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import subprocess
import tempfile
from pathlib import Path

import torch

SHAPES = {"smollm2-135m": (9, 3, 64, 576), "llama-3.1-8b": (32, 8, 128, 4096)}


def region_library() -> ctypes.CDLL:
    source = Path(__file__).with_name("callgrind_region.c")
    target = Path(tempfile.gettempdir()) / "restkv_callgrind_region.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    return ctypes.CDLL(str(target))


def count(args) -> None:
    from restkv.scorers import get_scorer

    lib = region_library()
    if not lib.cg_running():
        raise SystemExit("run this under valgrind --tool=callgrind --instr-atstart=no (see the docstring)")
    torch.set_num_threads(1)
    scorers = {"restkv": get_scorer("restkv"), "snapkv": get_scorer("snapkv")}
    for shape in args.shapes.split(","):
        heads, kv_heads, dim, hidden = SHAPES[shape]
        for n in args.lengths:
            gen = torch.Generator().manual_seed(n)
            q = torch.randn(1, heads, 32, dim, generator=gen)
            k, v = torch.randn(1, kv_heads, n, dim, generator=gen), torch.randn(1, kv_heads, n, dim, generator=gen)
            w_o = torch.randn(hidden, heads * dim, generator=gen) / hidden**0.5
            for name, scorer in scorers.items():
                scorer.select(q, k, v, budget=args.budget, o_proj=w_o)  # warm-up, not counted
                lib.cg_zero()
                lib.cg_start()
                scorer.select(q, k, v, budget=args.budget, o_proj=w_o)
                lib.cg_stop()
                lib.cg_dump(f"{shape}|{n}|{name}".encode())


def collect(args) -> None:
    rows = {}
    for path in sorted(Path(args.dir).glob("out.*")):
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
        totals = re.search(r"^totals: (\d+)", text, re.M) or re.search(r"^summary: (\d+)", text, re.M)
        if trigger and totals and "|" in trigger.group(1):
            shape, n, name = trigger.group(1).split("|")
            rows.setdefault(f"{shape} {n}", {})[name] = int(totals.group(1))
    for key, row in rows.items():
        if "restkv" in row and "snapkv" in row:
            row["ratio"] = row["restkv"] / row["snapkv"]
        print(key, row)
    Path(args.out).write_text(json.dumps(rows, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="smollm2-135m")
    parser.add_argument("--lengths", default="4096,8192", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--dir", required=True, help="where valgrind writes its out.* files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--collect", action="store_true", help="read the counts back (run without valgrind)")
    args = parser.parse_args()
    collect(args) if args.collect else count(args)


if __name__ == "__main__":
    main()
