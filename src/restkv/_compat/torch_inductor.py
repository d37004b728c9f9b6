"""torch's compiler settings: inductor's config (patched around a compiled call) and dynamo's recompile limit.

Both live in private modules (``torch._inductor.config``, ``torch._dynamo.config``); they are
the documented way to tune ``torch.compile`` but carry no stability promise across releases.
"""

from __future__ import annotations

from .versions import require

DISTRIBUTION = "torch"
#: ``recompile_limit`` has this name since 2.6 (``cache_size_limit`` before)
SUPPORTED = ">=2.6,<3"
SEAM = "restkv's tuning of compiled decoding (torch._inductor and torch._dynamo config)"


def check() -> None:
    """Raise one sentence when the installed torch is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def inductor_config_patch(settings: dict):
    """A context manager under which inductor compiles (and runs) with ``settings`` patched in."""
    check()
    import torch._inductor.config

    return torch._inductor.config.patch(settings)


def raise_recompile_limit(limit: int) -> int:
    """Let dynamo compile at least ``limit`` graphs per function (it never lowers the limit);
    returns the limit now in force."""
    check()
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    return torch._dynamo.config.recompile_limit
