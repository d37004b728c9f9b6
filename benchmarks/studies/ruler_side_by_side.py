"""RULER's own prompts against our hand-written ones: the same methods, tasks and length.

    python benchmarks/studies/ruler_side_by_side.py runs/ruler-official-vs-handwritten/ruler \
        runs/ruler-official-vs-handwritten/ruler-handwritten > table.md

Per task, the full cache's score on each generator's prompts; then, per method and ratio, the
mean over the tasks of score, agreement with the full cache's answers, and KL.
"""

from __future__ import annotations

import sys
from pathlib import Path

from restkv.eval.report import aggregate, family_means, format_cell, point, point_label
from restkv.eval.store import ResultStore


def load(run: Path) -> list[dict]:
    with ResultStore(run / "results.sqlite") as store:
        return aggregate(store.rows())


def task(a: dict) -> str:
    return a["task"].split("/", 1)[1]


def cell(a: dict | None) -> str:
    """score / agreement % / KL of one mean row."""
    if a is None:
        return "-"
    agreement = None if a.get("agreement") is None else 100 * a["agreement"]
    return f"{format_cell(a['score'])} / {format_cell(agreement)} / {format_cell(a['kl'], 4)}"


def main(official: Path, handwritten: Path) -> str:
    new, old = load(official), load(handwritten)
    full_new = {task(a): a for a in new if a["method"] == "full"}
    full_old = {task(a): a for a in old if a["method"] == "full"}
    lines = [
        "| task | prompt tokens (hand-written / RULER) | full cache, hand-written | full cache, RULER's |",
        "|---|---|---|---|",
    ]
    for name in sorted(full_new.keys() & full_old.keys()):
        o, n = full_old[name], full_new[name]
        lines.append(
            f"| {name} | {format_cell(o['prompt_tokens'], 0)} / {format_cell(n['prompt_tokens'], 0)} "
            f"| {format_cell(o['score'])} | {format_cell(n['score'])} |"
        )
    lines += [
        "",
        "| method | budget | hand-written: score / agreement % / KL | RULER's: score / agreement % / KL |",
        "|---|---|---|---|",
    ]
    means_old = {(a["method"], point(a)): a for a in family_means(old)}
    for a in family_means(new):
        b = means_old.get((a["method"], point(a)))
        lines.append(f"| {a['method']} | {point_label(point(a)).removeprefix('budget ')} | {cell(b)} | {cell(a)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2])))
