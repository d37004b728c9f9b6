"""Compress a context once, then ask it many questions (query-agnostic reuse of one cache).

>>> ctx = compress_context(model, tokenizer, document, press=get_press("restkv", budget=256))
>>> ctx.ask("Who wrote it?")
>>> ctx.save("doc.restkv")  # later, in another process: load_context("doc.restkv", model, tokenizer)

The context is compressed without seeing any question: its observation window is the end of
the context, which is what kvpress's leaderboard measures by default and what a chat over one
long document needs. Each question is answered on a private fork of the compressed cache, so
no question sees another's tokens, and costs only its own tokens plus decoding.

The chat template (when used) is rendered once with the context and a marker where the
question goes; the context's part is prefilled, and each question is tokenized with the
template's remainder (the end of the user turn and the assistant's header).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from ._compat.transformers_config import name_or_path
from .adapters import resident_weight
from .cache import VarlenLayer, cache_entries, fork_cache
from .checks import check_int, first_line
from .generation import decode, eos_ids, forward_step, prefill
from .options import check
from .press import KVPress, get_press
from .probes import probe_for
from .state import LayerState, SequenceState, get_state, set_state
from .version import __version__

#: the version of the saved-context file layout
FORMAT = 1
#: between the context and the question, inside the user's turn
SEPARATOR = "\n\n"
_MARKER = "\u2063RESTKV-QUESTION\u2063"  # invisible separator characters: never in a real template


@dataclass
class CompressedContext:
    """A context prefilled and compressed once, ready for questions (see :func:`compress_context`)."""

    model: object
    tokenizer: object
    press: KVPress
    cache: DynamicCache
    context_ids: torch.Tensor  # [1, n], what was prefilled
    question_suffix: str  # appended to every question: the chat template's remainder, or ""
    prefill_s: float = 0.0

    @property
    def context_tokens(self) -> int:
        return self.context_ids.shape[1]

    @property
    def kept_entries(self) -> int:
        """KV entries (tokens x KV heads) the compressed context holds over all layers."""
        return cache_entries(self.cache)

    def question_ids(self, question: str) -> torch.Tensor:
        """The token ids ``[1, q]`` of ``question`` followed by the chat template's remainder."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        text = question + self.question_suffix
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def next_logits(self, question: str) -> tuple[torch.Tensor, DynamicCache, int]:
        """The next-token logits ``[1, vocab]`` after ``question``, the private cache holding it,
        and the number of tokens seen."""
        ids = self.question_ids(question).to(self.model.device)
        cache = fork_cache(self.cache)
        with self.press(self.model):
            logits = forward_step(self.model, cache, ids, self.context_tokens, logits_to_keep=1)
        return logits[:, -1], cache, self.context_tokens + ids.shape[1]

    @torch.inference_mode()
    def ask(self, question: str, max_new_tokens: int = 64) -> str:
        """Answer ``question`` greedily on a private copy of the compressed context."""
        check_int("max_new_tokens", max_new_tokens, 1)
        logits, cache, start = self.next_logits(question)
        stop = eos_ids(self.tokenizer, self.model)
        with self.press(self.model):
            tokens, _ = decode(self.model, cache, logits, start, max_new_tokens, stop)
        return self.tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True)

    def save(self, path: str | Path) -> None:
        """Write the compressed context to ``path`` (tensors and plain values only; see :func:`load_context`)."""
        layers = []
        for layer in self.cache.layers:
            if isinstance(layer, VarlenLayer):
                raise ValueError("a context compressed with the adakv allocator (per-head lengths) cannot be saved")
            entry = {"keys": layer.keys, "values": layer.values}
            if getattr(layer, "is_sliding", False):
                entry["cumulative_length"] = layer.cumulative_length
            layers.append(entry)
        blob = {
            "format": FORMAT,
            "restkv": __version__,
            "model": model_fingerprint(self.model),
            "method": self.press.name,
            "params": self.press.params(),
            "context_ids": self.context_ids.cpu(),
            "question_suffix": self.question_suffix,
            "layers": layers,
            "state": _state_to_dict(get_state(self.cache)),
        }
        path = Path(path)
        partial = path.with_name(path.name + ".partial")  # a crash never leaves a truncated context
        try:
            with open(partial, "wb") as f:
                torch.save(blob, f)
            os.replace(partial, path)
        except OSError as err:
            raise ValueError(f"cannot write the compressed context to {path}: {err.strerror or err}") from None


