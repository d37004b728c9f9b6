"""Export an evaluation's prompts as token ids, for a peer library to run on exactly the same input.

.venv/bin/python benchmarks/peers/export_prompts.py --task passkey --length 470 --samples 20 --out prompts.jsonl
"""

from __future__ import annotations

import argparse
import json

from restkv.eval.tasks import TaskOptions, build
from restkv.generation import encode_prompt, eos_ids
from restkv.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="passkey")
    parser.add_argument("--tasks", default="")
    parser.add_argument("--length", type=int, default=470)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    loaded = load_model()
    options = TaskOptions(
        samples=args.samples, length=args.length, seed=args.seed, subtasks=tuple(t for t in args.tasks.split(",") if t)
    )
    with open(args.out, "w") as out:
        for task, samples, _ in build(args.task, loaded, options):
            for s in samples:
                ids = encode_prompt(loaded.tokenizer, s.prompt, chat=loaded.chat, answer_prefix=s.answer_prefix)[
                    0
                ].tolist()
                out.write(json.dumps({"task": task, "sample_id": s.id, "input_ids": ids, "max_new_tokens": s.max_new_tokens,
                                      "eos_ids": sorted(eos_ids(loaded.tokenizer, loaded.model))}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
