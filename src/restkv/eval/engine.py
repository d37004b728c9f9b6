"""Prefill once, compress many.

With prefill-time eviction the prompt's forward pass is the same for every method: only the
stored cache differs. So each prompt is prefilled once with the full cache while the queries
the scorers read are recorded; each method and budget then gets its compressed cache from that
record (through the same :func:`~restkv.compress.compress_layer` the press uses) and is decoded
on its own. A sweep of many methods costs one prefill plus one cheap compression and one
decode per method.

Fidelity is measured by teacher forcing: the full cache's greedy answer is fed to each
compressed cache, and the next-token distributions are compared with the full cache's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..adapters import attention_modules, check_supported, is_sliding, last_queries
from ..cache import cache_bytes, cache_entries, fork_cache, reserve, stack_caches
from ..compress import compress_layer, effective_scorer, plan_budgets
from ..generate import prefill
from ..press import KVPress, hooks_only_press
from ..specs import MethodConfig
from ..state import PressStats, SequenceState, get_state, set_state


@dataclass
class PrefillRecord:
    """One full-cache prefill and what the scorers need from it."""

    cache: DynamicCache
    queries: dict[int, torch.Tensor]  # layer -> post-RoPE queries of the prompt's last tokens
    last_logits: torch.Tensor  # [b, vocab]
    prompt_tokens: int
    prefill_s: float


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


class Engine:
    """Runs sweeps of methods and budgets over prompts on one model."""

    def __init__(self, model, configs: list[MethodConfig]):
        check_supported(model)
        self.model = model
        self.configs = list(configs)
        self.presses = {c: c.press() for c in self.configs}
        self.modules = attention_modules(model)
        scorers = [p.scorer for p in self.presses.values() if p.scorer is not None]
        self.needs_all_queries = any(s.query_span == "all" for s in scorers)
        self.window = max([s.window_size for s in scorers] + [1])

    # -- the shared prefill -----------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> PrefillRecord:
        n = input_ids.shape[1]
        span = n if self.needs_all_queries else min(self.window, n)
        queries: dict[int, torch.Tensor] = {}

        def record(module, args, kwargs, output):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            queries[module.layer_idx] = last_queries(module, hidden, kwargs["position_embeddings"], span)

        handles = [m.register_forward_hook(record, with_kwargs=True) for m in self.modules]
        cache = DynamicCache(config=self.model.config)
        try:
            start = time.perf_counter()
            logits = prefill(self.model, input_ids.to(self.model.device), cache)
            elapsed = time.perf_counter() - start
        finally:
            for h in handles:
                h.remove()
        return PrefillRecord(cache, queries, logits.float(), n, elapsed)

    def compressed_cache(
        self, record: PrefillRecord, config: MethodConfig, memo: dict | None = None, window: int | None = None
    ) -> tuple[DynamicCache, PressStats, float]:
        """A new cache for ``config`` built from the recorded prefill; the record is not modified.

        ``memo`` (one per prompt) shares budget-independent scores between budgets.
        """
        press = self.presses[config]
        cache = fork_cache(record.cache)
        stats = PressStats(prompt_tokens=record.prompt_tokens)
        if press.scorer is None:
            return cache, stats, 0.0
        start = time.perf_counter()
        state = SequenceState(next_pos=torch.tensor([record.prompt_tokens], device=self.model.device), window=window)
        state.budgets = plan_budgets(press, self.modules, cache, record.prompt_tokens)
        span = effective_scorer(press, state).query_count(record.prompt_tokens)
        for module in self.modules:
            layer = cache.layers[module.layer_idx]
            if is_sliding(module, layer):
                continue
            compress_layer(press, module, cache, record.queries[module.layer_idx][..., -span:, :], state, stats, memo)
        set_state(cache, state)
        return cache, stats, time.perf_counter() - start

    # -- decoding -----------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, cache, first_logits, start_pos: int, max_new_tokens: int, eos_ids, press: KVPress | None = None):
        """Greedy decoding of every batch row of ``cache`` until each has met an end token.

        Returns the tokens per row (up to and including its end token), the logits of each step
        ``[steps, rows, vocab]`` and the milliseconds per decoding step.
        """
        rows = first_logits.shape[0]
        reserve(cache, max_new_tokens)  # append in place: no copy of every layer per token
        tokens: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        logits, seen = first_logits, [first_logits]
        steps = 0
        with self._hooks(press):
            start = time.perf_counter()
            for step in range(max_new_tokens):
                chosen = logits.argmax(-1)
                for r in range(rows):
                    if not done[r]:
                        tokens[r].append(int(chosen[r]))
                        done[r] = int(chosen[r]) in eos_ids
                if all(done) or step == max_new_tokens - 1:
                    break
                logits = self._step(cache, chosen[:, None], start_pos + step)[:, -1]
                seen.append(logits)
                steps += 1
            ms = (time.perf_counter() - start) * 1000 / max(steps, 1)
        return tokens, torch.stack(seen), ms

    @torch.inference_mode()
    def teacher_forced_logits(self, cache, tokens: torch.Tensor, start_pos: int, press: KVPress | None = None):
        """Logits ``[rows, len, vocab]`` after each of ``tokens`` ``[rows, len]`` fed at once."""
        with self._hooks(press):
            return self._step(cache, tokens, start_pos)

    def _step(self, cache, ids: torch.Tensor, start_pos: int) -> torch.Tensor:
        device = self.model.device
        ids = ids.to(device)
        positions = torch.arange(start_pos, start_pos + ids.shape[1], device=device).expand(ids.shape[0], -1)
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
        window: int | None = None,
    ) -> list[Outcome]:
        """Every config (default: all) on one prompt ``[1, n]``; the full cache is always the reference.

        With ``batch > 1``, up to ``batch`` compressed caches are decoded together as the rows of
        one batch (padded per layer, padding masked), which makes a sweep cost little more than
        a single decode on hardware that is not saturated by one row. Per-config decode timings
        are then not measured (None).
        """
        configs = self.configs if configs is None else configs
        record = self.prefill(input_ids)
        n = record.prompt_tokens
        ref, ref_logits, ref_ms = self.decode(fork_cache(record.cache), record.last_logits, n, max_new_tokens, eos_ids)
        ref_tokens = ref[0]
        reference = ref_logits[: len(ref_tokens), 0]  # [k, vocab]
        full = _sizes(record.cache)
        outcomes = {c: _outcome(c, record, full, 0.0, ref_tokens, ref_ms) for c in configs if c.method == "full"}
        memo: dict = {}
        pending = [c for c in configs if c.method != "full"]
        sequential = [c for c in pending if batch <= 1 or self.presses[c].decode_budget is not None]
        batched = [c for c in pending if c not in sequential]
        for config in sequential:
            cache, _, compress_s = self.compressed_cache(record, config, memo, window)
            press = self.presses[config]
            sizes, forced = _sizes(cache), fork_cache(cache)
            tokens, _, ms = self.decode(cache, record.last_logits, n, max_new_tokens, eos_ids, press)
            kl, top1 = self._fidelity(forced, ref_tokens, reference, n, press)
            outcomes[config] = _outcome(config, record, sizes, compress_s, tokens[0], ms, kl[0], top1[0])
        for start in range(0, len(batched), batch):
            group = batched[start : start + batch]
            built = [self.compressed_cache(record, c, memo, window) for c in group]
            sizes = [_sizes(b[0]) for b in built]
            stacked = stack_caches([b[0] for b in built], self.model.device)
            forced = fork_cache(stacked)
            first = record.last_logits.expand(len(group), -1)
            tokens, _, _ = self.decode(stacked, first, n, max_new_tokens, eos_ids, hooks_only_press())
            kl, top1 = self._fidelity(forced, ref_tokens, reference, n, hooks_only_press())
            for r, (config, (_, _, compress_s)) in enumerate(zip(group, built)):
                outcomes[config] = _outcome(config, record, sizes[r], compress_s, tokens[r], None, kl[r], top1[r])
        return [outcomes[c] for c in configs]

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
        ppl_full = _perplexity(reference, targets)
        full, extra = _sizes(record.cache), {"ppl": ppl_full, "ppl_full": ppl_full}
        outcomes = {c: _outcome(c, record, full, 0.0, extra=extra) for c in configs if c.method == "full"}
        pending = [c for c in configs if c.method != "full"]
        memo: dict = {}
        for start in range(0, len(pending), max(batch, 1)):
            group = pending[start : start + max(batch, 1)]
            built = [self.compressed_cache(record, c, memo) for c in group]
            stacked = stack_caches([b[0] for b in built], self.model.device) if len(group) > 1 else built[0][0]
            press = hooks_only_press() if len(group) > 1 else self.presses[group[0]]
            logits = self.teacher_forced_logits(stacked, forced.expand(len(group), -1), n, press)
            for r, (config, (cache, _, compress_s)) in enumerate(zip(group, built)):
                kl, top1 = kl_and_top1(reference, logits[r])
                extra = {"ppl": _perplexity(logits[r], targets), "ppl_full": ppl_full}
                outcomes[config] = _outcome(config, record, _sizes(cache), compress_s, kl=kl, top1=top1, extra=extra)
        return [outcomes[c] for c in configs]

    def _fidelity(self, cache, ref_tokens, reference, n, press):
        """Per row: KL and top-1 agreement over the answer steps after the first (the first
        step's distribution comes from the shared prefill)."""
        state = get_state(cache)
        rows = state.next_pos.shape[0] if state is not None else 1
        if len(ref_tokens) < 2:
            return [0.0] * rows, [1.0] * rows
        forced = torch.tensor([ref_tokens[:-1]]).expand(rows, -1)
        logits = self.teacher_forced_logits(cache, forced, n, press)  # predicts steps 1..k-1
        pairs = [kl_and_top1(reference[1 : len(ref_tokens)], logits[r]) for r in range(rows)]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def _sizes(cache) -> tuple[int, int]:
    """KV entries (batch row 0) and bytes a cache stores."""
    return cache_entries(cache), cache_bytes(cache)


def _outcome(config, record, sizes, compress_s, tokens=(), ms=None, kl=0.0, top1=1.0, extra=None) -> Outcome:
    """What ``config`` did on the recorded prompt: its prefill is the shared one plus its compression."""
    return Outcome(
        config=config,
        token_ids=list(tokens),
        prompt_tokens=record.prompt_tokens,
        kept_entries=sizes[0],
        kv_bytes=sizes[1],
        prefill_s=record.prefill_s + compress_s,
        compress_s=compress_s,
        decode_ms_per_token=ms,
        kl=kl,
        top1=top1,
        extra=extra or {},
    )


def _perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    nll = torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device))
    return float(torch.exp(nll))


def kl_and_top1(reference_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """Mean KL(reference || other) per row and share of rows with the same argmax."""
    ref_logp = torch.log_softmax(reference_logits.float(), -1)
    logp = torch.log_softmax(logits.float(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0)
    top1 = (reference_logits.argmax(-1) == logits.argmax(-1)).float()
    return float(kl.mean()), float(top1.mean())
