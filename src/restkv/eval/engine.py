"""The evaluation engine: every configuration on every prompt, orchestrated on the library's pipeline.

Each prompt is prefilled once with the full cache and each method and budget gets its compressed
cache from that record, or prefills through its own press when the shared dense prefill is not
what it computes (``chunk_size``, a probe of its own, ``sparse_prefill``; :mod:`restkv.pipeline`);
a sweep of many methods costs one prefill plus one cheap compression and one decode per method.
A sweep of streamed configurations alone skips the full-cache reference (its KL is then None).
The engine adds what an evaluation needs on top: which prompts and configurations, batching,
questions fed after a query-agnostic compression, and the full cache's reference answer.

Fidelity is measured by teacher forcing: the full cache's greedy answer is fed to each
compressed cache, and the next-token distributions are compared with the full cache's.
Compressed caches decoded together as a batch do that first and reuse it: for as long as a
row's own greedy choice agrees with the full cache's answer, the teacher-forced logits are its
decoding steps, so only the rows that leave the reference before their answer is complete are
decoded, each from its cache rewound to where it left (:meth:`Engine._decode_from_reference`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..adapters import attention_modules, check_supported
from ..cache import (
    cache_bytes,
    cache_entries,
    fork_cache,
    reserve,
    rewind_rows,
    rewindable,
    select_rows,
    stack_caches,
)
from ..compress import plan_budgets
from ..decoding import StopRule, greedy
from ..generation import CacheStep, next_positions
from ..options import check, refusal
from ..pipeline import Pipeline, PrefillRecord, shares_probe
from ..press import KVPress, hooks_only_press
from ..probes import reconstruction_probe
from ..quantized import quantize_cache
from ..specs import MethodConfig
from ..state import PressStats
from ..static_decode import check_compile, decodes_static, static_greedy
from ..timing import phased
from .metrics import answer_fidelity, kl_and_top1, perplexity

#: with ``batch="auto"`` the compressed caches decoded as one batch hold at most this many bytes
#: together, or as many as the full cache when that is more (the prefill held it anyway)
AUTO_BATCH_BYTES = 1 << 30


@dataclass
class Outcome:
    """What one method did on one prompt (before task scoring)."""

    config: MethodConfig
    token_ids: list[int]
    prompt_tokens: int
    kept_entries: int
    kv_bytes: int
    prefill_s: float  # the shared prefill plus this method's compression
    compress_s: float
    decode_ms_per_token: float | None  # None when decoded in a batch with other configs
    kl: float | None = None  # mean KL(full || method) over the answer's next-token distributions
    top1: float | None = None  # share of those steps where the top-1 token agrees
    extra: dict = field(default_factory=dict)
    #: what ended decoding: "eos" (an end token), "answer" (the task's answer was complete),
    #: "limit" (max_new_tokens); None when nothing was decoded (teacher forcing)
    stopped: str | None = None


class Engine:
    """Runs sweeps of methods and budgets over prompts on one model."""

    def __init__(
        self,
        model,
        configs: list[MethodConfig],
        kv_quant: tuple[str, int] | None = None,
        text=None,
        compile: bool | str = False,
        repeat_prompt: torch.Tensor | None = None,
        bos_id: int | None = None,
    ):
        """``kv_quant``: ``(backend, bits)`` to quantize every config's cache after its
        compression (see :mod:`restkv.quantized`); the full-precision full cache stays the
        reference, and caches are then decoded one at a time.

        ``text``: how a row's token ids read as the prediction that is scored
        (:func:`restkv.eval.tasks.stops.prediction_reader`); needed for answer stops.
        ``compile``: decode caches of one row on static buffers, through ``torch.compile`` when
        True (see :func:`restkv.generation.greedy_decode`); batches of rows keep the eager loop.
        ``repeat_prompt``: the tokenizer's repeat instruction (:func:`restkv.probes.repeat_prompt_ids`)
        and ``bos_id`` its begin token, for configs with a reconstruction probe."""
        check_supported(model)
        check_compile(compile)
        self.compile = compile
        self.model = model
        self.text = text
        self.configs = list(configs)
        self.presses = {c: c.press() for c in self.configs}
        self.kv_quant = kv_quant
        if kv_quant is not None:
            for press in self.presses.values():
                check("quantized cache", press)
        self.modules = attention_modules(model)
        self.pipeline = Pipeline(model, list(self.presses.values()))
        self.repeat_prompt, self.bos_id = repeat_prompt, bos_id
        #: configs with a probe read one shared recorded forward where the model allows it (False:
        #: each prefills through its own press, as before; the kept entries are the same)
        self.share_probes = True
        probed = [c.label for c in self.configs if self.presses[c].probe is not None]
        if probed and repeat_prompt is None:
            raise ValueError(f"{probed[0]} reads a reconstruction probe, which needs the engine's repeat_prompt "
                             "(Engine(..., repeat_prompt=restkv.probes.repeat_prompt_ids(tokenizer)))")  # fmt: skip

    def streamed(self, config: MethodConfig) -> bool:
        """Whether ``config`` prefills through its own press, in chunks, followed by a probe or
        with sparse attention (then it never reads the shared full prefill, which is dense)."""
        press = self.presses[config]
        return press.chunk_size is not None or press.probe is not None or press.sparse_prefill is not None

    def shares_probe(self, config: MethodConfig) -> bool:
        """Whether ``config``'s probe is read from one recorded forward of the context and its
        probe, shared by every such config (:func:`restkv.pipeline.shares_probe`), instead of a
        forward of its own."""
        return self.share_probes and shares_probe(self.model, self.presses[config])

    # -- the pipeline: one recorded prefill, a cache per config, or a streamed prefill ------------
    @phased("prefill")
    def prefill(self, input_ids: torch.Tensor, probe: torch.Tensor | None = None) -> PrefillRecord:
        """The prompt ``[1, n]`` prefilled once with the full cache, with what every config's scorer
        reads (followed by ``probe`` in the same forward, see :meth:`restkv.pipeline.Pipeline.record`)."""
        return self.pipeline.record(input_ids, probe)

    def compressed_cache(
        self, record: PrefillRecord, config: MethodConfig, memo: dict | None = None, window: int | dict | None = None
    ) -> tuple[DynamicCache, PressStats, float]:
        """A new cache for ``config`` built from the recorded prefill; the record is not modified."""
        return self.compressed_caches(record, [config], memo, window)[0]

    @phased("compress")
    def compressed_caches(
        self, record: PrefillRecord, configs: list[MethodConfig], memo: dict | None = None, window=None
    ) -> list[tuple[DynamicCache, PressStats, float]]:
        """``(cache, stats, seconds)`` per config (:meth:`restkv.pipeline.Pipeline.derive`)."""
        presses = [self.presses[c] for c in configs]
        return self.pipeline.derive(record, presses, memo, [_window_for(p, window) for p in presses])

    @phased("prefill")
    def stream(self, input_ids: torch.Tensor, config: MethodConfig, window: int | None):
        """``config``'s cache, prefilled through its press chunk by chunk or followed by its probe
        (:meth:`restkv.pipeline.Pipeline.stream`)."""
        press = self.presses[config]
        probe = None
        if press.probe is not None:
            probe = reconstruction_probe(input_ids, self.repeat_prompt, self.bos_id)
        return self.pipeline.stream(input_ids, press, window, probe)

    # -- decoding -----------------------------------------------------------------------------
    @phased(lambda call: "full_decode" if call["press"] is None else "decode")
    @torch.inference_mode()
    def decode(
        self, cache, first_logits, start_pos: int, max_new_tokens: int, eos_ids, press: KVPress | None = None,
        answer=None, prefixes=None,
    ):  # fmt: skip
        """Greedy decoding of every batch row of ``cache`` until each has met an end token or,
        with ``answer`` (an :class:`~restkv.eval.tasks.stops.AnswerStop`), completed its answer.

        A finished row leaves the batch (:func:`restkv.cache.select_rows`), so a batch of caches
        costs what its rows still being decoded cost. A row's tokens are the same with or
        without ``answer`` up to where it stopped: the rows are independent.

        ``prefixes``: per row, tokens it has already generated and ``cache`` already holds; they
        count towards ``max_new_tokens`` and the answer, and lead the returned tokens.

        The loop and its stop rule are :func:`restkv.decoding.greedy` and
        :class:`~restkv.decoding.StopRule`, as everywhere; the step is
        :class:`restkv.generation.CacheStep` (or, for one row with ``compile``, the static one).

        Returns the tokens per row (up to and including its end token, or the token that
        completed its answer), the logits of each step ``[steps, rows, vocab]``, the
        milliseconds per decoding step, and per row what stopped it (``"eos"``, ``"answer"``
        or ``"limit"``).
        """
        if answer is not None and self.text is None:
            raise ValueError("answer stops need the engine's text reader (Engine(..., text=prediction_reader(...)))")
        stop = StopRule(max_new_tokens, eos_ids, answer, self.text)
        alone = first_logits.shape[0] == 1 and prefixes is None  # static buffers hold one row from its start
        if alone and decodes_static(self.compile, cache, press, max_new_tokens):
            done = static_greedy(self.model, cache, first_logits, stop, press, self.compile is True, keep_logits=True)
        else:
            if self.compile and not alone and max_new_tokens > 1:  # said when it happens, never silently
                reason = refusal("compiled decoding", press, rows=first_logits.shape[0], resumed=prefixes is not None)
                warnings.warn(f"compiled decoding falls back to the eager loop: {reason}", stacklevel=2)
            reserve(cache, max_new_tokens)  # append in place: no copy of every layer per token
            step = CacheStep(self.model, cache, start_pos)
            with self._hooks(press):
                done = greedy(step, first_logits, stop, prefixes=prefixes, drop_rows=step.drop_rows, keep_logits=True)
        return done.tokens, done.logits, done.ms_per_step, done.stopped

    @phased("teacher_forcing")
    @torch.inference_mode()
    def teacher_forced_logits(self, cache, tokens: torch.Tensor, start_pos: int, press: KVPress | None = None):
        """Logits ``[rows, len, vocab]`` after each of ``tokens`` ``[rows, len]`` fed at once."""
        with self._hooks(press):
            return self._step(cache, tokens, start_pos)

    def _step(self, cache, ids: torch.Tensor, start_pos: int) -> torch.Tensor:
        ids = ids.to(self.model.device)
        positions = next_positions(cache, start_pos, ids.shape[1], ids.shape[0], ids.device)
        return self.model(input_ids=ids, cache=cache, position_ids=positions, use_cache=True).logits.float()

    def _hooks(self, press: KVPress | None):
        """The press hooks: masks and positions for compressed caches, and decoding-time eviction
        when the press has it."""
        return press(self.model) if press is not None else contextlib.nullcontext()

    # -- one prompt, every config -------------------------------------------------------------
    def run(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        eos_ids=(),
        configs=None,
        batch: int = 1,
        window: int | dict | None = None,
        answer=None,
    ) -> list[Outcome]:
        """Every config (default: all) on one prompt ``[1, n]``, query-aware: the whole prompt,
        question included, is prefilled and compressed. The full cache is the reference whenever
        it is among the configs or a config reads the shared prefill.

        ``window``: the prompt's question length in tokens for presses with an auto window, or a
        dict from each press's ``window_range`` to the question length clipped to that range.

        With ``batch > 1``, up to ``batch`` compressed caches are decoded together as the rows of
        one batch (padded per layer, padding masked), which makes a sweep cost little more than
        a single decode on hardware that is not saturated by one row; ``"auto"`` batches as many
        as fit in :data:`AUTO_BATCH_BYTES` (or the full cache's size, if larger). Per-config
        decode timings are then not measured (None).

        ``answer``: the task's :class:`~restkv.eval.tasks.stops.AnswerStop`; every row, the full
        cache's included, stops once its answer is complete.
        """
        no_question = input_ids[:, :0]
        return self._answer(input_ids, [(no_question, max_new_tokens, answer)], eos_ids, configs, batch, window)[0]

    def run_agnostic(
        self, context_ids: torch.Tensor, questions: list[tuple[torch.Tensor, int]], eos_ids=(), configs=None,
        batch: int = 1,
    ) -> list[list[Outcome]]:  # fmt: skip
        """Query-agnostic: the context ``[1, n]`` is prefilled and compressed once per config
        without seeing any question (its observation window is the context's end); then each
        ``(question_ids [1, q], max_new_tokens)`` (optionally with a third item, the question's
        :class:`~restkv.eval.tasks.stops.AnswerStop`) is fed to a private copy of each compressed
        cache and answered. One list of outcomes per question, in ``configs`` order."""
        configs = self.configs if configs is None else configs
        self.check_agnostic(configs)
        return self._answer(context_ids, questions, eos_ids, configs, batch, None)

    def check_agnostic(self, configs=None) -> None:
        """One sentence when a config needs the question to compress (an auto window)."""
        for config in self.configs if configs is None else configs:
            sentence = refusal("query-agnostic", self.presses[config])
            if sentence is not None:
                raise ValueError(f"{config.label}: {sentence}")

    def _answer(self, context_ids, questions, eos_ids, configs, batch, window) -> list[list[Outcome]]:
        """Each config's cache of ``context_ids`` is built once (from the shared prefill, or
        streamed), then every question is fed to a fork of it and answered."""
        configs = self.configs if configs is None else configs
        questions = [(q[0], q[1], q[2] if len(q) > 2 else None) for q in questions]
        n = context_ids.shape[1]
        batch = 1 if self.kv_quant else batch
        check_batch(batch)
        probed = [c for c in configs if self.shares_probe(c)]
        streamed = [c for c in configs if self.streamed(c) and c not in probed]
        outcomes = [{} for _ in questions]
        refs = [(None, None)] * len(questions)  # per question: the full cache's answer and its logits
        if len(streamed) + len(probed) < len(configs):
            record = self.prefill(context_ids)
            full = _sizes(record.cache)
            for i, (question, max_new, answer) in enumerate(questions):
                cache, first, asked_s = self._ask(fork_cache(record.cache), record.last_logits, question, n, None)
                ref, ref_logits, ref_ms, why = self.decode(
                    cache, first, n + question.shape[1], max_new, eos_ids, answer=answer
                )
                refs[i] = (ref[0], ref_logits[: len(ref[0]), 0])  # [k, vocab]
                for c in configs:
                    if c.method == "full" and not self.kv_quant:
                        outcomes[i][c] = _outcome(
                            c, record, full, 0.0, ref[0], ref_ms, asked_s=asked_s, asked=question.shape[1],
                            stopped=why[0],
                        )  # fmt: skip
            for c in configs:  # quantization alone
                if c.method == "full" and self.kv_quant:
                    cache = self._quantized(record.cache)
                    self._answer_each(record, [c], cache, questions, refs, outcomes, eos_ids, None, 0.0)
        for config in streamed:
            press = self.presses[config]
            cache, first, prefill_s = self.stream(context_ids, config, _window_for(press, window))
            own = PrefillRecord(None, {}, first, n, prefill_s)  # its own streamed prefill
            self._answer_each(own, [config], cache, questions, refs, outcomes, eos_ids, press, 0.0)
        pending = [c for c in configs if c.method != "full" and not self.streamed(c)]
        if pending:
            self._answer_derived(record, pending, questions, refs, outcomes, eos_ids, batch, window)
        if probed:  # one forward of the context and its probe, every probed config derived from it
            probe = reconstruction_probe(context_ids, self.repeat_prompt, self.bos_id)
            self._answer_derived(self.prefill(context_ids, probe), probed, questions, refs, outcomes, eos_ids, batch)
        return [[found[c] for c in configs] for found in outcomes]

    def _answer_derived(self, record, pending, questions, refs, outcomes, eos_ids, batch, window=None) -> None:
        """Answer every question with each of ``pending``'s caches derived from ``record``: one
        config at a time, or in decoding batches."""
        sequential = [c for c in pending if batch == 1 or self.presses[c].decode_budget is not None]
        batched = [c for c in pending if c not in sequential]
        memo: dict = {}  # budget-independent scores, shared by every compression of this prompt
        for config in sequential:  # compressed one at a time, each decoded before the next
            press = self.presses[config]
            cache, _, compress_s = self.compressed_cache(record, config, memo, window)
            cache = self._quantized(cache)
            self._answer_each(record, [config], cache, questions, refs, outcomes, eos_ids, press, compress_s)
        longest = max(q.shape[1] + max_new for q, max_new, _ in questions)
        for group in self._groups(record, batched, batch, longest) if batched else ():
            built = self.compressed_caches(record, group, memo, window)  # sharing the group's attention
            stacked = stack_caches([b[0] for b in built], self.model.device)
            sizes = [_sizes(b[0]) for b in built]
            compress_s = [b[2] for b in built]
            self._answer_each(
                record, group, stacked, questions, refs, outcomes, eos_ids, hooks_only_press(), compress_s, sizes
            )

    def _groups(self, record: PrefillRecord, configs: list, batch: int | str, extra: int) -> list[list]:
        """``configs`` in decoding batches: ``batch`` at a time, or with ``"auto"`` as many as fit in
        :data:`AUTO_BATCH_BYTES` (or the full cache's bytes, if more), counting each batch at its
        widest row's planned entries plus ``extra`` tokens to come, as the padded batch holds them."""
        if batch != "auto":
            return [configs[start : start + batch] for start in range(0, len(configs), batch)]
        n = record.prompt_tokens
        full = cache_bytes(record.cache)
        per_token, cap = full / max(n, 1), max(full, AUTO_BATCH_BYTES)
        groups, width = [], 0
        for config in configs:
            press = self.presses[config]
            planned = plan_budgets(press, self.modules, record.cache, n).values() if press.scorer else ()
            kept = min(max(planned, default=n), n) + extra
            if groups and (len(groups[-1]) + 1) * max(width, kept) * per_token <= cap:
                groups[-1].append(config)
                width = max(width, kept)
            else:
                groups.append([config])
                width = kept
        return groups

    def _quantized(self, cache):
        """``cache`` quantized when the engine quantizes (a copy; the shared prefill is not touched)."""
        return quantize_cache(cache, *self.kv_quant) if self.kv_quant else cache

    def _answer_each(self, record, group, cache, questions, refs, outcomes, eos_ids, press, compress_s, sizes=None):
        """Answer every question on a fork of ``cache`` (one batch row per config of ``group``);
        decoding is timed only for a cache decoded alone (``sizes`` None)."""
        rows, timed = len(group), sizes is None
        sizes = sizes or [_sizes(cache)]
        compress_s = compress_s if isinstance(compress_s, list) else [compress_s]
        n = record.prompt_tokens
        first = record.last_logits.expand(rows, -1)
        for i, (question, max_new, answer) in enumerate(questions):
            asked, logits, asked_s = self._ask(fork_cache(cache), first, question, n, press)
            seen = n + question.shape[1]
            ref_tokens, reference = refs[i]
            if ref_tokens is not None and not timed and rewindable(asked):
                tokens, why, kl, top1 = self._decode_from_reference(
                    asked, logits, ref_tokens, reference, seen, max_new, eos_ids, press, answer
                )
                ms = None
            else:
                forced = fork_cache(asked)
                tokens, _, ms, why = self.decode(asked, logits, seen, max_new, eos_ids, press, answer)
                kl, top1 = [None] * rows, [None] * rows
                if ref_tokens is not None:
                    kl, top1 = self._fidelity(forced, ref_tokens, reference, seen, press, rows)
            for r, config in enumerate(group):
                outcomes[i][config] = _outcome(
                    config, record, sizes[r], compress_s[r], tokens[r], ms if timed else None, kl[r], top1[r],
                    asked_s=asked_s, asked=question.shape[1], stopped=why[r],
                )  # fmt: skip

    @torch.inference_mode()
    def _decode_from_reference(self, cache, first_logits, ref_tokens, reference, seen, max_new, eos_ids, press, answer):
        """Greedy decoding of every row of ``cache`` that starts from the full cache's answer.

        The reference answer is teacher-forced through all rows at once, as fidelity needs
        anyway; its logits then tell each row's own greedy tokens for as long as they agree with
        the reference (``reference[:d]``, then the row's own choice). Only rows whose answer is
        not complete by then are decoded, each from its cache rewound to ``reference[:d]``
        (:func:`restkv.cache.rewind_rows`). The tokens are those of decoding each row from the
        start, up to float rounding in near ties (a forward of many tokens sums in another order
        than one of one token, as batching rows already does). Returns per row the tokens, what
        stopped it, KL and top-1 agreement (as :meth:`_fidelity`).
        """
        rows, k = first_logits.shape[0], len(ref_tokens)
        stop = StopRule(max_new, eos_ids, answer, self.text)
        forced = torch.tensor([ref_tokens]).expand(rows, -1)
        logits = self.teacher_forced_logits(cache, forced, seen, press)  # [rows, k, vocab]: after ref[: j + 1]
        kl, top1 = answer_fidelity(reference, logits, k)
        steps = torch.cat([first_logits[:, None].to(logits.device, logits.dtype), logits], dim=1)  # after ref[:j]
        agree = (steps[:, :k].argmax(-1).cpu() == torch.tensor(ref_tokens)).tolist()
        tokens, why, going, agreed = [None] * rows, [None] * rows, [], []
        for r in range(rows):
            d = agree[r].index(False) if False in agree[r] else k
            end = stop.first_stop(ref_tokens[:d])
            if end is None:
                going.append(r)
                agreed.append(d)
            else:
                tokens[r], why[r] = ref_tokens[: end[0] + 1], end[1]
        if going:
            if len(going) < rows:
                select_rows(cache, going)
            rewind_rows(cache, k, agreed)
            first = torch.stack([steps[r, d] for r, d in zip(going, agreed)])
            prefixes = [ref_tokens[:d] for d in agreed]
            decoded, _, _, stopped = self.decode(cache, first, seen, max_new, eos_ids, press, answer, prefixes)
            for j, r in enumerate(going):
                tokens[r], why[r] = decoded[j], stopped[j]
        return tokens, why, kl, top1

    @torch.inference_mode()
    def _ask(self, cache, first_logits, question: torch.Tensor, n: int, press: KVPress | None):
        """Feed ``question`` ``[1, q]`` to every row of ``cache`` (a no-op when q = 0); the cache,
        the next-token logits ``[rows, vocab]`` and the seconds it took."""
        if question.shape[1] == 0:
            return cache, first_logits, 0.0
        start = time.perf_counter()
        with self._hooks(press):
            logits = self._step(cache, question.expand(first_logits.shape[0], -1), n)[:, -1]
        return cache, logits, time.perf_counter() - start

    @torch.inference_mode()
    def fidelity(
        self, prompt_ids: torch.Tensor, continuation: list[int], configs=None, batch: int = 1
    ) -> list[Outcome]:
        """Teacher-force ``continuation`` after the prompt under every config.

        Compares each config's next-token distributions over continuation tokens 1..C-1 with the
        full cache's (token 0 is predicted by the shared prefill): mean KL, top-1 agreement, and
        the continuation's perplexity in ``extra`` (``ppl`` and ``ppl_full``).
        """
        configs = self.configs if configs is None else configs
        record = self.prefill(prompt_ids)
        n = record.prompt_tokens
        forced = torch.tensor([continuation[:-1]])
        targets = torch.tensor(continuation[1:])
        reference = self.teacher_forced_logits(fork_cache(record.cache), forced, n)[0]
        ppl_full = perplexity(reference, targets)
        full, extra = _sizes(record.cache), {"ppl": ppl_full, "ppl_full": ppl_full}
        outcomes = {c: _outcome(c, record, full, 0.0, extra=extra) for c in configs if c.method == "full"}
        for config in [c for c in configs if self.streamed(c)]:
            cache, _, prefill_s = self.stream(prompt_ids, config, None)
            sizes = _sizes(cache)
            logits = self.teacher_forced_logits(cache, forced, n, self.presses[config])[0]
            kl, top1 = kl_and_top1(reference, logits)
            extra = {"ppl": perplexity(logits, targets), "ppl_full": ppl_full}
            streamed = PrefillRecord(None, {}, logits[:1], n, prefill_s)
            outcomes[config] = _outcome(config, streamed, sizes, 0.0, kl=kl, top1=top1, extra=extra)
        pending = [c for c in configs if c.method != "full" and not self.streamed(c)]
        memo: dict = {}
        check_batch(batch)
        for group in self._groups(record, pending, batch, len(continuation)):
            built = self.compressed_caches(record, group, memo)
            stacked = stack_caches([b[0] for b in built], self.model.device) if len(group) > 1 else built[0][0]
            press = hooks_only_press() if len(group) > 1 else self.presses[group[0]]
            logits = self.teacher_forced_logits(stacked, forced.expand(len(group), -1), n, press)
            for r, (config, (cache, _, compress_s)) in enumerate(zip(group, built)):
                kl, top1 = kl_and_top1(reference, logits[r])
                extra = {"ppl": perplexity(logits[r], targets), "ppl_full": ppl_full}
                outcomes[config] = _outcome(config, record, _sizes(cache), compress_s, kl=kl, top1=top1, extra=extra)
        return [outcomes[c] for c in configs]

    def _fidelity(self, cache, ref_tokens, reference, n, press, rows: int):
        """Per row of ``cache``: KL and top-1 agreement over the answer steps after the first
        (the first step's distribution comes from the shared prefill)."""
        if len(ref_tokens) < 2:
            return [0.0] * rows, [1.0] * rows
        forced = torch.tensor([ref_tokens[:-1]]).expand(rows, -1)
        logits = self.teacher_forced_logits(cache, forced, n, press)  # predicts steps 1..k-1
        return answer_fidelity(reference, logits, len(ref_tokens))


def check_batch(batch) -> None:
    """``batch`` must be a positive number of rows or ``"auto"``."""
    if batch != "auto" and not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f'batch must be a positive number of rows or "auto", got {batch!r}')


def _window_for(press: KVPress, window: int | dict | None) -> int | None:
    """This press's question window: one for every press, or looked up by the press's own range."""
    if isinstance(window, dict):
        return window.get(press.window_range)
    return window


def _sizes(cache) -> tuple[int, int]:
    """KV entries (batch row 0) and bytes a cache stores."""
    return cache_entries(cache), cache_bytes(cache)


def _outcome(
    config, record, sizes, compress_s, tokens=(), ms=None, kl=0.0, top1=1.0, extra=None, asked_s=0.0, asked=0,
    stopped=None,
) -> Outcome:  # fmt: skip
    """What ``config`` did on the recorded prompt: its prefill is the shared one plus its
    compression (plus, query-agnostic, the ``asked`` question tokens fed afterwards in ``asked_s``)."""
    if asked_s:
        extra = {**(extra or {}), "question_s": asked_s}
    return Outcome(
        config=config,
        token_ids=list(tokens),
        prompt_tokens=record.prompt_tokens + asked,
        kept_entries=sizes[0],
        kv_bytes=sizes[1],
        prefill_s=record.prefill_s + compress_s,
        compress_s=compress_s,
        decode_ms_per_token=ms,
        kl=kl,
        top1=top1,
        extra=extra or {},
        stopped=stopped,
    )
