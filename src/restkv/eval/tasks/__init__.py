"""Evaluation tasks: each builds seeded samples and scores predictions.

:func:`build` turns a task name and the command's options into ``(task, samples, score)``
groups for the runner.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TaskOptions:
    samples: int = 20
    length: int = 1024
    lengths: tuple = ()
    depths: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    continuation: int = 64
    seed: int = 0
    data_dir: str | None = None
    subtasks: tuple = ()


TASK_FAMILIES = ("ruler", "niah", "fidelity", "passkey", "longbench", "infinitebench", "bbh")


def token_counter(loaded):
    """A prompt's length in ``loaded``'s tokens, encoded as the evaluation encodes it."""
    from ...generate import encode_prompt

    def count(text: str) -> int:
        return encode_prompt(loaded.tokenizer, text, chat=loaded.chat).shape[1]

    return count


def build(family: str, loaded, options: TaskOptions):
    """``[(task name, samples, score function)]`` for a task family on a loaded model."""
    count = token_counter(loaded)

    if family == "ruler":
        from . import ruler

        names = options.subtasks or ruler.SYNTHETIC
        return [
            (
                f"ruler/{t}",
                ruler.ruler_samples(t, options.samples, options.length, count, options.seed, options.data_dir),
                ruler.score(t),
            )
            for t in names
        ]
    if family == "niah":
        from . import niah

        lengths = options.lengths or (options.length,)
        return [("niah", niah.niah_samples(lengths, options.depths, options.samples, count, options.seed), niah.score)]
    if family == "fidelity":
        from . import fidelity

        samples = fidelity.fidelity_samples(
            loaded.tokenizer, options.samples, options.length, options.continuation, options.seed
        )
        return [(f"fidelity/{options.length}", samples, None)]
    if family == "passkey":
        from . import passkey

        return [
            ("passkey", passkey.passkey_samples(options.samples, options.length, count, options.seed), passkey.score)
        ]
    if family == "longbench":
        from . import longbench

        return longbench.build(options, loaded.tokenizer)
    if family == "infinitebench":
        from . import infinitebench

        return infinitebench.build(options, loaded.tokenizer)
    if family == "bbh":
        from . import bbh

        return bbh.build(options)
    raise ValueError(f"unknown task {family!r}; available: {', '.join(TASK_FAMILIES)}")
