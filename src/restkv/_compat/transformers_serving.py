"""transformers' continuous batching and serving CLI: the internals restkv's paged eviction hooks into.

* ``ContinuousBatchingManager._create_batch_processor`` builds the batch processor when the
  generation thread starts; restkv wraps it to hook each processor it returns.
* A ``PagedAttentionCache`` has one allocator per attention type (``cache_allocators``); an
  allocator keeps each request's ``block_table`` (request id -> block ids), a ``ledger`` of
  block references (``release(block, no_cache=...)``) and the shared ``pool`` of sectors and
  free blocks (``free_blocks``, ``count_free_blocks``, ``num_free_sectors``, ``num_sectors``).
* ``transformers serve``'s ``CBGenerateManager`` / ``GenerationState`` keep their manager and
  settings in ``_cb``, ``_cb_config`` and ``_cb_manager``; restkv subclasses them to attach
  eviction before the manager's thread starts.
"""

from __future__ import annotations

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


def attaching_generation_state(cb_config, attach: Callable[[object], None]):
    """``transformers serve``'s ``GenerationState`` (continuous batching on, settings ``cb_config``)
    whose continuous-batching manager runs ``attach(manager)`` right before its thread starts."""
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

    class AttachingGenerationState(GenerationState):
        def get_manager(self, model_id, use_cb=False):
            if use_cb and self._cb_manager is None:
                self._cb_manager = AttachingCBManager(cb_config=self._cb_config)
                self._cb_model_id = model_id
            return super().get_manager(model_id, use_cb)

    return AttachingGenerationState(continuous_batching=True, cb_config=cb_config)
