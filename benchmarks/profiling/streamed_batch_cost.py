"""Would batching several streamed configurations save prefill time? Two prompt chunks through
gemma-3-270m (bfloat16, one thread) one after the other, then as one batch of two rows.

    python benchmarks/profiling/streamed_batch_cost.py --chunk 2048 --repeats 2

Batching reads the weights once for both rows; it only pays off where reading weights, not
arithmetic, bounds a forward pass. Prints both wall times per repeat and the ratio of the minima.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from restkv.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype="bfloat16").model
    ids = torch.randint(100, 20_000, (2, args.chunk), generator=torch.Generator().manual_seed(0))
    times = {"one_at_a_time_s": [], "batched_s": []}
    with torch.inference_mode():
        model(ids[:1, :64], logits_to_keep=1)  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(ids[:1], logits_to_keep=1)
            model(ids[1:], logits_to_keep=1)
            times["one_at_a_time_s"].append(round(time.perf_counter() - start, 3))
            start = time.perf_counter()
            model(ids, logits_to_keep=1)
            times["batched_s"].append(round(time.perf_counter() - start, 3))
    ratio = min(times["batched_s"]) / min(times["one_at_a_time_s"])
    print(json.dumps({**vars(args), **times, "batched_over_one_at_a_time": round(ratio, 3)}))


if __name__ == "__main__":
    main()
