"""Units of sweep work, and where they run: in this process, or on Ray actors.

A :class:`Job` is one prompt (or, query-agnostic, one shared context and its questions) with the
configurations still to run on it: everything the engine needs, in tensors and plain values, so
it can be shipped to another process. Prefill-once-compress-many stays inside one job. Running a
job returns outcomes, never rows: rows are built and written by the driver, the store's single
writer, as jobs finish.

Ray (``pip install 'restkv[ray]'``) is used as it is: one actor per worker loads the model once,
jobs go to free actors, and an actor that dies is restarted and its job retried by Ray. A job's
rows are written only once its outcomes are back, so a retried job is never written twice, and
a run killed halfway resumes like a local one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..extras import require
from ..probes import probe_settings
from ..specs import MethodConfig
from .engine import Engine, Outcome
from .tasks.stops import prediction_reader


@dataclass
class Job:
    """One unit of work: ``kind`` is ``generate``, ``agnostic`` or ``teacher_forced``."""

    kind: str
    todo: list[MethodConfig]
    ids: torch.Tensor  # the prompt [1, n], or the shared context (agnostic)
    samples: list = field(default_factory=list)  # (sample, settings) per sample this job answers
    max_new_tokens: int = 0
    window: dict | None = None  # auto-window presses: their range -> the question's length
    questions: list = field(default_factory=list)  # agnostic: (question ids [1, q], max_new_tokens) per sample
    continuation: list | None = None  # teacher_forced: the token ids fed after the prompt
    answer: object = None  # generate: the sample's AnswerStop (None: decode to an end token or the limit)


def execute(engine: Engine, job: Job, stop, batch: int) -> list[list[Outcome]]:
    """The job's outcomes: one list (in ``job.todo`` order) per sample of the job."""
    if job.kind == "teacher_forced":
        return [engine.fidelity(job.ids, job.continuation, configs=job.todo, batch=batch)]
    if job.kind == "agnostic":
        return engine.run_agnostic(job.ids, job.questions, stop, configs=job.todo, batch=batch)
    return [
        engine.run(
            job.ids, job.max_new_tokens, stop, configs=job.todo, batch=batch, window=job.window, answer=job.answer
        )
    ]


def run_local(engine: Engine, jobs: Iterable[Job], stop, batch: int, done: Callable[[Job, list], None]) -> None:
    for job in jobs:
        done(job, execute(engine, job, stop, batch))


class _Worker:
    """A Ray actor's state: the model, loaded once, and its engine."""

    def __init__(self, load: Callable, configs: list[MethodConfig], kv_quant, stop, batch: int):
        loaded = load()
        self.engine = Engine(loaded.model, configs, kv_quant, text=prediction_reader(loaded.tokenizer, stop),
                             **probe_settings(loaded.tokenizer))  # fmt: skip
        self.stop, self.batch = stop, batch

    def run(self, job: Job) -> list[list[Outcome]]:
        return execute(self.engine, job, self.stop, self.batch)


@dataclass
class RayExecutor:
    """Jobs on ``workers`` Ray actors, each loading the model once with ``load()`` (a picklable
    callable returning what :func:`restkv.models.load_model` returns).

    ``address``: a running cluster's (``"auto"``), or None for a local one started here.
    """

    load: Callable
    workers: int = 2
    address: str | None = None
    cpus_per_worker: float = 1

    def run(self, configs, kv_quant, jobs: Iterable[Job], stop, batch: int, done: Callable[[Job, list], None]):
        """``done(job, outcomes)`` is called here, in the driver, in completion order."""
        require("ray", "--executor ray")
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        # a dead actor is restarted and the job it held is retried (its rows were not written yet)
        actor = ray.remote(num_cpus=self.cpus_per_worker, max_restarts=-1, max_task_retries=3)(_Worker)
        pool = [actor.remote(self.load, configs, kv_quant, stop, batch) for _ in range(self.workers)]
        idle, running, pending = list(pool), {}, iter(jobs)
        try:
            while True:
                while idle and (job := next(pending, None)) is not None:
                    worker = idle.pop()
                    running[worker.run.remote(job)] = (job, worker)
                if not running:
                    return
                (finished,), _ = ray.wait(list(running), num_returns=1)
                job, worker = running.pop(finished)
                done(job, ray.get(finished))
                idle.append(worker)
        finally:
            for worker in pool:
                ray.kill(worker)
