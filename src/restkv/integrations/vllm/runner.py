"""Inside vLLM's model runner: capture each prompt's window queries, and compress the prompt's
cache when its prefill completes (also when chunked prefill splits it over several steps).

Wrappers on the V1 model runner (see :mod:`restkv._compat.vllm` for where they sit):

1. ``_prepare_inputs``: the batch's rows are known; note which of them are a prompt's last
   ``window_size`` tokens and which requests finish their prompt in this step. After vLLM has
   prepared the step, rows of compacted requests read ``dropped`` fewer entries and write each
   new key ``dropped`` slots before its position, which RoPE still uses unchanged.
2. A forward pre-hook on every vLLM ``Attention`` layer copies those rows of its post-RoPE
   ``query``.
3. ``execute_model``: after the forward has written the step's keys and values, read each
   finished prompt's keys and values back through its block table, choose what the press keeps
   (:func:`restkv.integrations.vllm.keep.kept_indices`), write the kept entries to the request's
   first slots and shorten its block table; the scheduler frees the rest after the step
   (:mod:`restkv.integrations.vllm.scheduler`).

With ``observe_only`` the kept indices are recorded and nothing is written.
"""

from __future__ import annotations

import torch

from ..._compat import vllm as compat
from .config import Setting, engine_setting, request_setting
from .keep import LayerInfo, kept_indices
from .ledger import LEDGER, Compaction


def observed() -> list[tuple[str, int, dict[int, torch.Tensor]]]:
    """``(request id, prompt length, {layer: kept positions [H_kv, kept]})`` of the last requests
    the plugin compressed or observed, in this process."""
    return [(c.request_id, c.prompt_tokens, c.indices) for c, _ in list(LEDGER.history)]


def clear_observed() -> None:
    LEDGER.clear_history()


class RunnerHooks:
    """The plugin's state on one model runner."""

    def __init__(self, runner):
        self.runner = runner
        self.default = engine_setting(runner.vllm_config)
        self.layers: dict[int, LayerInfo] | None = None
        self.window_rows: list[tuple[str, int, int]] = []
        self.finishing: list[str] = []
        self.shifted: list[tuple[int, int, int, int, int]] = []
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
        self.window_rows, self.finishing, self.shifted = [], [], []
        for request_id in set(self.queries) - compat.known_requests(self.runner):
            del self.queries[request_id]  # aborted while its prompt was prefilling
        for index, (request_id, start, count, before) in enumerate(compat.batch_rows(self.runner, num_scheduled_tokens)):
            state = compat.request_state(self.runner, request_id)
            n = len(state.prompt_token_ids or ())
            if before >= n:  # decoding (or replaying its output after a preemption)
                dropped = LEDGER.dropped(request_id)
                if dropped:
                    self.shifted.append((index, start, count, before, dropped))
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

    def after_prepare(self) -> None:
        if self.shifted:
            compat.shift_rows(self.runner, self.shifted)

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

    # -- 3. compression once the prompt is in the cache -------------------------------------------
    @torch.no_grad()
    def after_step(self) -> None:
        self.window_rows = []
        for request_id in self.finishing:
            queries = self.queries.pop(request_id, None)
            if queries is not None:
                self.compress(request_id, queries)
        self.finishing = []

    def compress(self, request_id: str, queries: dict[int, list[torch.Tensor]]) -> None:
        state = compat.request_state(self.runner, request_id)
        n = len(state.prompt_token_ids)
        setting = self.setting(request_id)
        blocks = compat.block_ids(self.runner, request_id)
        kept, counts, written = {}, set(), []
        for index, info in sorted(self.layers.items()):
            read, write = compat.kv_access(info.module)
            keys, values = read(info.module.kv_cache, blocks, n)
            q = torch.cat(queries[index], dim=-2).to(keys.dtype)
            idx, new_keys, new_values = kept_indices(setting, q, keys, values, info, (index, len(self.layers)))
            kept[index] = idx[0]
            counts.add(idx.shape[-1])
            written.append((write, info.module.kv_cache, new_keys, new_values))
        if len(counts) != 1:  # one block table serves every layer (the uniform allocator is enforced)
            raise RuntimeError(f"restkv: layers kept different counts {sorted(counts)} for request {request_id}")
        count = counts.pop()
        compact = not setting.observe_only
        size = compat.block_size(self.runner)
        keep_blocks = -(-count // size) if compact else len(blocks)
        if compact:
            for write, cache, new_keys, new_values in written:
                write(cache, blocks[:keep_blocks], new_keys, new_values)
            compat.truncate_runner_blocks(self.runner, request_id, keep_blocks)
        LEDGER.compacted(Compaction(request_id, n, count, keep_blocks, len(blocks), kept, compact))


def install() -> None:
    """Wrap the V1 model runner (once per process)."""
    runner_class = compat.model_runner_class()
    if getattr(runner_class, "restkv_wrapped", False):
        return
    prepare, execute = runner_class._prepare_inputs, runner_class.execute_model

    def hooks_of(runner) -> RunnerHooks:
        hooks = runner.__dict__.get("restkv_hooks")
        if hooks is None:
            hooks = runner.__dict__["restkv_hooks"] = RunnerHooks(runner)
        return hooks

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        hooks = hooks_of(self)
        hooks.hook_model()
        hooks.before_step(num_scheduled_tokens)
        out = prepare(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
        hooks.after_prepare()
        return out

    def execute_model(self, *args, **kwargs):
        out = execute(self, *args, **kwargs)
        hooks = self.__dict__.get("restkv_hooks")
        if hooks is not None and hooks.finishing:
            hooks.after_step()
        return out

    runner_class._prepare_inputs = _prepare_inputs
    runner_class.execute_model = execute_model
    runner_class.restkv_wrapped = True
