"""restkv as a vLLM plugin (``vllm.general_plugins`` entry point ``restkv``).

Configured by vLLM's own settings: ``LLM(model, additional_config={"restkv": {"method": "restkv",
"budget": 256}})`` (or ``vllm serve --additional-config '...'``)
for the engine, and ``SamplingParams(extra_args={"restkv": {...}})`` per request (``{"method": "full"}``
opts a request out). Settings are validated once, in the process that builds the engine, and
per request before the engine accepts it (a ``ValueError``: HTTP 400 in ``vllm serve``).

What runs: ``full`` serves with vLLM's own behaviour. An evicting method captures each prompt's
window queries inside the model runner, reads its keys and values back through its block table
once its prefill completes (chunked or not), keeps what the press keeps, moves the kept entries to
the request's first blocks and gives the others back to vLLM's pool; later tokens are stored
right after the kept entries at their true rotary position. ``observe_only=true`` records the
kept indices (:func:`observed`) and leaves the cache as it is. Engines and settings the plugin
cannot serve are refused in one sentence.
"""

from __future__ import annotations

from .config import Setting, engine_setting, parse, request_setting


def register() -> None:
    """The entry point vLLM runs in each of its processes: wrap the seams (once per process)."""
    from ..._compat import vllm as compat

    compat.check()
    _wrap_engine_args(compat.engine_args_class())
    _wrap_input_processor(compat.input_processor_class())
    from . import runner, scheduler

    runner.install()
    scheduler.install()


def observed():
    """What the plugin kept for the last requests it compressed or observed (in the engine's process)."""
    from .runner import observed as records

    return records()


def _wrap_engine_args(engine_args) -> None:
    if getattr(engine_args, "restkv_wrapped", False):
        return
    create = engine_args.create_engine_config

    def create_engine_config(self, *args, **kwargs):
        vllm_config = create(self, *args, **kwargs)
        engine_setting(vllm_config)  # raises one sentence before any engine process starts
        return vllm_config

    engine_args.create_engine_config = create_engine_config
    engine_args.restkv_wrapped = True


def _wrap_input_processor(processor) -> None:
    from ..._compat import vllm as compat

    if getattr(processor, "restkv_wrapped", False):
        return
    validate = processor._validate_params

    def _validate_params(self, params, *args, **kwargs):
        out = validate(self, params, *args, **kwargs)
        default = engine_setting(self.vllm_config)
        try:
            request_setting(params, default, self.vllm_config)
        except ValueError as err:
            raise compat.request_error(str(err)) from None
        return out

    processor._validate_params = _validate_params
    processor.restkv_wrapped = True


__all__ = ["Setting", "engine_setting", "observed", "parse", "register", "request_setting"]
