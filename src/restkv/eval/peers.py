"""Another library's rows in a results store, scored like restkv's own.

A peer (NVIDIA kvpress, OpenVINO GenAI) runs the prompts of an evaluation exported as token ids
(``benchmarks/peers/export_prompts.py``) and writes one JSON row per prompt and setting; these
functions score each row's prediction with the task's own metric and add it to a run's store,
where ``restkv report`` then shows it beside restkv's rows. A row with an ``error`` (the peer
failed on that prompt) is kept in ``peer_failures.json`` beside the store instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from ..models import DEFAULT_MODEL
from .store import ResultStore
from .tasks import TaskOptions, build

#: a peer row's timing and memory fields kept in the result's extra (OpenVINO GenAI's measure.py)
PEER_EXTRA = ("engine", "setting", "eviction", "precision", "threads", "ttft_s", "prefill_tokens_per_s",
              "prefill_cpu_s", "decode_cpu_ms_per_token", "peak_rss_mib", "generated_tokens", "wall_s")  # fmt: skip
#: the file beside the store that keeps the prompts a peer failed on: method@budget -> prompt -> error
FAILURES_FILE = "peer_failures.json"


def result_row(row: dict, sample, score: Callable, model: str = DEFAULT_MODEL) -> dict:
    """A peer's row as a results-store row, scored by the task's own metric. ``library`` (default
    kvpress 0.5.5, the first peer) and ``decode_ms_per_token`` are taken when the row has them."""
    return {
        "task": row["task"], "sample_id": row["sample_id"], "model": model, "method": row["method"],
        "budget": row["budget"], "params": {"library": row.get("library", "kvpress 0.5.5"), "method": row["method"]},
        "prediction": row["prediction"], "score": score(row["prediction"], sample), "prompt_tokens": row["prompt_tokens"],
        "kept_entries": row["kept_entries"], "prefill_s": row["prefill_s"], "kl": row.get("kl"), "top1": row.get("top1"),
        "decode_ms_per_token": row.get("decode_ms_per_token"),
        "extra": {"answers": sample.answers, **{k: row[k] for k in PEER_EXTRA if k in row}},
    }  # fmt: skip


def task_samples(task: str, loaded, options: TaskOptions) -> dict[tuple[str, str], tuple]:
    """``(task, sample id) -> (sample, score function)`` for the prompts the peer was given
    (the same family and options as the export)."""
    return {(name, s.id): (s, score) for name, group, score in build(task, loaded, options) for s in group}


def import_peer_rows(
    rows: Iterable[dict], samples: dict[tuple[str, str], tuple], out: str | Path, model: str = DEFAULT_MODEL
) -> dict[str, dict[str, str]]:
    """Add the peer's ``rows`` to ``out``'s results store, skipping rows already there; the rows
    with an ``error`` go to :data:`FAILURES_FILE` beside it, added to the failures of earlier
    imports into the same run. Returns every failure recorded there."""
    out = Path(out)
    failures_path = out / FAILURES_FILE
    failures = json.loads(failures_path.read_text()) if failures_path.exists() else {}
    with ResultStore(out / "results.sqlite", writer=True) as store:
        for row in rows:
            key = (row["task"], row["sample_id"])
            if key not in samples:
                raise ValueError(
                    f"the peer's row for {key[0]} {key[1]} matches no prompt of this task and these options; "
                    "import with the --task, --tasks, --length, --samples and --seed the prompts were exported with"
                )
            sample, score = samples[key]
            if "error" in row:
                failures.setdefault(f"{row['method']}@{row['budget']}", {})[row["sample_id"]] = row["error"]
                continue
            if store.has(row["task"], row["sample_id"], model, row["method"], row["budget"]):
                continue
            store.add([result_row(row, sample, score, model)])
    failures_path.write_text(json.dumps(failures, indent=1, sort_keys=True))
    return failures
