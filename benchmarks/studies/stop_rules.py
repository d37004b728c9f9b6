"""Replay recorded predictions token by token under answer-stop rules: tokens saved, scores changed.

Every RULER, NIAH and pass-key row in the given result stores is re-tokenized (with the embedded
SmolLM2 tokenizer; the Gemma rows' token counts are therefore approximate) and cut where a rule
first holds on its decoded prefix; the cut prediction is scored with the task's metric
(``string_match_all``, ``string_match_part`` for QA) and compared with the recorded one.

    .venv/bin/python benchmarks/studies/stop_rules.py benchmarks/results/*/results.sqlite ... [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

from restkv.eval.tasks.base import string_match_all, string_match_part
from restkv.eval.tasks.stops import AnswerStop, complete_lines
from restkv.models import load_model

QA = ("qa_1", "qa_2")


def lines_rule(margin: int):
    def complete(text: str, answers, found) -> bool:
        return found or complete_lines(text) >= len(answers) + margin

    return complete


def first_line(text: str, answers, found) -> bool:
    """The rule the issue gave as an example: a non-empty line followed by a newline."""
    return found or any(line.strip() for line in text.split("\n")[:-1])


RULES = {
    "answers found (exact)": lambda text, answers, found: found,
    "first complete line": first_line,
    **{f"answers + {m} lines": lines_rule(m) for m in (0, 1, 2, 3)},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tokenizer = load_model().tokenizer
    totals = {name: [0, 0, 0] for name in RULES}  # tokens recorded, tokens kept, scores changed
    rows = 0
    for path in args.stores:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        for task, prediction, extra in db.execute("SELECT task, prediction, extra FROM results"):
            name = task.split("/")[-1]
            answers = (json.loads(extra or "{}") or {}).get("answers")
            if not answers or not (name.startswith(("niah", "passkey")) or name in ("vt", "cwe", "fwe", *QA)):
                continue
            rows += 1
            metric = string_match_part if name in QA else string_match_all
            exact = AnswerStop("any_answer" if name in QA else "all_answers", tuple(a.lower() for a in answers))
            ids = tokenizer(prediction, add_special_tokens=False)["input_ids"]
            prefixes = [tokenizer.decode(ids[:k]) for k in range(1, len(ids) + 1)]
            whole = metric(prediction, answers)
            for rule_name, rule in RULES.items():
                k = next((k for k, t in enumerate(prefixes, 1) if rule(t, answers, exact.complete(t))), len(ids))
                cut = prefixes[k - 1] if ids else ""
                totals[rule_name][0] += len(ids)
                totals[rule_name][1] += k
                totals[rule_name][2] += metric(cut, answers) != whole
    lines = [
        f"Replayed {rows:,} recorded predictions from {len(args.stores)} stores:",
        "",
        "| rule | tokens kept | scores changed |",
        "|---|---|---|",
    ]
    for name, (recorded, kept, changed) in totals.items():
        lines.append(f"| {name} | {kept / max(recorded, 1):.1%} | {changed} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
