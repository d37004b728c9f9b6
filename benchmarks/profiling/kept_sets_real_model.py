"""ReST-KV's kept sets on SmolLM2's own attention tensors, compared between two library versions.

``capture``  runs one ReST-KV prefill of the embedded SmolLM2 on the random-token prompt of
             ``restkv bench latency`` and saves every layer's scorer inputs (queries, keys,
             values, output projection).
``select``   selects on those tensors with the paper setting at budgets 128, 512 and 1024 and
             four variants (mean rule, average pooling, the ``before`` mode, no W_o), saves the
             kept positions, and times ReST-KV's and SnapKV's ``select`` per layer (thread CPU
             time, one torch thread, fastest of 5).
``compare``  says whether two ``select`` outputs are identical.

    .venv/bin/python benchmarks/profiling/kept_sets_real_model.py capture 4096 runs/real4096.pt
    PYTHONPATH=/old/src .venv/bin/python benchmarks/profiling/kept_sets_real_model.py select runs/real4096.pt runs/old.pt
    .venv/bin/python benchmarks/profiling/kept_sets_real_model.py select runs/real4096.pt runs/new.pt
    .venv/bin/python benchmarks/profiling/kept_sets_real_model.py compare runs/old.pt runs/new.pt
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

VARIANTS = ({}, {"temporal": "mean"}, {"pooling": "avgpool"}, {"metric_mode": "before"}, {"use_wo": False})


def capture(length: str, out: str) -> None:
    from transformers import DynamicCache

    from restkv.generation import prefill
    from restkv.models import load_model
    from restkv.press import KVPress, get_press
    from restkv.scorers.restkv import RestKVScorer

    torch.set_num_threads(1)
    model = load_model().model
    saved = []

    class Capturing(RestKVScorer):
        """ReST-KV as the press runs it, keeping a copy of every layer's scorer inputs."""

        def prefix_scores(self, queries, keys, values, **kw):
            saved.append({"q": queries.clone(), "k": keys.clone(), "v": values.clone(), "o_proj": kw["o_proj"].clone(),
                          "budget": kw["budget"], "scaling": kw["scaling"]})  # fmt: skip
            return super().prefix_scores(queries, keys, values, **kw)

    paper = get_press("restkv", budget=128)  # its scorer's settings, copied onto the capturing one
    settings = {f.name: getattr(paper.scorer, f.name) for f in dataclasses.fields(paper.scorer) if f.init}
    press = KVPress(Capturing(**settings), budget=128)
    n = int(length)
    ids = torch.randint(3, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
    with torch.inference_mode(), press(model):
        prefill(model, ids, DynamicCache(config=model.config))
    torch.save(saved, out)
    print(f"{len(saved)} layers saved to {out}")


def timed(fn, repeats=5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return 1000 * best


def select(tensors: str, out: str) -> None:
    import restkv
    from restkv.scorers import get_scorer

    torch.set_num_threads(1)
    layers = torch.load(tensors)
    kept, rest, snap = [], 0.0, 0.0
    for x in layers:
        kw = {"o_proj": x["o_proj"], "scaling": x["scaling"]}
        for budget in (128, 512, 1024):
            kept.append(get_scorer("restkv").select(x["q"], x["k"], x["v"], budget=budget, **kw))
        for knobs in VARIANTS[1:]:
            kept.append(get_scorer("restkv", **knobs).select(x["q"], x["k"], x["v"], budget=128, **kw))
    sample = layers[::3]
    for x in sample:
        kw = {"budget": 128, "o_proj": x["o_proj"], "scaling": x["scaling"]}
        rest += timed(lambda: get_scorer("restkv").select(x["q"], x["k"], x["v"], **kw))  # noqa: B023
        snap += timed(lambda: get_scorer("snapkv").select(x["q"], x["k"], x["v"], **kw))  # noqa: B023
    torch.save(kept, out)
    print(f"{restkv.__file__}: {len(kept)} kept sets; per layer (every 3rd layer, fastest of 5): "
          f"restkv {rest / len(sample):.2f} ms, snapkv {snap / len(sample):.2f} ms")  # fmt: skip


def compare(a: str, b: str) -> None:
    first, second = torch.load(a), torch.load(b)
    same = len(first) == len(second) and all(torch.equal(x, y) for x, y in zip(first, second))
    print(f"{len(first)} kept sets: {'identical' if same else 'DIFFERENT'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    command, *rest_args = sys.argv[1:]
    {"capture": capture, "select": select, "compare": compare}[command](*rest_args)
