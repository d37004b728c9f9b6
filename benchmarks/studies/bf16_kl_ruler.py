"""bf16 against fp32 on RULER prompts, a task family the bf16 decision was not made on (pass key).

.venv/bin/python benchmarks/studies/bf16_kl_ruler.py [--length 1024] [--tokens 32]

One prompt each of six RULER tasks (our generators, ``ruler.ruler_samples``, seed = task index).
The fp32 full-cache greedy answer is teacher-forced through the fp32 and the bf16 model (weights
and KV); per prompt: KL(fp32 || bf16) of the next-token distributions, top-1 agreement, and the
first token at which bf16's own greedy answer leaves fp32's.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from restkv.eval.tasks import ruler
from restkv.generation import encode_prompt, eos_ids, greedy_decode
from restkv.models import load_model

TASKS = ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe", "niah_multivalue"]


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model()
    fp32, bf16 = loaded.model, copy.deepcopy(loaded.model).to(torch.bfloat16)
    count = lambda t: encode_prompt(loaded.tokenizer, t).shape[1]  # noqa: E731
    stop = eos_ids(loaded.tokenizer, fp32)
    began = time.perf_counter()
    for i, task in enumerate(TASKS):
        s = ruler.ruler_samples(task, 1, args.length, count, seed=i)[0]
        ids = encode_prompt(loaded.tokenizer, s.prompt, answer_prefix=s.answer_prefix)
        answer = greedy_decode(fp32, ids, None, args.tokens, stop)[0]
        own = greedy_decode(bf16, ids, None, args.tokens, stop)[0]
        full = torch.cat([ids, torch.tensor([answer])], dim=1)
        n = ids.shape[1]
        ref = torch.log_softmax(fp32(full).logits[0, n - 1 : -1].float(), -1)
        low = torch.log_softmax(bf16(full).logits[0, n - 1 : -1].float(), -1)
        kl = float((ref.exp() * (ref - low)).sum(-1).mean())
        top1 = float((ref.argmax(-1) == low.argmax(-1)).float().mean())
        left = next((j for j, (a, b) in enumerate(zip(answer, own)) if a != b), None)
        print(f"{task}: {n} tokens, KL {kl:.4f}, top-1 {top1:.2f}, bf16 answer "
              + ("identical" if own == answer else f"leaves fp32's at token {left}"), flush=True)  # fmt: skip
    print(f"{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
