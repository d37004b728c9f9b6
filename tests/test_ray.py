"""Sweeps on Ray actors: the same rows as a local run, resumable, and a lost worker's job retried."""

from functools import partial
from pathlib import Path

import pytest
import ray  # the ray extra: CI installs it, so a missing Ray fails here, not skips

from restkv.eval.jobs import RayExecutor
from restkv.eval.runner import run_sweep
from restkv.eval.store import ResultStore
from restkv.eval.tasks.base import Sample
from restkv.specs import MethodConfig
from tiny_models import TinyLoaded, load_tiny, load_tiny_dying_once

CONFIGS = [MethodConfig.make("full"), MethodConfig.make("snapkv", 24, window_size=8),
           MethodConfig.make("restkv", 24, window_size=8)]  # fmt: skip
SAMPLES = [Sample(f"s{i}", "abcdefghij" * (6 + i) + f"\nkey {i}?", [str(i)], 4, question_at=10 * (6 + i) + 1)
           for i in range(4)]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local Ray cluster of 2 CPUs; workers import the tiny models from the tests folder."""
    tests = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": tests}})
    yield
    ray.shutdown()


def sweep(path, samples, executor=None, **kwargs):
    with ResultStore(path) as store:
        counters = run_sweep(TinyLoaded(), "t", samples, CONFIGS, store, lambda p, s: float(p.startswith("a")),
                             progress=False, batch=2, executor=executor, **kwargs)  # fmt: skip
        rows = store.rows()
    return counters, sorted(rows, key=lambda r: (r["sample_id"], r["method"], r["budget"] or -1))


def essentials(rows):
    return [(r["sample_id"], r["method"], r["prediction"], r["kept_entries"], round(r["kl"], 5)) for r in rows]


@pytest.mark.parametrize("agnostic", [False, True])
def test_ray_gives_the_rows_of_a_local_run(tmp_path, agnostic):
    _, local = sweep(tmp_path / "local.sqlite", SAMPLES, query_agnostic=agnostic)
    counters, remote = sweep(
        tmp_path / "ray.sqlite", SAMPLES, RayExecutor(load_tiny, workers=2), query_agnostic=agnostic
    )
    assert counters["samples_run"] == 4 and len(remote) == 4 * len(CONFIGS)
    assert essentials(remote) == essentials(local)


def test_a_ray_run_resumes_what_a_local_run_started(tmp_path):
    sweep(tmp_path / "r.sqlite", SAMPLES[:2])
    counters, rows = sweep(tmp_path / "r.sqlite", SAMPLES, RayExecutor(load_tiny, workers=2))
    assert counters["samples_skipped"] == 2 and counters["samples_run"] == 2
    assert len(rows) == len({(r["sample_id"], r["method"]) for r in rows}) == 4 * len(CONFIGS)


def test_a_worker_lost_mid_job_is_retried_and_nothing_is_lost_or_written_twice(tmp_path):
    marker = tmp_path / "died"
    executor = RayExecutor(partial(load_tiny_dying_once, str(marker)), workers=2)
    counters, rows = sweep(tmp_path / "r.sqlite", SAMPLES, executor)
    assert marker.exists()  # a worker did die
    _, local = sweep(tmp_path / "local.sqlite", SAMPLES)
    assert counters["samples_run"] == 4 and essentials(rows) == essentials(local)
