"""The main job: compare ReST-KV with the paper's baselines on the built-in pass-key set.

Prefill once per prompt, compress many (see :mod:`restkv.eval.engine`), so the eight methods at
two budgets cost little more than the full cache alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from .eval.report import aggregate, detail_table, discard_results, render_report
from .eval.runner import run_sweep
from .eval.store import ResultStore
from .eval.tasks import passkey
from .generation import encode_prompt
from .models import DEFAULT_MODEL, load_model
from .specs import MethodConfig, parse_method_spec

#: the paper's comparison, plus ReST-KV with the question-aware window (``window_size="auto"``),
#: alone and with the 15-token pooling kernel that keeps whole multi-token numbers on small models
DEMO_METHODS = (
    "restkv", "restkv[window_size=auto]", "restkv[window_size=auto;kernel_size=15]",
    "snapkv", "pyramidkv", "h2o", "tova", "streamingllm",
)  # fmt: skip
TASK = "passkey"


def demo_configs(methods=DEMO_METHODS, budgets=(128, 256)) -> list[MethodConfig]:
    configs = [MethodConfig.make("full")]
    for spec in methods:
        name, params = parse_method_spec(spec)
        configs += [MethodConfig.make(name, b, **params) for b in budgets]
    return configs


def run_demo(
    model: str = DEFAULT_MODEL,
    samples: int = 20,
    length: int = 470,
    budgets=(128, 256),
    methods=DEMO_METHODS,
    out: str | Path = "runs/demo",
    seed: int = 0,
    fresh: bool = False,
    device: str = "cpu",
    dtype: str = "auto",
    progress: bool = True,
    attn: str = "auto",
) -> dict:
    """Run the demo; returns the summary table (Markdown), counters and the report's path."""
    out = Path(out)
    start = time.perf_counter()
    loaded = load_model(model, device=device, dtype=dtype, attn=attn)
    if fresh:  # only once the model loaded, only restkv's own files, and never under another run
        ResultStore(out / "results.sqlite", writer=True).close()
        discard_results(out)
    count = lambda text: encode_prompt(loaded.tokenizer, text, chat=loaded.chat).shape[1]  # noqa: E731
    data = passkey.passkey_samples(samples, length, count, seed=seed)
    with ResultStore(out / "results.sqlite", writer=True) as store:
        counters = run_sweep(
            loaded, TASK, data, demo_configs(methods, budgets), store, passkey.score, progress=progress
        )
        rows = [r for r in store.rows(task=TASK, model=loaded.name) if r["sample_id"] in {s.id for s in data}]
    report = render_report(out)
    counters["total_s"] = time.perf_counter() - start
    return {"table": detail_table(aggregate(rows), TASK), "counters": counters, "report": report}
