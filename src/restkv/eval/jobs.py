"""Units of sweep work, and where they run: in this process, or on Ray actors.

A :class:`Job` is one prompt (or, query-agnostic, one shared context and its questions) with the
configurations still to run on it: everything the engine needs, in tensors and plain values, so
it can be shipped to another process. Prefill-once-compress-many stays inside one job. Running a
job returns outcomes, never rows: rows are built and written by the driver, the store's single
writer, as jobs finish.

Ray (``pip install 'restkv[ray]'``) is used as it is: one actor per worker loads the model once,
jobs go to free actors, and an actor that dies is restarted and its job retried by Ray. A job's
rows are written only once its outcomes are back, so a retried job is never written twice, and
a run killed halfway resumes like a local one. A cluster named by address is checked first,
with a short TCP connect, so one that is not there is one sentence instead of a connection
attempt that Ray retries for minutes (deaf to SIGTERM while it blocks).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..checks import first_line
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


CONNECT_TIMEOUT_S = 5  # a cluster on the network answers a TCP connect well within this


class ClusterError(ValueError):
    """A Ray cluster that cannot be found or reached."""


def _named(address: str | None) -> str | None:
    """The address ``ray.init(address=address)`` connects to when one is named, here or (for None
    and ``auto``, as Ray reads it) in ``RAY_ADDRESS``; None when Ray starts a cluster of its own
    or, for ``auto``, looks for one on this machine."""
    if address in (None, "auto") and os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    return None if address in (None, "auto", "local") else address


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port``, ``[v6]:port`` or ``ray://host:port``; None for anything else."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str | None) -> None:
    """Raise :class:`ClusterError` unless the cluster ``address`` names (see :func:`_named`)
    accepts a TCP connection within ``CONNECT_TIMEOUT_S``; nothing to check for a local one."""
    named = _named(address)
    host_port = _host_port(named) if named else None
    if host_port is None:
        return
    try:
        socket.create_connection(host_port, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ClusterError(
            f"no Ray cluster answers at {named} ({err.strerror or err}); start one there or give another --address"
        ) from None


def _connect(address: str | None) -> None:
    """``ray.init`` for ``address``, after :func:`check_reachable`; Ray's own refusals are one sentence."""
    import ray

    if ray.is_initialized():
        return
    check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError:  # auto, and Ray found no cluster on this machine
        raise ClusterError(
            f"found no running Ray cluster for --address {address}; start one with `ray start --head` "
            "or give its host:port"
        ) from None
    except RuntimeError as err:  # e.g. a cluster of another Ray version
        raise ClusterError(f"cannot join the Ray cluster at {address}: {first_line(err)}") from None


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

    ``address``: a running cluster's (``host:port``, or ``"auto"``: the one on this machine), or
    None for a local one started here. A ``host:port`` that does not answer is a
    :class:`ClusterError` as soon as the executor is made, before the results store is opened.
    """

    load: Callable
    workers: int = 2
    address: str | None = None
    cpus_per_worker: float = 1

    def __post_init__(self):
        require("ray", "--executor ray")
        check_reachable(self.address)

    def run(self, configs, kv_quant, jobs: Iterable[Job], stop, batch: int, done: Callable[[Job, list], None]):
        """``done(job, outcomes)`` is called here, in the driver, in completion order."""
        import ray

        _connect(self.address)  # checked again: the cluster may have gone since the executor was made
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
