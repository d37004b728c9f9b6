"""Where a restkv decoding step's CPU time goes, beside the weight-streaming floor (restkv's venv).

.venv/bin/python benchmarks/peers/openvino/profile_decode.py --length 1024 --entries 128 --threads 1

Decodes ``--steps`` tokens from a cache of ``--entries`` per layer (as ``restkv bench latency``
does: a synthetic cache of the size a press leaves) under torch.profiler, and prints the CPU
time of the matrix products (aten::mm/addmm/linear/matmul), of attention (sdpa), and of
everything else (norms, rotary, cache updates, mask building, Python and dispatch between the
ops), with the largest ops. Profiled times are the profiler's (wall-clock per op, inflated by
a loaded machine and by profiling itself): read them as shares, the unprofiled CPU time as the cost. The floor: the same linear layers applied to one token with nothing else, i.e. reading
every weight once per token, which is what a decoding step cannot avoid in fp32.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from restkv.bench.latency import synthetic_cache
from restkv.models import load_model
from restkv.press import KVPress, hooks_only_press

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm"}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--entries", type=int, help="entries per layer (default: the full cache)")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(dtype="float32").model
    hooks = KVPress(None) if args.entries is None else hooks_only_press()

    def decode(steps):
        cache = synthetic_cache(model, args.length, args.entries)
        token = torch.tensor([[3]])
        with hooks(model):
            for step in range(steps):
                model(input_ids=token, cache=cache, position_ids=torch.tensor([[args.length + step]]))

    decode(4)  # warm-up
    start = time.process_time()
    decode(args.steps)
    step_ms = 1000 * (time.process_time() - start) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode(args.steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1000 / args.steps
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMUL) / 1000 / args.steps
    attn = sum(e.self_cpu_time_total for e in events if e.key in ATTENTION) / 1000 / args.steps
    ops = sum(e.count for e in events if e.key.startswith("aten::")) / args.steps

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {m: torch.randn(1, m.in_features) for m in linears}
    for m in linears:
        m(x[m])
    start = time.process_time()
    for _ in range(args.steps):
        for m in linears:
            m(x[m])
    floor = 1000 * (time.process_time() - start) / args.steps
    weights = sum(m.weight.numel() for m in linears) * 4 / 2**20
    print(f"length {args.length}, entries {args.entries or 'full'}, {args.threads} thread(s), {args.steps} steps")
    print(f"decode step (CPU, unprofiled): {step_ms:.1f} ms; profiled self time {total:.1f} ms")
    print(f"  matrix products {mm:.1f} ms, attention {attn:.1f} ms, everything else {total - mm - attn:.1f} ms")
    print(f"  aten ops per step: {ops:.0f}; the largest by self time (share of the profiled step):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]:
        print(
            f"    {e.key}: {100 * e.self_cpu_time_total / 1000 / args.steps / total:.0f}% ({e.count // args.steps}/step)"
        )
    print(
        f"floor: the {len(linears)} linear layers alone, one token: {floor:.1f} ms ({weights:.0f} MiB of fp32 weights)"
    )


if __name__ == "__main__":
    main()
