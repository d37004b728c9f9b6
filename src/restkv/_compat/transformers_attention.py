"""Each model family's own ``eager_attention_forward``, looked up through the module it is defined in.

transformers gives every family a module-level ``eager_attention_forward`` in its
``modeling_<family>`` module (Gemma's carries its soft-cap), and registers only the kernels
(``sdpa``, ``flash_attention_2``, ...) in ``ALL_ATTENTION_FUNCTIONS``; the eager one is reached
through the attention module's own Python module.
"""

from __future__ import annotations

import sys

from .versions import require

DISTRIBUTION = "transformers"
SUPPORTED = ">=5.2,<6"
SEAM = "restkv's lookup of a model family's eager attention"


def check() -> None:
    """Raise one sentence when the installed transformers is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def eager_attention_forward(module):
    """The ``eager_attention_forward`` of the modeling module ``module``'s class is defined in."""
    check()
    family = sys.modules[type(module).__module__]
    forward = getattr(family, "eager_attention_forward", None)
    if forward is None:
        raise ValueError(f"{family.__name__} defines no eager_attention_forward for {type(module).__name__}")
    return forward
