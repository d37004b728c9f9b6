"""The HELM client and tokenizer: one request, one prompt compressed by the press and answered
greedily on the compressed cache (see :mod:`restkv.integrations.helm`)."""

from __future__ import annotations

import functools
import threading

from helm.clients.client import CachingClient, truncate_and_tokenize_response_text
from helm.common.request import Request, RequestResult, wrap_request_time
from helm.tokenizers.huggingface_tokenizer import HuggingFaceTokenizer

from ...generation import eos_ids, generate_with_stats
from ...models import load_model, model_source
from ...press import get_press


def press_of(method: str, settings: dict | None = None):
    """The press of ``method`` with ``settings`` (``"full"``; ``"restkv"`` with
    ``{"compression_ratio": 0.5}``); one sentence (``ValueError``) when they are wrong."""
    if not isinstance(settings, dict | None):
        raise ValueError(f"settings must be a mapping of the method's parameters, got {settings!r}")
    return get_press(method, **(settings or {}))


#: HELM sends requests from several threads; a press hooks the shared model for one prompt at a
#: time, so loading and answering hold this lock
_LOCK = threading.Lock()


@functools.cache
def _loaded(model: str, dtype: str, attn: str):
    """One copy of each model per process, shared by every deployment of it (call under _LOCK)."""
    return load_model(model, dtype=dtype, attn=attn)


class RestkvTokenizer(HuggingFaceTokenizer):
    """HELM's Hugging Face tokenizer, read from where restkv loads ``model`` (an embedded model's
    converted copy, made on first use, a folder or a hub id)."""

    def __init__(self, cache_config, tokenizer_name: str, model: str):
        super().__init__(cache_config, tokenizer_name, pretrained_model_name_or_path=str(model_source(model)))


class RestkvClient(CachingClient):
    """A HELM client that answers each request with ``model`` under ``method``'s press.

    Args:
        cache_config: HELM's request cache (injected by HELM).
        tokenizer, tokenizer_name: HELM's tokenizer of the deployment (injected), which cuts the
            answer at the request's stop sequences.
        model: an embedded model name, a model folder or a hub id.
        method: a method name (``full``, ``restkv``, ``snapkv``, ...; ``restkv methods`` lists them).
        settings: the method's and the press's parameters, e.g. ``{"compression_ratio": 0.5}``.
        dtype, attn: as :func:`restkv.models.load_model` takes them.
    """

    def __init__(self, cache_config, tokenizer, tokenizer_name: str, model: str, method: str = "full",
                 settings: dict | None = None, dtype: str = "auto", attn: str = "auto"):  # fmt: skip
        super().__init__(cache_config=cache_config)
        self.tokenizer, self.tokenizer_name = tokenizer, tokenizer_name
        self.model, self.method, self.dtype, self.attn = model, method, dtype, attn
        self.press = press_of(method, settings)  # wrong settings fail when HELM builds the client
        self.settings = dict(settings or {})

    def make_request(self, request: Request) -> RequestResult:
        refusal = refused(request)
        if refusal is not None:
            return RequestResult(success=False, cached=False, error=refusal, completions=[], embedding=[])
        with _LOCK:
            loaded = _loaded(self.model, self.dtype, self.attn)
        prompt, chat = self._prompt(request, loaded)
        raw = {"model": self.model, "method": self.method, "settings": self.settings, "dtype": self.dtype,
               "attn": self.attn, "prompt": prompt, "chat": chat, "max_tokens": request.max_tokens}  # fmt: skip

        def answer() -> dict:
            with _LOCK:
                result = generate_with_stats(
                    loaded.model, loaded.tokenizer, prompt, self.press, request.max_tokens, chat
                )
            ended = bool(result.token_ids) and result.token_ids[-1] in eos_ids(loaded.tokenizer, loaded.model)
            return {"text": result.text, "finished": ended or len(result.token_ids) < request.max_tokens}

        response, cached = self.cache.get(CachingClient.make_cache_key(raw, request), wrap_request_time(answer))
        completion = truncate_and_tokenize_response_text(
            response["text"], request, self.tokenizer, self.tokenizer_name,
            "stop" if response["finished"] else "length",
        )  # fmt: skip
        return RequestResult(success=True, cached=cached, request_time=response.get("request_time"),
                             completions=[completion], embedding=[])  # fmt: skip

    @staticmethod
    def _prompt(request: Request, loaded) -> tuple[str, bool]:
        """The prompt text and whether :func:`generate_with_stats` wraps it in the chat template
        (chat messages are templated here, a plain prompt there when the model has a template)."""
        if request.messages:
            text = loaded.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return text, False
        return request.prompt, loaded.chat


def refused(request: Request) -> str | None:
    """Why a pressed greedy model cannot answer ``request`` (one sentence), or None."""
    if request.embedding:
        return "restkv's HELM client does not compute embeddings"
    if request.echo_prompt or request.top_k_per_token > 1:
        return "restkv's HELM client returns no prompt log-probabilities or alternatives (language-modelling scenarios)"
    if request.temperature > 0 or request.num_completions > 1:
        return "restkv's HELM client decodes greedily: ask for temperature 0 and one completion"
    if request.multimodal_prompt is not None:
        return "restkv's HELM client takes text prompts only"
    if request.prompt and request.messages:
        return "a request gives either a prompt or chat messages, not both"
    return None