def split_prompt(tokenizer, context: str, chat: bool) -> tuple[torch.Tensor, str]:
    """The context's token ids ``[1, n]`` (through the chat template when asked and available),
    and the text every question is followed by."""
    if not isinstance(context, str) or not context.strip():
        raise ValueError("the context is empty")
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": context + SEPARATOR + _MARKER}], add_generation_prompt=True, tokenize=False
        )
        if text.count(_MARKER) != 1:
            raise ValueError("the tokenizer's chat template rewrites the message; pass chat=False")
        head, suffix = text.split(_MARKER)
        ids = tokenizer(head, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return ids, suffix
    return tokenizer(context + SEPARATOR, return_tensors="pt")["input_ids"], ""


@torch.inference_mode()
def compress_context(
    model, tokenizer, context: str, press: KVPress | None = None, chat: bool = True, progress: bool = False
) -> CompressedContext:
    """Prefill ``context`` under ``press`` once, without any question, for :meth:`CompressedContext.ask`.

    Args:
        press: e.g. ``get_press("restkv", budget=256)``; None keeps the full cache. Its
            observation window is the end of the context, or, with ``probe="reconstruct"``, the
            context re-read after a repeat instruction (:mod:`restkv.probes`); so
            ``window_size="auto"`` (the question as window) is refused. With ``chunk_size`` the
            context streams in chunks.
        chat: wrap context and questions in the tokenizer's chat template when it has one.
        progress: a bar over the chunks of a chunked prefill.
    """
    press = press or KVPress(None)
    check("query-agnostic", press)
    ids, suffix = split_prompt(tokenizer, context, chat)
    cache = DynamicCache(config=model.config)
    start = time.perf_counter()
    with press(model):
        prefill(model, ids.to(model.device), cache, press.chunk_size, progress, probe=probe_for(press, tokenizer, ids))
    return CompressedContext(model, tokenizer, press, cache, ids, suffix, time.perf_counter() - start)


def load_context(path: str | Path, model, tokenizer) -> CompressedContext:
    """A context saved by :meth:`CompressedContext.save`, for the same model in the same dtype.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain values only,
    nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"there is no saved context at {path}")
    try:
        blob = torch.load(path, map_location=model.device, weights_only=True)
    except Exception as err:  # a truncated or foreign file fails inside the unpickler
        raise ValueError(f"{path} is not a saved restkv context ({first_line(err)})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a saved restkv context of format {FORMAT}")
    saved, ours = dict(blob["model"]), model_fingerprint(model)
    if {k: v for k, v in saved.items() if k != "name"} != {k: v for k, v in ours.items() if k != "name"}:
        raise ValueError(
            f"{path} was compressed with another model or dtype ({saved['name']}, {saved['dtype']}); "
            "load that model to use it"
        )
    params = {k: v for k, v in blob["params"].items() if v is not None}
    press = get_press(blob["method"], **params)
    cache = DynamicCache(config=model.config)
    for layer, entry in zip(cache.layers, blob["layers"], strict=True):
        layer.lazy_initialization(entry["keys"], entry["values"])
        layer.keys, layer.values = entry["keys"], entry["values"]
        if "cumulative_length" in entry:
            layer.cumulative_length = entry["cumulative_length"]
    set_state(cache, _state_from_dict(blob["state"]))
    return CompressedContext(model, tokenizer, press, cache, blob["context_ids"], blob["question_suffix"])


def model_fingerprint(model) -> dict:
    """What must match for a saved cache to mean the same thing: the architecture, the dtype,
    and a hash of the first rows of the input embeddings (which tells checkpoints apart)."""
    config = getattr(model.config, "text_config", None) or model.config
    weights = resident_weight(model.get_input_embeddings())[:8].detach().float().cpu().numpy().tobytes()
    return {
        "name": name_or_path(model.config) or config.model_type,
        "type": config.model_type,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "weights": hashlib.sha256(weights).hexdigest()[:16],
    }


def _state_to_dict(state: SequenceState | None) -> dict | None:
    if state is None:
        return None
    return {
        "layers": {i: [s.prompt_tokens, s.kept, s.valid] for i, s in state.layers.items()},
        "next_pos": state.next_pos,
        "prompt_mask": state.prompt_mask,
        "budgets": state.budgets,
        "memory": state.memory,
    }


def _state_from_dict(data: dict | None) -> SequenceState | None:
    if data is None:
        return None
    layers = {int(i): LayerState(*values) for i, values in data["layers"].items()}
    return SequenceState(
        layers=layers,
        next_pos=data["next_pos"],
        prompt_mask=data["prompt_mask"],
        budgets=data["budgets"],
        memory=data["memory"],
    )
