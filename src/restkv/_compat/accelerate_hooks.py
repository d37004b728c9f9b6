"""accelerate's hook on an offloaded module (``module._hf_hook``), which holds its real weights.

With a ``device_map`` that offloads layers, accelerate leaves the weight on the meta device and
keeps it in the hook's ``weights_map``, loading it to ``execution_device`` only while the module
runs; the hook is reachable only through the private attribute it is attached as.
"""

from __future__ import annotations

from .versions import require

DISTRIBUTION = "accelerate"
SUPPORTED = ">=1.0,<2"
SEAM = "restkv's reading of offloaded weights through accelerate's module hooks"


def check() -> None:
    """Raise one sentence when the installed accelerate is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def offload_hook(module):
    """accelerate's hook attached to ``module`` (None when there is none)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:  # only a hooked module depends on accelerate's layout
        check()
    return hook
