"""transformers' continuous batching and serving CLI: the internals restkv's paged eviction hooks into.

* ``ContinuousBatchingManager._create_batch_processor`` builds the batch processor when the
  generation thread starts; restkv wraps it to hook each processor it returns.
* A ``PagedAttentionCache`` has one allocator per attention type (``cache_allocators``); an
  allocator keeps each request's ``block_table`` (request id -> block ids), a ``ledger`` of
  block references (``release(block, no_cache=...)``) and the shared ``pool`` of sectors and
  free blocks (``free_blocks``, ``count_free_blocks``, ``num_free_sectors``, ``num_sectors``).
* ``transformers serve``'s ``CBGenerateManager`` / ``GenerationState`` keep their manager and
  settings in ``_cb``, ``_cb_config`` and ``_cb_manager``; restkv subclasses them to attach
  eviction before the manager's thread starts and to check each request before it is queued
  (``generate_streaming`` / ``generate_non_streaming``); the worker's fatal error is
  ``background_thread_status.fatal_error``.
* An allocator's ``needs_new_blocks(request_id, past, query)`` and ``blocks_per_sector``, and
  the pool's ``num_sectors``, say whether a request can ever fit.
* The manager's generation thread is not a daemon: one stuck in a forward pass keeps the
  interpreter alive at exit, so :func:`exit_without_worker` leaves with ``os._exit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .versions import require

DISTRIBUTION = "transformers"
#: continuous batching's block ledger and sectored pool, and the serving CLI's managers, as of 5.24
SUPPORTED = ">=5.24,<6"
SEAM = "restkv's paged eviction inside transformers' continuous batching"


def check() -> None:
    """Raise one sentence when the installed transformers is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def wrap_batch_processor_factory(manager, hook: Callable[[object], None]) -> None:
    """Call ``hook(processor)`` on every batch processor ``manager`` creates from now on
    (before ``manager.start()``: its generation thread creates the processor)."""
    check()
    create = manager._create_batch_processor

    def create_and_hook():
        processor = create()
        hook(processor)
        return processor

    manager._create_batch_processor = create_and_hook


def release_blocks(allocator, request_id: str, keep_blocks: int) -> None:
    """Shorten a request's block table to ``keep_blocks`` and give the rest back to the pool."""
    check()
    table = allocator.block_table[request_id]
    freed = table[keep_blocks:]
    del table[keep_blocks:]
    released = [block for block in freed if allocator.ledger.release(block, no_cache=True)]
    allocator.pool.free_blocks(allocator.index, released)


def blocks_of(cache, request_id: str) -> int:
    """Blocks request ``request_id`` holds, over all allocators of a ``PagedAttentionCache``."""
    check()
    return sum(len(a.block_table.get(request_id, [])) for a in cache.cache_allocators.values())


def free_blocks(cache) -> int:
    """Blocks a new request could get now: free blocks of the allocators plus those of free sectors."""
    check()
    total = 0
    for allocator in cache.cache_allocators.values():
        total += cache.pool.count_free_blocks(allocator.index)
        total += cache.pool.num_free_sectors * allocator.blocks_per_sector
    return total


def total_blocks(cache) -> int:
    """Blocks the cache's pool holds in all, over all allocators."""
    check()
    return sum(cache.pool.num_sectors * a.blocks_per_sector for a in cache.cache_allocators.values())


def request_sectors(cache, tokens: int) -> int:
    """Sectors of ``cache``'s pool one fresh request holding ``tokens`` tokens needs, over all allocators
    (each allocator says how many blocks that is for its attention type; sectors are shared)."""
    check()
    needed = 0
    for allocator in cache.cache_allocators.values():
        blocks = allocator.needs_new_blocks("restkv-capacity-probe", 0, tokens)  # an id no request has
        needed += -(-blocks // allocator.blocks_per_sector)
    return needed


def pool_sectors(cache) -> int:
    """Sectors ``cache``'s pool holds in all (the ones reserved for padding writes excluded)."""
    check()
    return cache.pool.num_sectors


def worker_of(state):
    """The ``ContinuousBatchingManager`` behind a ``GenerationState``, or None before the first request."""
    check()
    manager = state._cb_manager
    return None if manager is None else manager._cb


def worker_error(worker) -> BaseException | None:
    """The error that stopped the continuous-batching worker's thread, if one did."""
    return worker.background_thread_status.fatal_error


def attaching_generation_state(cb_config, attach: Callable[[object], None], admit: Callable[[list, object, str], None]):
    """``transformers serve``'s ``GenerationState`` (continuous batching on, settings ``cb_config``)
    whose continuous-batching manager runs ``attach(manager)`` right before its thread starts and
    ``admit(input_ids, gen_config, request_id)`` before each request is handed to it (``admit``
    raises to refuse the request before the scheduler sees it)."""
    check()
    from transformers.cli.serving.utils import CBGenerateManager, GenerationState

    class AttachingCBManager(CBGenerateManager):
        """transformers' continuous-batching manager, with ``attach`` run before its thread starts."""

        def init_cb(self, model, gen_config) -> None:
            if self._cb is not None:
                return
            self._cb = model.init_continuous_batching(
                generation_config=gen_config, continuous_batching_config=self._cb_config
            )
            attach(self._cb)
            self._cb.start()

        def generate_streaming(self, model, processor, inputs, gen_config, request_id, response_parser=None):
            admit(inputs["input_ids"], gen_config, request_id)
            return super().generate_streaming(model, processor, inputs, gen_config, request_id, response_parser)

        async def generate_non_streaming(self, model, processor, inputs, gen_config, request_id):
            admit(inputs["input_ids"], gen_config, request_id)
            return await super().generate_non_streaming(model, processor, inputs, gen_config, request_id)

    class AttachingGenerationState(GenerationState):
        def get_manager(self, model_id, use_cb=False):
            if use_cb and self._cb_manager is None:
                self._cb_manager = AttachingCBManager(cb_config=self._cb_config)
                self._cb_model_id = model_id
            return super().get_manager(model_id, use_cb)

    return AttachingGenerationState(continuous_batching=True, cb_config=cb_config)


def exit_without_worker(code: int) -> None:
    """End the process now, without waiting for a batching thread that did not stop (transformers
    starts it as a non-daemon thread, which the interpreter would otherwise wait for forever)."""
    os._exit(code)
