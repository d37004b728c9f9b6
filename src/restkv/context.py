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
from .adapters import attention_modules, resident_weight, text_config
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
    #: :func:`model_fingerprint` of the model as it was when the cache was made (what :meth:`save`
    #: records, even after the model moved to another dtype); None: taken when saving
    fingerprint: dict | None = None

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

    def fork(self) -> DynamicCache:
        """A private copy of the compressed cache, cast to the model's dtype when the model changed
        dtype since the cache was made (``model.to(torch.bfloat16)``); the shared cache is untouched."""
        cache = fork_cache(self.cache)
        dtype = _model_dtype(self.model)
        made = self.fingerprint["dtype"] if self.fingerprint is not None else _stored_dtype(self.cache.layers)
        if dtype.is_floating_point and _dtype_name(dtype) != made:
            _cast(cache, dtype)
        return cache

    @torch.inference_mode()
    def next_logits(self, question: str) -> tuple[torch.Tensor, DynamicCache, int]:
        """The next-token logits ``[1, vocab]`` after ``question``, the private cache holding it,
        and the number of tokens seen."""
        ids = self.question_ids(question).to(self.model.device)
        cache = self.fork()
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
        layers = [_saved_layer(layer) for layer in self.cache.layers]
        # the model as it was when the cache was made, in the dtype the tensors are stored in (the
        # model's own may have changed since)
        fingerprint = dict(self.fingerprint or model_fingerprint(self.model))
        fingerprint["dtype"] = _stored_dtype(self.cache.layers)
        blob = {
            "format": FORMAT,
            "restkv": __version__,
            "model": fingerprint,
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
    elapsed = time.perf_counter() - start
    return CompressedContext(model, tokenizer, press, cache, ids, suffix, elapsed, model_fingerprint(model))


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
    # everything is checked before anything is used: a damaged file fails here, in one sentence,
    # never later inside a forward
    _check_fields(blob, path)
    ours = _check_model(blob["model"], model, path)
    press = _press_of(blob, path)
    context_ids = _check_context_ids(blob["context_ids"], path)
    cache = DynamicCache(config=model.config)
    _check_layers(blob["layers"], model, len(cache.layers), blob["model"]["dtype"], path)
    state = _checked_state(blob["state"], blob["layers"], path)
    for layer, entry in zip(cache.layers, blob["layers"], strict=True):
        layer.lazy_initialization(entry["keys"], entry["values"])
        layer.keys, layer.values = entry["keys"], entry["values"]
        if "cumulative_length" in entry:
            layer.cumulative_length = entry["cumulative_length"]
    set_state(cache, state)
    return CompressedContext(model, tokenizer, press, cache, context_ids, blob["question_suffix"], fingerprint=ours)


#: what a saved context holds besides its format, and the type of each
_FIELDS = {
    "model": dict,
    "method": str,
    "params": dict,
    "context_ids": torch.Tensor,
    "question_suffix": str,
    "layers": list,
    "state": (dict, type(None)),
}


def _damaged(path: Path, what: str) -> ValueError:
    """The one sentence for a saved context that cannot be used as it is."""
    return ValueError(f"{path} is a damaged saved context: {what}")


def _check_fields(blob: dict, path: Path) -> None:
    """Every field :meth:`CompressedContext.save` writes is there, with its type."""
    for key, kind in _FIELDS.items():
        if key not in blob:
            raise _damaged(path, f"it has no {key}")
        if not isinstance(blob[key], kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise _damaged(path, f"its {key} is a {type(blob[key]).__name__}, not a {names}")


def _check_model(saved: dict, model, path: Path) -> dict:
    """The model the file was made with is ``model`` in its current dtype; ``model``'s fingerprint."""
    ours = model_fingerprint(model)
    if not set(ours) <= set(saved):
        raise _damaged(path, f"its model record lacks {', '.join(sorted(set(ours) - set(saved)))}")
    if {k: saved[k] for k in ours if k != "name"} != {k: v for k, v in ours.items() if k != "name"}:
        raise ValueError(
            f"{path} was compressed with another model or dtype ({saved['name']}, {saved['dtype']}); "
            "load that model to use it"
        )
    return ours


def _press_of(blob: dict, path: Path) -> KVPress:
    """The press the context was compressed with, rebuilt from its method and parameters."""
    params = {k: v for k, v in blob["params"].items() if v is not None}
    try:
        return get_press(blob["method"], **params)
    except (ValueError, TypeError) as err:
        raise _damaged(path, f"its method {blob['method']!r} cannot be rebuilt ({first_line(err)})") from None


def _check_context_ids(ids: torch.Tensor, path: Path) -> torch.Tensor:
    """The prefilled token ids: one row of integers."""
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0 or ids.dtype.is_floating_point:
        raise _damaged(path, f"its context_ids are a {tuple(ids.shape)} {ids.dtype} tensor, not one row of token ids")
    return ids


def _kv_shapes(model) -> dict[int, tuple[int, int, int]]:
    """``(KV heads, key size, value size)`` of each attention layer's cache entries, by layer index."""
    config = text_config(model.config)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    shapes = {}
    for module in attention_modules(model):
        values = getattr(module.v_proj, "out_features", None)  # keys and values may differ in size
        shapes[module.layer_idx] = (heads, module.head_dim, values // heads if values else module.head_dim)
    return shapes


def _check_layers(layers: list, model, count: int, dtype: str, path: Path) -> None:
    """``count`` layers of ``[1, KV heads, n, size]`` keys and values, as ``model`` stores them, in ``dtype``."""
    if len(layers) != count:
        raise _damaged(path, f"it holds {len(layers)} cache layers, but the model has {count}")
    shapes = _kv_shapes(model)
    for index, entry in enumerate(layers):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), torch.Tensor) for k in ("keys", "values")):
            raise _damaged(path, f"layer {index} is not a pair of key and value tensors")
        heads, key_size, value_size = shapes.get(index, (None, None, None))  # None: not checked
        _check_tensor(entry["keys"], heads, key_size, dtype, f"layer {index}'s keys", path)
        _check_tensor(entry["values"], heads, value_size, dtype, f"layer {index}'s values", path)
        keys, values = entry["keys"].shape[2], entry["values"].shape[2]
        if keys != values:
            raise _damaged(path, f"layer {index} holds {keys} keys but {values} values")
        if not isinstance(entry.get("cumulative_length", 0), int):
            raise _damaged(path, f"layer {index}'s cumulative_length is not an integer")


