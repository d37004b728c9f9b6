"""Eager against compiled decoding on the demo's prompts: the same greedy tokens for every prompt?

.venv/bin/python benchmarks/studies/compiled_demo_tokens.py [--samples 20] [--out FILE.jsonl]

The demo's pass-key prompts (``restkv.demo``: 20 samples of about 470 tokens, seed 0) on the
embedded SmolLM2, each decoded by ``greedy_decode`` in the eager loop and with ``compile=True``
(static buffers, ``torch.compile``) for the full cache and the demo's methods at budget 128 that
decode on static buffers. Prints one line per method: prompts with identical tokens, and the
first differing token of any that differ.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from restkv.eval.tasks import passkey
from restkv.generation import encode_prompt, eos_ids, greedy_decode
from restkv.models import load_model
from restkv.press import get_press

METHODS = [("full", None), ("restkv", 128), ("snapkv", 128), ("pyramidkv", 128), ("h2o", 128), ("tova", 128),
           ("streamingllm", 128)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--out", default="/tmp/compiled_demo_tokens.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model()
    count = lambda text: encode_prompt(loaded.tokenizer, text, chat=loaded.chat).shape[1]  # noqa: E731
    samples = passkey.passkey_samples(args.samples, 470, count, seed=0)
    stop = eos_ids(loaded.tokenizer, loaded.model)
    began = time.perf_counter()
    with open(args.out, "w") as out:
        for method, budget in METHODS:
            same, differ = 0, []
            for s in samples:
                ids = encode_prompt(loaded.tokenizer, s.prompt, chat=loaded.chat, answer_prefix=s.answer_prefix)
                press = get_press(method, budget=budget) if budget else None
                eager = greedy_decode(loaded.model, ids, press, s.max_new_tokens, stop)[0]
                compiled = greedy_decode(loaded.model, ids, press, s.max_new_tokens, stop, compile=True)[0]
                if eager == compiled:
                    same += 1
                else:
                    differ.append((s.id, next(i for i, (a, b) in enumerate(zip(eager, compiled)) if a != b)))
                out.write(json.dumps({"method": method, "budget": budget, "sample": s.id, "eager": eager,
                                      "compiled": compiled}) + "\n")  # fmt: skip
            print(f"{method} {budget}: {same}/{len(samples)} prompts with identical tokens; differ: {differ}",
                  f"({time.perf_counter() - began:.0f} s so far)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
