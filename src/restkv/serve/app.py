"""``restkv serve``'s FastAPI app: transformers' chat and completion handlers, and only what a client needs.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations as types.
"""

import asyncio
import hmac
import uuid

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from .._compat.transformers_serving import attaching_generation_state
from ..checks import first_line
from .request_checks import REQUEST_FIELD, check_request, press_from_request


def build_app(served) -> FastAPI:
    """A FastAPI app with transformers' chat and completion handlers over ``served.loaded``'s model
    (a :class:`~restkv.serve.server.ServedModel`), and nothing a client could use to change the
    server: no reset, no model loading. Routes: chat and text completions, models, health, our stats."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager, TimedModel
    from transformers.cli.serving.utils import CBWorkerDeadError

    eviction = served.eviction
    models = ModelManager(device=str(served.loaded.model.device), continuous_batching=True, model_timeout=-1)
    key = models.process_model_name(served.name)
    models.loaded_models[key] = TimedModel(served.loaded.model, timeout_seconds=-1, processor=served.loaded.tokenizer)
    models.force_model = served.name  # requests name this model, or none
    state = attaching_generation_state(served.cb_config, eviction.attach, served.admit)
    served.generation_state = state
    handlers = {
        "chat": ChatCompletionHandler(model_manager=models, generation_state=state),
        "completion": CompletionHandler(model_manager=models, generation_state=state),
    }

    def authorize(request: Request) -> None:
        # a dependency, not an HTTP middleware: starlette's middleware hides a client's disconnect
        if served.api_key is not None and request.url.path != "/health":
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {served.api_key}".encode()):
                raise HTTPException(status_code=401, detail="a valid API key is needed (Authorization: Bearer <key>)")

    app = FastAPI(dependencies=[Depends(authorize)])

    @app.exception_handler(CBWorkerDeadError)
    async def worker_dead(_request, err):
        return JSONResponse({"error": first_line(err)}, status_code=503)

    async def answer(request: Request, body: dict, kind: str):
        try:
            check_request(body, kind)
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        request_id = f"restkv-{uuid.uuid4().hex}"  # ours: a client's id could collide with another's
        if REQUEST_FIELD in body:
            try:
                eviction.set_request_press(request_id, press_from_request(body.pop(REQUEST_FIELD)))
            except ValueError as err:
                raise HTTPException(status_code=400, detail=str(err)) from None
        work = asyncio.ensure_future(handlers[kind].handle_request(body, request_id))
        try:
            while not (await asyncio.wait({work}, timeout=0.25))[0]:
                if await request.is_disconnected():  # nobody will read the answer: stop making it
                    work.cancel()
                    served.cancel(request_id)
                    return JSONResponse({"error": "the client disconnected"}, status_code=499)
            response = work.result()
        except BaseException:
            work.cancel()
            served.cancel(request_id)
            raise
        response.headers["X-Request-ID"] = request_id
        return response

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: dict):
        return await answer(request, body, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request, body: dict):
        return await answer(request, body, "completion")

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": models.list_models()}

    @app.get("/health")
    def health():
        status, report = served.health()
        return JSONResponse(report, status_code=status)

    @app.get("/v1/restkv/stats")
    def stats():
        return {"model": served.name, "press": repr(eviction.press), **eviction.snapshot()}

    return app
