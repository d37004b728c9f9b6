"""A transformers config's private fields: the attention implementation and the checkpoint name.

``config._attn_implementation`` is what every attention module reads at call time to pick its
attention function (there is no public setter that leaves the loaded model as it is), and
``config._name_or_path`` is the only place a loaded model remembers where it came from.
"""

from __future__ import annotations

from .versions import require

DISTRIBUTION = "transformers"
#: the versions these fields were read and written under (the range restkv depends on)
SUPPORTED = ">=5.2,<6"
SEAM = "restkv's use of a transformers config's private fields (attention implementation, checkpoint name)"


def check() -> None:
    """Raise one sentence when the installed transformers is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def attention_implementation(config) -> str | None:
    """The attention implementation ``config``'s attention modules run under (None: not set)."""
    check()
    return getattr(config, "_attn_implementation", None)


def set_attention_implementation(config, name: str | None) -> None:
    """Make ``config``'s attention modules run under ``name`` from their next call on (the
    model's weights and loaded kernels are left as they are)."""
    check()
    config._attn_implementation = name


def name_or_path(config) -> str:
    """The checkpoint name or folder ``config`` was loaded from (``""`` when unknown)."""
    check()
    return getattr(config, "_name_or_path", "") or ""
