"""``restkv serve``: transformers' chat and completion handlers and continuous batching, under a press.

What schedules requests and writes answers is transformers' (``transformers serve``'s handlers
and continuous-batching manager, ``transformers.cli.serving``). restkv adds: the model is one
already loaded (the embedded one, never fetched from a hub); the continuous-batching manager gets
a :class:`~restkv.serve.paged.PagedEviction` attached before it starts; a request may name its own
press in an extra body field ``restkv`` (``{"method": "snapkv", "budget": 256}``; the openai
client sends it with ``extra_body``); and every request is checked where it enters (its fields,
then whether the model's context and the cache pool can ever hold it) and gets a request id of
ours. The app itself (:mod:`restkv.serve.app`) exposes chat and text completions, the model list,
``/health`` (the batching worker's real state) and ``GET /v1/restkv/stats`` (what eviction did
and how many blocks the pool has free): no reset, no model loading.
"""

from __future__ import annotations

import threading
import time

from .._compat.transformers_serving import (
    pool_sectors,
    request_sectors,
    total_blocks,
    worker_error,
    worker_of,
)
from .._compat.uvicorn_server import bound_port
from ..checks import first_line, is_int
from .paged import PagedEviction, budget_of


def continuous_batching_config(page_size: int = 16, num_blocks: int | None = None, max_batch_tokens: int = 4096):
    """The settings eviction needs: no prefix sharing (compressed blocks no longer hold what they hash),
    no async double-buffering (compression runs between one batch's update and the next batch), and
    no silent switch to a flash kernel."""
    from transformers import ContinuousBatchingConfig

    return ContinuousBatchingConfig(
        page_size=page_size,
        num_blocks=num_blocks,
        max_batch_tokens=max_batch_tokens,
        allow_block_sharing=False,
        use_async_batching=False,
        auto_switch_to_flash=False,
        max_blocks_per_request=0,  # the index-based path, which reads the block tables we rewrite
    )


class ServedModel:
    """The app, its eviction and its uvicorn server, for one loaded model.

    Args:
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        allow_beyond_context: serve prompts longer than the model's trained context (refused with
            413 otherwise).
    """

    #: seconds a stopping server waits for requests in flight before it closes them
    GRACE_S = 5

    def __init__(self, loaded, press=None, *, name: str | None = None, page_size: int = 16,
                 num_blocks: int | None = None, max_batch_tokens: int = 4096, api_key: str | None = None,
                 allow_beyond_context: bool = False):  # fmt: skip
        self.loaded = loaded
        self.name = name or getattr(loaded, "name", None) or "restkv-model"
        self.eviction = PagedEviction(loaded.model, press)
        self.cb_config = continuous_batching_config(page_size, num_blocks, max_batch_tokens)
        self.api_key = api_key
        self.context_limit = None if allow_beyond_context else context_limit(loaded.model)
        from .app import build_app  # FastAPI is the serve extra's

        self.app = build_app(self)
        self.server = None
        self.thread = None
        self._stopped_worker = None  # the worker stop_worker asked to stop, to tell whether it did

    # -- running ------------------------------------------------------------------------------
    def _config(self, host: str, port: int, **settings):
        import uvicorn

        # without a bound a request that never ends (a stuck client, a dead worker) keeps SIGTERM waiting
        return uvicorn.Config(self.app, host=host, port=port, timeout_graceful_shutdown=self.GRACE_S, **settings)

    def run(self, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
        """Serve in this thread until SIGINT or SIGTERM, then stop the batching worker."""
        import uvicorn

        try:
            uvicorn.Server(self._config(host, port, log_level=log_level, lifespan="off")).run()
        finally:
            self.stop_worker()

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> int:
        """Serve in a background thread; returns the port (a free one when ``port`` is 0)."""
        import uvicorn

        self.server = uvicorn.Server(self._config(host, port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="restkv-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.05)
        return bound_port(self.server)

    def stop(self) -> None:
        """Stop the HTTP server and the continuous-batching worker."""
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=self.GRACE_S + 5)
        self.stop_worker()

    def stop_worker(self) -> None:
        """Stop the continuous-batching worker (waiting a few seconds at most) and remove the hooks."""
        self._stopped_worker = worker_of(self.generation_state)
        self.generation_state.shutdown()
        self.eviction.detach()

    def worker_alive(self) -> bool:
        """Whether the continuous-batching worker's thread is still running."""
        worker = worker_of(self.generation_state) or self._stopped_worker
        return worker is not None and worker.is_running()

    # -- what the routes ask ------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        """The batching worker's real state: not started yet, running, stopped, or dead and why."""
        worker = worker_of(self.generation_state)
        if worker is None:
            return 200, {"status": "ok", "worker": "not started (it starts with the first request)"}
        error = worker_error(worker)
        if error is not None:
            return 503, {"status": "unhealthy", "worker": "dead", "reason": first_line(error)}
        if not worker.is_running():
            return 503, {"status": "unhealthy", "worker": "stopped"}
        return 200, {"status": "ok", "worker": "running"}

    def admit(self, input_ids, gen_config, request_id: str) -> None:
        """Refuse, with 413 and the reason, a request the model's context or the cache pool can never
        hold (the scheduler would fail it, and with it the worker every later request needs)."""
        from fastapi import HTTPException

        n, new = len(input_ids), gen_config.max_new_tokens or 0
        if self.context_limit is not None and n + new > self.context_limit:
            raise HTTPException(
                status_code=413,
                detail=f"the prompt ({n} tokens) and max_tokens ({new}) exceed the model's context of "
                f"{self.context_limit} tokens; shorten them, or start the server with --allow-beyond-context",
            )
        cache = self._pool()
        if cache is None:
            return  # the worker died starting: the generation call reports it (503)
        peak = peak_tokens(self.eviction.press_of(request_id), n, new)
        if request_sectors(cache, peak) > pool_sectors(cache):
            self.eviction.forget(request_id)
            raise HTTPException(
                status_code=413,
                detail=f"the request needs room for {peak} tokens at once (prompt {n}, max_tokens {new}) and the "
                f"cache pool holds {total_blocks(cache)} blocks of {self.cb_config.page_size} tokens; shorten it, "
                "or start the server with more --num-blocks",
            )

    def _pool(self, timeout: float = 60.0):
        """The paged cache, once the worker's thread has built it (right after the first request starts it)."""
        deadline = time.monotonic() + timeout
        while self.eviction.processor is None:
            worker = worker_of(self.generation_state)
            if worker is None or worker_error(worker) is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        return self.eviction.processor.cache

    def cancel(self, request_id: str) -> None:
        """Stop generating for a request whose client has gone, and forget what eviction kept for it."""
        worker = worker_of(self.generation_state)
        if worker is not None:
            worker.cancel_request(request_id)
        self.eviction.forget(request_id)


def context_limit(model) -> int | None:
    """The longest sequence the model was trained on (``max_position_embeddings``), if it says."""
    config = getattr(model.config, "text_config", None) or model.config
    limit = getattr(config, "max_position_embeddings", None)
    return limit if is_int(limit) and limit > 0 else None


def peak_tokens(press, prompt: int, new: int) -> int:
    """The most tokens a request's cache holds at once: its prompt, until compression right after
    prefill leaves the budget to which the answer is added."""
    if press is None:
        return prompt + new
    return max(prompt, budget_of(press, prompt) + new)
