"""Inside vLLM's scheduler: free the blocks a compaction emptied, and size what a compacted request
allocates from the entries it holds rather than the tokens it has seen.

Wrappers on vLLM's V1 scheduler and its full-attention block manager (see
:mod:`restkv._compat.vllm` for where they sit):

* ``Scheduler.update_from_output`` (after each step): the compactions the model runner made in
  the step give their blocks after the kept ones back to the pool.
* ``FullAttentionManager.get_num_blocks_to_allocate`` and ``allocate_new_blocks``: a compacted
  request needs slots for ``tokens - dropped`` entries.
* ``Scheduler._free_request_blocks`` (a request finished, was aborted or preempted): the
  request's record goes with its blocks.
* ``Scheduler._reserve_prefill_lookahead``: a preempted request recomputes its prompt and its
  output in one prefill; its chunk ends at the prompt's end, so the prompt is compressed as it
  was the first time and the output is recomputed over the compressed cache.
"""

from __future__ import annotations

import logging

from ..._compat import vllm as compat
from .config import engine_setting, request_setting
from .ledger import LEDGER

#: a child of vLLM's logger, so its lines reach vLLM's own handler (``vllm serve``'s log)
LOG = logging.getLogger("vllm.restkv")


def compacts(scheduler, request) -> bool:
    """Whether the request's prompt is compacted when its prefill completes."""
    setting = request_setting(request.sampling_params, engine_setting(scheduler.vllm_config))
    n = request.num_prompt_tokens
    return setting.evicting and not setting.observe_only and setting.budget(n) < n


def install() -> None:
    """Wrap the scheduler and the full-attention block manager (once per process)."""
    scheduler = compat.scheduler_class()
    if getattr(scheduler, "restkv_wrapped", False):
        return
    update, free, reserve = scheduler.update_from_output, scheduler._free_request_blocks, scheduler._reserve_prefill_lookahead
    manager = compat.full_attention_manager_class()
    count_blocks, allocate = manager.get_num_blocks_to_allocate, manager.allocate_new_blocks

    def update_from_output(self, *args, **kwargs):
        for compaction in LEDGER.take_pending():
            freed = compat.free_scheduler_blocks(self, compaction.request_id, compaction.blocks_kept)
            free_now = compat.free_block_count(self)
            LEDGER.applied(compaction, free_now)
            LOG.info(
                "restkv: request %s keeps %d of %d entries per layer and head; %d blocks back to the pool (%d free)",
                compaction.request_id, compaction.kept, compaction.prompt_tokens, freed, free_now,
            )  # fmt: skip
        return update(self, *args, **kwargs)

    def _free_request_blocks(self, request):
        out = free(self, request)
        LEDGER.forget(request.request_id)
        return out

    def _reserve_prefill_lookahead(self, request, num_computed_tokens, num_new_tokens):
        count = reserve(self, request, num_computed_tokens, num_new_tokens)
        n = request.num_prompt_tokens
        if num_computed_tokens < n < num_computed_tokens + count and compacts(self, request):
            count = n - num_computed_tokens
        return count

    def get_num_blocks_to_allocate(self, request_id, num_tokens, *args, **kwargs):
        return count_blocks(self, request_id, num_tokens - LEDGER.dropped(request_id), *args, **kwargs)

    def allocate_new_blocks(self, request_id, num_tokens, *args, **kwargs):
        return allocate(self, request_id, num_tokens - LEDGER.dropped(request_id), *args, **kwargs)

    scheduler.update_from_output = update_from_output
    scheduler._free_request_blocks = _free_request_blocks
    scheduler._reserve_prefill_lookahead = _reserve_prefill_lookahead
    manager.get_num_blocks_to_allocate = get_num_blocks_to_allocate
    manager.allocate_new_blocks = allocate_new_blocks
    scheduler.restkv_wrapped = True
