"""Profile of the compiled budget-128 decoding step (SmolLM2, 1K-sized cache, 2 threads).

.venv/bin/python benchmarks/profiling/profile_compiled_decode.py
"""

import time

import torch
from torch.profiler import profile

from restkv.bench.latency import synthetic_cache
from restkv.models import load_model
from restkv.static_decode import StaticDecoder

torch.set_num_threads(2)
model = load_model().model
steps = 32
with torch.inference_mode():
    cache = synthetic_cache(model, 1024, 128)
    t0 = time.perf_counter()
    dec = StaticDecoder(model, cache, steps + 1, None, compile=True)
    dec.step(torch.tensor([[3]]))
    print("first step incl. compile s", time.perf_counter() - t0, flush=True)
    for _ in range(3):
        dec.step(torch.tensor([[3]]))
    with profile() as p:
        for _ in range(8):
            dec.step(torch.tensor([[3]]))
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    w, c = time.perf_counter(), time.process_time()
    for _ in range(8):
        dec.step(torch.tensor([[3]]))
    print("wall ms/step", (time.perf_counter() - w) * 125, "cpu ms/step", (time.process_time() - c) * 125)
