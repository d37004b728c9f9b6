"""lm-evaluation-harness with a press: any lm-eval task, any method.

:class:`PressedLM` is lm-eval's own Hugging Face model (``HFLM``: its tokenization, chat
templates, batching and stop sequences) with two changes:

* generation (``generate_until`` tasks) runs ``model.generate`` inside the press, so each
  prompt is compressed at prefill and the answer decoded on the compressed cache;
* log-likelihood (multiple-choice and perplexity tasks) prefills the context but its last
  token under the press, which compresses it without seeing the continuation, then feeds that
  last token and the continuation to the compressed cache: every continuation token, the first
  one included, is predicted from the compressed cache, which is what a multiple-choice task
  with eviction means (scoring the first token from the prefill itself would leave one-token
  answers untouched by any eviction). Requests that share a context (the choices of one
  question) share one compression.

With ``method="full"`` this computes what plain ``HFLM`` computes (log-likelihoods equal to
float rounding: the context and the continuation go through the model in two forwards).

It is registered with lm-eval as ``restkv``, so once this module is imported,
``lm_eval.simple_evaluate(model="restkv", model_args="pretrained=...,method=restkv,budget=256")``
works too; ``restkv lm-eval`` is the command-line way in.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from .._compat.lm_eval import hflm_class
from ..cache import fork_cache
from ..generation import forward_step, prefill
from ..press import KVPress, get_press


@register_model("restkv")
class PressedLM(hflm_class()):
    """lm-eval's ``HFLM`` under a press (see the module docstring).

    Args:
        pretrained: a model folder, an embedded model name or a hub id (loaded by
            :func:`restkv.models.load_model`), or a loaded ``PreTrainedModel`` (then pass
            ``tokenizer``).
        method, budget, compression_ratio, press_params: the press (``full`` keeps everything).
        Everything else goes to ``HFLM`` (``batch_size``, ``max_length``, ...).
    """

    def __init__(
        self,
        pretrained,
        method: str = "full",
        budget: int | None = None,
        compression_ratio: float | None = None,
        press_params: dict | None = None,
        tokenizer=None,
        dtype: str = "auto",
        attn: str = "auto",
        **kwargs,
    ):
        if isinstance(pretrained, str):
            from ..models import load_model

            loaded = load_model(pretrained, dtype=str(dtype), attn=attn)
            pretrained, tokenizer = loaded.model, loaded.tokenizer
        settings = dict(press_params or {})
        if method != "full":
            settings.update(budget=None if budget is None else int(budget), compression_ratio=compression_ratio)
        self.press: KVPress = get_press(method, **settings)
        kwargs.setdefault("device", str(pretrained.device))
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with self.press(self.model):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """``(log P(continuation | compressed context), greedy?)`` per request, in order."""
        by_context = defaultdict(list)
        for i, (_, context, continuation) in enumerate(requests):
            by_context[tuple(context)].append((i, continuation))
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood (pressed)")
        for context, items in by_context.items():
            cache = self._compress(list(context[:-1]))
            for i, continuation in items:
                results[i] = self._score(cache, len(context) - 1, [context[-1], *continuation])
                if self.cache_hook is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                bar.update(1)
        bar.close()
        return results

    def _compress(self, context: list[int]):
        """The compressed cache of ``context`` (empty when the context is)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if context:
            with self.press(self.model):
                prefill(self.model, torch.tensor([context], device=self.model.device), cache)
        return cache

    def _score(self, cache, n: int, tokens: list[int]) -> tuple[float, bool]:
        """Log-probability of ``tokens[1:]`` (the continuation) when ``tokens`` (the context's last
        token, then the continuation) are fed after the ``n`` cached tokens, and whether greedy
        decoding would have produced it; on a private fork of the cache."""
        fed = torch.tensor([tokens[:-1]], device=self.model.device)
        with self.press(self.model):
            logits = forward_step(self.model, fork_cache(cache), fed, n)
        logp = F.log_softmax(logits[0].float(), dim=-1)  # [len(continuation), vocab]
        target = torch.tensor(tokens[1:], device=logp.device)
        score = float(logp.gather(-1, target[:, None]).sum())
        return score, bool((logp.argmax(-1) == target).all())
