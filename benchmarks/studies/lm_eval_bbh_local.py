"""Write BBH multiple-choice tasks as local lm-evaluation-harness tasks, for ``restkv lm-eval``.

    python benchmarks/studies/lm_eval_bbh_local.py --tasks date_understanding,logical_deduction_three_objects \
        --limit 40 --out runs/lm-eval-tasks
    restkv lm-eval --include-path runs/lm-eval-tasks --tasks bbh_local_date_understanding \
        --method restkv --budget 128 --out runs/lm-eval/restkv-128

lm-eval's own BBH tasks read their data from the Hugging Face hub, which this machine cannot
reach. This script builds the same questions from BIG-bench's task files (the bigbench sdist
that ``restkv eval bbh`` fetches once, Apache-2.0), with BBH's own 3-shot prompts, as
multiple-choice tasks: each option letter ``(A)``, ``(B)``, ... is a choice scored by
log-likelihood, so lm-eval's ``acc`` is the share of questions whose right letter is the most
likely one.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from restkv.eval.tasks import bbh

LETTER = re.compile(r"^\(([A-Z])\)")


def write_task(task: str, limit: int, out: Path) -> int:
    """``out/bbh_local_<task>.yaml`` and its data; returns how many questions were written."""
    rows = []
    for sample in bbh.load(task, bbh.prepare(), limit=limit):
        letters = re.findall(r"^\(([A-Z])\) ", sample.prompt[sample.question_at :], flags=re.MULTILINE)
        right = LETTER.match(sample.answers[0])
        if not letters or right is None:
            raise ValueError(f"BBH task {task} is not multiple choice with lettered options")
        choices = [f" ({x})" for x in letters]
        rows.append({"prompt": sample.prompt, "choices": choices, "answer": letters.index(right.group(1))})
    data = out / f"bbh_local_{task}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / f"bbh_local_{task}.yaml").write_text(
        f"task: bbh_local_{task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="date_understanding")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        print(f"bbh_local_{task}: {write_task(task, args.limit, args.out)} questions")


if __name__ == "__main__":
    main()
