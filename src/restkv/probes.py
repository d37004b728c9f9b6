"""Observation queries for a context compressed before its question: a reconstruction probe.

A context compressed without its question has no question to read it with: its own last tokens
are the only observation window, and they are haystack. A reconstruction probe (after KVzip,
Kim et al. 2025, arXiv 2505.23416) asks the model to repeat the context: an instruction, then
the context again, fed after it in the same forward. While the model re-reads the context, each
query looks for what it must reproduce next, so the probe's queries score every entry by how
much reconstructing the context needs it. Any window scorer reads them as its observation
window (``get_press(name, probe="reconstruct")``), ReST-KV's output-error score included; the
probe's own entries are removed after the forward, and decoding continues from the context.
"""

from __future__ import annotations

import torch

#: the press setting that asks for a reconstruction probe
RECONSTRUCT = "reconstruct"
#: what can be asked for (``probe=`` of a press)
PROBES = (RECONSTRUCT,)
#: the instruction between the context and its copy (our wording)
REPEAT_INSTRUCTION = "\n\nRepeat the text above, word for word:\n"


def repeat_prompt_ids(tokenizer) -> torch.Tensor:
    """The instruction's token ids ``[1, r]`` (no special tokens)."""
    return tokenizer(REPEAT_INSTRUCTION, return_tensors="pt", add_special_tokens=False)["input_ids"]


def reconstruction_probe(context_ids: torch.Tensor, prompt_ids: torch.Tensor, bos_id: int | None = None) -> torch.Tensor:
    """The probe ``[1, r + n']`` for a context ``[1, n]``: the instruction, then the context again
    (without its leading ``bos_id``, which begins a sequence, not a copy)."""
    copy = context_ids
    if bos_id is not None and copy.shape[1] and int(copy[0, 0]) == bos_id:
        copy = copy[:, 1:]
    return torch.cat([prompt_ids.to(copy.device), copy], dim=1)


def probe_for(press, tokenizer, context_ids: torch.Tensor) -> torch.Tensor | None:
    """The probe ``press`` asks for after ``context_ids``, or None."""
    if press is None or press.probe is None:
        return None
    settings = probe_settings(tokenizer)
    return reconstruction_probe(context_ids, settings["repeat_prompt"], settings["bos_id"])


def probe_settings(tokenizer) -> dict:
    """The evaluation engine's arguments for configs with a reconstruction probe."""
    return {"repeat_prompt": repeat_prompt_ids(tokenizer), "bos_id": getattr(tokenizer, "bos_token_id", None)}
