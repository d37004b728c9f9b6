"""The plugin's settings: ``additional_config={"restkv": {...}}`` for the engine, and
``SamplingParams(extra_args={"restkv": {...}})`` per request, each refused in one sentence.

A setting is a dict naming a registered ``method`` (``"full"`` keeps everything) and that
method's parameters, exactly as :func:`restkv.get_press` takes them, plus the plugin's own
``observe_only``: with it a request's prompt is scored and the entries a compression would keep
are recorded, while decoding goes on over the full cache (what the tests compare against
restkv's scorer on transformers); without it the kept entries are moved to the request's first
blocks and the rest go back to vLLM's pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from ...budgets import tokens_to_keep

KEY = "restkv"
#: the plugin's own keys (the rest go to get_press)
OWN = ("method", "observe_only")


@dataclass(frozen=True)
class Setting:
    """One validated setting: its press (None: keep everything) and whether it only observes."""

    method: str
    press: object | None
    observe_only: bool

    @property
    def evicting(self) -> bool:
        return self.press is not None

    def budget(self, n: int) -> int:
        """Entries per KV head a compression keeps of an ``n``-token prompt."""
        press = self.press
        return tokens_to_keep(n, press.budget, press.compression_ratio, press.scorer.window_size)


FULL = Setting("full", None, False)


def parse(raw, where: str) -> Setting:
    """A :class:`Setting` from ``raw`` (a dict, or None for ``full``); ``where`` names its origin."""
    if raw is None:
        return FULL
    if isinstance(raw, str):  # over HTTP: vllm_xargs holds flat values, so a JSON object as a string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            pass
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where} must be a dict (or, over HTTP, a JSON object string) such as "
            f"{{'method': 'restkv', 'budget': 256}}, got {raw!r}"
        )
    try:
        key = json.dumps(raw, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"{where} must hold JSON values only ({err})") from None
    return _parse(key, where)


@lru_cache(maxsize=256)
def _parse(key: str, where: str) -> Setting:
    from ...press import get_press

    raw = json.loads(key)
    method = raw.get("method")
    if not isinstance(method, str):
        raise ValueError(f"{where} needs a 'method' (a registered method name, or 'full'), got {method!r}")
    observe = raw.get("observe_only", False)
    if not isinstance(observe, bool):
        raise ValueError(f"{where}: observe_only must be true or false, got {observe!r}")
    settings = {k: v for k, v in raw.items() if k not in OWN}
    try:
        press = get_press(method, **settings)
    except (TypeError, KeyError) as err:  # an unknown parameter or method, said by the registry
        raise ValueError(f"{where}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if press.scorer is None:
        return FULL
    check_press(press, where)
    return Setting(method, press, observe)


def check_press(press, where: str) -> None:
    """Presses a compression after prefill cannot serve: the serving rules of :mod:`restkv.options`."""
    from ...options import refusal

    sentence = refusal("serving", press)
    if sentence is not None:
        raise ValueError(f"{where}: {sentence}")


def engine_refusal(vllm_config) -> str | None:
    """Why this engine cannot run an evicting method (one sentence), or None."""
    model = vllm_config.model_config
    hf = getattr(model, "hf_text_config", None) or model.hf_config
    layer_types = set(getattr(hf, "layer_types", None) or ())
    if getattr(hf, "sliding_window", None) or (layer_types - {"full_attention"}):
        return f"{hf.model_type} has sliding-window or non-attention layers, which the plugin does not compress yet"
    if vllm_config.cache_config.enable_prefix_caching:
        return "turn off prefix caching (enable_prefix_caching=False): compressed blocks no longer hold the tokens they hash"
    if vllm_config.speculative_config is not None:
        return "speculative decoding is not supported with eviction"
    parallel = vllm_config.parallel_config
    if parallel.tensor_parallel_size > 1 or parallel.pipeline_parallel_size > 1:
        return "the plugin runs on one worker only for now (tensor_parallel_size=1, pipeline_parallel_size=1)"
    if vllm_config.scheduler_config.async_scheduling:
        return "turn off async scheduling (async_scheduling=False): the plugin compacts a request's cache between two steps"
    if parallel.distributed_executor_backend not in (None, "uni"):
        return (
            "the plugin needs the scheduler and its one worker in one process (distributed_executor_backend='uni'; "
            "vLLM's CPU build turns 'uni' into 'mp' unless VLLM_ENABLE_V1_MULTIPROCESSING=0)"
        )
    if vllm_config.use_v2_model_runner:
        return "the plugin hooks vLLM's V1 model runner: set VLLM_USE_V2_MODEL_RUNNER=0"
    return None


def engine_setting(vllm_config) -> Setting:
    """The engine's setting from its ``additional_config``, validated against the engine."""
    raw = (vllm_config.additional_config or {}).get(KEY) if isinstance(vllm_config.additional_config, dict) else None
    setting = parse(raw, 'additional_config["restkv"]')
    if setting.evicting:
        refusal = engine_refusal(vllm_config)
        if refusal is not None:
            raise ValueError(f"restkv {setting.method}: {refusal}")
    return setting


def request_setting(sampling_params, default: Setting, vllm_config=None) -> Setting:
    """A request's setting (its ``extra_args["restkv"]``, else the engine's)."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    if KEY not in extra:
        return default
    setting = parse(extra[KEY], 'extra_args["restkv"]')
    if setting.evicting and vllm_config is not None:
        refusal = engine_refusal(vllm_config)
        if refusal is not None:
            raise ValueError(f"restkv {setting.method}: {refusal}")
    return setting