def _check_tensor(tensor: torch.Tensor, heads: int | None, size: int | None, dtype: str, what: str, path: Path):
    """A ``[1, heads, tokens, size]`` tensor in ``dtype``."""
    shape, expected = tuple(tensor.shape), (1, heads, None, size)
    if len(shape) != 4 or any(e is not None and n != e for n, e in zip(shape, expected)):
        raise _damaged(path, f"{what} are {list(shape)}, not [1, {heads}, tokens, {size}] as the model stores them")
    if _dtype_name(tensor.dtype) != dtype:
        raise _damaged(path, f"{what} are {_dtype_name(tensor.dtype)}, but the file says it holds {dtype}")


def _checked_state(data: dict | None, layers: list, path: Path) -> SequenceState | None:
    """The compressed layers' records, each holding exactly the entries its layer has.

    A context is saved as prefill left it (questions run on forks), so each compressed layer
    holds its ``kept`` entries and nothing appended after them.
    """
    try:
        state = _state_from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise _damaged(path, f"its state is not the one save writes ({first_line(err)})") from None
    if state is None:
        return None
    for index, record in state.layers.items():
        if not 0 <= index < len(layers):
            raise _damaged(path, f"its state records layer {index}, but it holds {len(layers)} layers")
        if not all(isinstance(v, int) for v in (record.prompt_tokens, record.kept)):
            raise _damaged(path, f"its state's record of layer {index} is not two integers and a mask")
        stored = layers[index]["keys"].shape[2]
        if stored != record.kept:
            raise _damaged(path, f"layer {index} holds {stored} entries, but its state says {record.kept} were kept")
        valid = record.valid
        if valid is not None and (not isinstance(valid, torch.Tensor) or valid.shape[-1] != record.kept):
            raise _damaged(path, f"its padding mask of layer {index} does not cover the {record.kept} kept entries")
    return state


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
        "dtype": _dtype_name(_model_dtype(model)),
        "weights": hashlib.sha256(weights).hexdigest()[:16],
    }


def _model_dtype(model) -> torch.dtype:
    """The dtype a model computes in, as its fingerprint names it (its first parameter's)."""
    return next(model.parameters()).dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _saved_layer(layer) -> dict:
    """One cache layer as the file stores it."""
    if isinstance(layer, VarlenLayer):
        raise ValueError("a context compressed with the adakv allocator (per-head lengths) cannot be saved")
    entry = {"keys": layer.keys, "values": layer.values}
    if getattr(layer, "is_sliding", False):
        entry["cumulative_length"] = layer.cumulative_length
    return entry


def _stored_dtype(layers) -> str:
    """The one dtype of the layers' keys and values (what a saved file says it holds)."""
    dtypes = sorted({_dtype_name(t.dtype) for layer in layers for t in (layer.keys, layer.values)})
    if len(dtypes) != 1:
        raise ValueError(f"the compressed context holds tensors of several dtypes ({', '.join(dtypes)})")
    return dtypes[0]


def _cast(cache, dtype: torch.dtype) -> None:
    """Cast a forked cache's floating tensors (its layers' and the scorer's memory) to ``dtype``.

    The fork shares its tensors with the original, so each is replaced on the fork, never
    converted in place.
    """
    for layer in cache.layers:
        for name, value in list(vars(layer).items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
                setattr(layer, name, value.to(dtype))
    state = get_state(cache)
    if state is not None:
        state.memory = {
            i: m.to(dtype) if isinstance(m, torch.Tensor) and m.is_floating_point() else m
            for i, m in state.memory.items()
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
