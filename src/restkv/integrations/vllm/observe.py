"""Inside vLLM's model runner: capture each prompt's window queries, and score the prompt when its
prefill completes (also when chunked prefill splits it over several steps).

Three wrappers on the V1 model runner (see :mod:`restkv._compat.vllm` for where they sit):

1. ``_prepare_inputs``: the batch's rows are known; note which of them are a prompt's last
   ``window_size`` tokens, and which requests finish their prompt in this step.
2. A forward pre-hook on every vLLM ``Attention`` layer copies those rows of its post-RoPE
   ``query``.
3. ``execute_model``: after the forward has written the step's keys and values, read each
   finished prompt's keys and values back through its block table, and choose what a
   compression keeps (:func:`restkv.integrations.vllm.keep.kept_indices`).

What is kept is recorded (:func:`observed`); nothing is written back and no block is freed yet.
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from ..._compat import vllm as compat
from .config import Setting, engine_setting, request_setting
from .keep import LayerInfo, kept_indices

#: the last requests' kept indices: (request id, prompt length, {layer: [H_kv, kept]})
_RECORDS: deque = deque(maxlen=256)
_LOCK = threading.Lock()


def observed() -> list[tuple[str, int, dict[int, torch.Tensor]]]:
    """What the plugin chose to keep for the last requests it scored, in this process."""
    with _LOCK:
        return list(_RECORDS)


def clear_observed() -> None:
    with _LOCK:
        _RECORDS.clear()


class RunnerObserver:
    """The plugin's state on one model runner."""

    def __init__(self, runner):
        self.runner = runner
        self.default = engine_setting(runner.vllm_config)
        self.layers: dict[int, LayerInfo] | None = None
        self.window_rows: list[tuple[str, int, int]] = []
        self.finishing: list[str] = []
        self.queries: dict[str, dict[int, list[torch.Tensor]]] = {}

    def setting(self, request_id: str) -> Setting:
        state = compat.request_state(self.runner, request_id)
        return request_setting(state.sampling_params, self.default)

    def hook_model(self) -> None:
        if self.layers is not None:
            return
        model = self.runner.get_model()
        parents = dict(model.named_modules())
        attention = compat.attention_class()
        layers = {}
        for name, module in model.named_modules():
            if isinstance(module, attention):
                parent = parents[name.rsplit(".", 1)[0]]
                layers[compat.layer_index(module)] = LayerInfo.of(module, parent)
                module.register_forward_pre_hook(self._capture, with_kwargs=True)
        self.layers = layers

    # -- 1. the batch's rows ---------------------------------------------------------------
    def before_step(self, num_scheduled_tokens) -> None:
        self.window_rows, self.finishing = [], []
        for request_id, start, count, before in compat.batch_rows(self.runner, num_scheduled_tokens):
            state = compat.request_state(self.runner, request_id)
            n = len(state.prompt_token_ids or ())
            if before >= n:  # decoding
                continue
            if before == 0:  # a (re)started prompt: forget what an earlier run captured
                self.queries.pop(request_id, None)
            setting = self.setting(request_id)
            if not setting.evicting or setting.budget(n) >= n:
                continue
            window = min(setting.press.scorer.window_size, n)
            first, end = max(n - window, before), min(n, before + count)
            if end > first:
                self.window_rows.append((request_id, start + first - before, start + end - before))
            if before + count >= n:
                self.finishing.append(request_id)

    # -- 2. the queries ----------------------------------------------------------------------
    def _capture(self, module, args, kwargs):
        if not self.window_rows:
            return None
        query = args[0] if args else kwargs["query"]
        index = compat.layer_index(module)
        info = self.layers[index]
        for request_id, a, b in self.window_rows:
            q = query[a:b].reshape(b - a, info.num_heads, info.head_size).transpose(0, 1)[None].clone()
            self.queries.setdefault(request_id, {}).setdefault(index, []).append(q)
        return None

    # -- 3. scoring once the prompt is in the cache -------------------------------------------
    @torch.no_grad()
    def after_step(self) -> None:
        self.window_rows = []
        for request_id in self.finishing:
            queries = self.queries.pop(request_id, None)
            if queries is None:
                continue
            state = compat.request_state(self.runner, request_id)
            n = len(state.prompt_token_ids)
            setting = self.setting(request_id)
            blocks = compat.block_ids(self.runner, request_id)
            kept = {}
            for index, info in sorted(self.layers.items()):
                compat.check_cpu_isa(getattr(info.module, "isa", None))
                keys, values = compat.read_kv_cpu(info.module.kv_cache, blocks, n)
                q = torch.cat(queries[index], dim=-2).to(keys.dtype)
                kept[index] = kept_indices(setting, q, keys, values, info, (index, len(self.layers)))[0][0]
            with _LOCK:
                _RECORDS.append((request_id, n, kept))
        self.finishing = []


def install() -> None:
    """Wrap the V1 model runner (once per process)."""
    runner_class = compat.model_runner_class()
    if getattr(runner_class, "restkv_wrapped", False):
        return
    prepare, execute = runner_class._prepare_inputs, runner_class.execute_model

    def observer_of(runner) -> RunnerObserver:
        observer = runner.__dict__.get("_restkv_observer")
        if observer is None:
            observer = runner.__dict__["_restkv_observer"] = RunnerObserver(runner)
        return observer

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        observer = observer_of(self)
        observer.hook_model()
        observer.before_step(num_scheduled_tokens)
        return prepare(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)

    def execute_model(self, *args, **kwargs):
        out = execute(self, *args, **kwargs)
        observer = self.__dict__.get("_restkv_observer")
        if observer is not None and observer.finishing:
            observer.after_step()
        return out

    runner_class._prepare_inputs = _prepare_inputs
    runner_class.execute_model = execute_model
    runner_class.restkv_wrapped = True
