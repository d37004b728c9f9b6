"""``restkv serve``'s app: transformers' own OpenAI-compatible server, its continuous batching under a press.

Everything that speaks HTTP and schedules requests is transformers' (``transformers serve``:
``transformers.cli.serving``): its FastAPI app, its chat-completion and completion handlers, its
continuous-batching generation manager. restkv adds three things through small subclasses and
wrappers: the model is one already loaded (the embedded one, never fetched from a hub), the
continuous-batching manager gets a :class:`~restkv.serve.paged.PagedEviction` attached before it
starts, and a request may name its own press in an extra body field ``restkv``
(``{"method": "snapkv", "budget": 256}``; the openai client sends it with ``extra_body``).
``GET /v1/restkv/stats`` reports what eviction did and how many blocks the pool has free.
"""

from __future__ import annotations

import threading
import time

from .._compat.transformers_serving import attaching_generation_state
from .._compat.uvicorn_server import bound_port
from ..checks import is_int
from .paged import PagedEviction

#: the extra request field that names a per-request press
REQUEST_FIELD = "restkv"


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


def press_from_request(spec) -> object:
    """A press from a request's ``restkv`` field: ``{"method": NAME, "budget": N, ...parameters}``."""
    from ..press import get_press

    if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
        raise ValueError(f'the {REQUEST_FIELD} field must be an object with a "method", got {spec!r}')
    params = dict(spec)
    return get_press(params.pop("method"), **params)


class ServedModel:
    """The app, its eviction and its uvicorn server, for one loaded model."""

    def __init__(self, loaded, press=None, *, name: str | None = None, page_size: int = 16,
                 num_blocks: int | None = None, max_batch_tokens: int = 4096):  # fmt: skip
        self.loaded = loaded
        self.name = name or getattr(loaded, "name", None) or "restkv-model"
        self.eviction = PagedEviction(loaded.model, press)
        self.cb_config = continuous_batching_config(page_size, num_blocks, max_batch_tokens)
        self.app = build_app(self)
        self.server = None
        self.thread = None

    # -- running ------------------------------------------------------------------------------
    def run(self, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
        """Serve in this thread until interrupted."""
        import uvicorn

        uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level=log_level)).run()

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> int:
        """Serve in a background thread; returns the port (a free one when ``port`` is 0)."""
        import uvicorn

        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="restkv-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.05)
        return bound_port(self.server)

    def stop(self) -> None:
        """Stop the continuous-batching worker and the HTTP server."""
        self.generation_state.shutdown()
        self.eviction.detach()
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)


def build_app(served: ServedModel):
    """transformers' serving app over ``served.loaded``'s model, with eviction and the stats route."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager, TimedModel
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler

    eviction = served.eviction

    models = ModelManager(device=str(served.loaded.model.device), continuous_batching=True, model_timeout=-1)
    key = models.process_model_name(served.name)
    models.loaded_models[key] = TimedModel(served.loaded.model, timeout_seconds=-1, processor=served.loaded.tokenizer)
    models.force_model = served.name  # requests name this model, or none
    state = attaching_generation_state(served.cb_config, eviction.attach)
    served.generation_state = state
    chat = ChatCompletionHandler(model_manager=models, generation_state=state)
    completion = CompletionHandler(model_manager=models, generation_state=state)
    for handler, kind in ((chat, "chat"), (completion, "completion")):
        _accept_press_field(handler, eviction, kind)
    app = build_server(
        models, chat, completion_handler=completion,
        response_handler=ResponseHandler(model_manager=models, generation_state=state),
        transcription_handler=TranscriptionHandler(models, state),
        systemone_handler=SystemOneHandler(model_manager=models, generation_state=state),
        generation_state=state,
    )  # fmt: skip

    @app.get("/v1/restkv/stats")
    def stats():
        return {"model": served.name, "press": repr(eviction.press), **eviction.snapshot()}

    return app


def check_request(body, kind: str) -> None:
    """One sentence (a ValueError) for a request body the server cannot answer as asked: not an
    object, a chat without a non-empty ``messages`` list, a completion without a ``prompt``, or
    a token limit below 1 (which used to cost a whole prefill for an empty answer)."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages must be a non-empty list of message objects")
    elif not isinstance(body.get("prompt"), (str, list)) or not body["prompt"]:
        raise ValueError("prompt must be a non-empty string or list")
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(field)
        if value is not None and (not is_int(value) or value < 1):
            raise ValueError(f"{field} must be a positive integer, got {value!r}")


def _accept_press_field(handler, eviction: PagedEviction, kind: str) -> None:
    """Let ``handler`` take a ``restkv`` body field (transformers rejects fields it does not know),
    and refuse with 400 what :func:`check_request` refuses, before any work."""
    from fastapi import HTTPException

    handle = handler.handle_request

    async def handle_request(body: dict, request_id: str):
        try:
            check_request(body, kind)
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        if REQUEST_FIELD in body:
            try:
                eviction.set_request_press(request_id, press_from_request(body.pop(REQUEST_FIELD)))
            except ValueError as err:
                raise HTTPException(status_code=400, detail=str(err)) from None
        return await handle(body, request_id)

    handler.handle_request = handle_request
