"""lm-evaluation-harness's ``HFLM``, whose private methods restkv's harness model overrides.

:class:`restkv.eval.harness.PressedLM` subclasses ``HFLM`` and overrides ``_model_generate``
(called as ``_model_generate(context, max_length, stop, **generation_kwargs)``) and
``_loglikelihood_tokens(requests, disable_tqdm, override_bs)``, and reads ``rank`` and
``cache_hook``: lm-eval's own extension points for a model, private by name.
"""

from __future__ import annotations

from .versions import require

DISTRIBUTION = "lm_eval"
SUPPORTED = ">=0.4.13,<0.5"
SEAM = "restkv's lm-eval model (an HFLM subclass overriding its private methods)"


def check() -> None:
    """Raise one sentence when the installed lm-eval is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def hflm_class() -> type:
    """lm-eval's ``HFLM``, once the installed lm-eval is known to be in :data:`SUPPORTED`."""
    check()
    from lm_eval.models.huggingface import HFLM

    return HFLM
