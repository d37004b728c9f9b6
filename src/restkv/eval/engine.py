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
import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..adapters import attention_modules, check_supported, is_sliding, project_queries
from ..cache import cache_bytes, cache_entries
from ..compress import PressStats, SequenceState, compress_layer, plan_budgets, query_span
from ..press import KVPress, get_press


@dataclass(frozen=True)
class MethodConfig:
    """One point of a sweep: a method, a budget, and the method's parameters."""

    method: str
    budget: int | None = None
    params: tuple = ()  # sorted (name, value) pairs, hashable
    allocator: str | None = None  # None: the method's own default

    @classmethod
    def make(cls, method: str, budget: int | None = None, allocator: str | None = None, **params) -> MethodConfig:
        return cls(method, None if method == "full" else budget, tuple(sorted(params.items())), allocator)

    def press(self) -> KVPress:
        if self.method == "full":
            return get_press("full")
        return get_press(self.method, budget=self.budget, allocator=self.allocator, **dict(self.params))

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        alloc = f"+{self.allocator}" if self.allocator else ""
        return f"{self.method}{alloc}{'(' + extra + ')' if extra else ''}"


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
    decode_ms_per_token: float
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
            cos, sin = kwargs["position_embeddings"]
            queries[module.layer_idx] = project_queries(
                module, hidden[:, -span:], (cos[..., -span:, :], sin[..., -span:, :])
            )

        handles = [m.register_forward_hook(record, with_kwargs=True) for m in self.modules]
        cache = DynamicCache(config=self.model.config)
        try:
            start = time.perf_counter()
            logits = self.model(input_ids=input_ids.to(self.model.device), cache=cache, use_cache=True).logits[:, -1]
            elapsed = time.perf_counter() - start
        finally:
            for h in handles:
                h.remove()
        return PrefillRecord(cache, queries, logits.float(), n, elapsed)

    def compressed_cache(self, record: PrefillRecord, config: MethodConfig) -> tuple[DynamicCache, PressStats, float]:
        """A new cache for ``config`` built from the recorded prefill; the record is not modified."""
        press = self.presses[config]
        cache = fork_cache(record.cache)
        stats = PressStats(prompt_tokens=record.prompt_tokens)
        if press.scorer is None:
            return cache, stats, 0.0
        start = time.perf_counter()
        state = SequenceState(next_pos=torch.tensor([record.prompt_tokens], device=self.model.device))
        state.budgets = plan_budgets(press, self.modules, cache, record.prompt_tokens)
        span = query_span(press.scorer, record.prompt_tokens)
        for module in self.modules:
            layer = cache.layers[module.layer_idx]
            if is_sliding(module, layer):
                continue
            compress_layer(press, module, cache, record.queries[module.layer_idx][..., -span:, :], state, stats)
        cache.restkv_state = state
        return cache, stats, time.perf_counter() - start

    # -- decoding -----------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self, cache, first_logits, start_pos: int, max_new_tokens: int, eos_ids, press: KVPress | None = None
    ) -> tuple[list[int], list[torch.Tensor], float]:
        """Greedy decoding from ``cache``; returns tokens, per-step logits and ms per decode step."""
        tokens, logits_seen = [], [first_logits]
        logits = first_logits
        steps = 0
        with self._hooks(press):
            start = time.perf_counter()
            for step in range(max_new_tokens):
                token = int(logits.argmax(-1)[0])
                tokens.append(token)
                if token in eos_ids or step == max_new_tokens - 1:
                    break
                logits = self._step(cache, [token], start_pos + step)[:, -1]
                logits_seen.append(logits)
                steps += 1
            ms = (time.perf_counter() - start) * 1000 / max(steps, 1)
        return tokens, logits_seen, ms

    @torch.inference_mode()
    def teacher_forced_logits(
        self, cache, tokens: list[int], start_pos: int, press: KVPress | None = None
    ) -> torch.Tensor:
        """Logits ``[len(tokens), vocab]`` after each of ``tokens`` fed at once."""
        with self._hooks(press):
            return self._step(cache, tokens, start_pos)[0]

    def _step(self, cache, tokens: list[int], start_pos: int) -> torch.Tensor:
        device = self.model.device
        ids = torch.tensor([tokens], device=device)
        positions = torch.arange(start_pos, start_pos + len(tokens), device=device)[None]
        return self.model(input_ids=ids, cache=cache, position_ids=positions, use_cache=True).logits.float()

    def _hooks(self, press: KVPress | None):
        """The config's own press hooks: masks and positions for the compressed cache, and its
        decoding-time eviction if it has one."""
        return press(self.model) if press is not None else contextlib.nullcontext()

    # -- one prompt, every config -------------------------------------------------------------
    def run(self, input_ids: torch.Tensor, max_new_tokens: int, eos_ids=(), configs=None) -> list[Outcome]:
        """Every config (default: all) on one prompt ``[1, n]``; the full cache is always the reference."""
        configs = self.configs if configs is None else configs
        record = self.prefill(input_ids)
        n = record.prompt_tokens
        full_cache = fork_cache(record.cache)
        ref_tokens, ref_logits, ref_ms = self.decode(full_cache, record.last_logits, n, max_new_tokens, eos_ids)
        reference = torch.cat(ref_logits[: len(ref_tokens)], dim=0)  # [k, vocab]
        outcomes = []
        for config in configs:
            if config.method == "full":
                outcomes.append(
                    Outcome(
                        config,
                        ref_tokens,
                        n,
                        cache_entries(record.cache),
                        cache_bytes(record.cache),
                        record.prefill_s,
                        0.0,
                        ref_ms,
                        0.0,
                        1.0,
                    )
                )
                continue
            cache, stats, compress_s = self.compressed_cache(record, config)
            entries, size = cache_entries(cache), cache_bytes(cache)
            forced_cache = fork_cache(cache)
            press = self.presses[config]
            tokens, _, ms = self.decode(cache, record.last_logits, n, max_new_tokens, eos_ids, press)
            kl, top1 = self._fidelity(forced_cache, ref_tokens, reference, n, press)
            outcomes.append(
                Outcome(config, tokens, n, entries, size, record.prefill_s + compress_s, compress_s, ms, kl, top1)
            )
        return outcomes

    def _fidelity(self, cache, ref_tokens, reference, n, press):
        """KL and top-1 agreement over the answer steps after the first (the first is the prefill's, shared)."""
        if len(ref_tokens) < 2:
            return 0.0, 1.0
        logits = self.teacher_forced_logits(cache, ref_tokens[:-1], n, press)  # predicts steps 1..k-1
        ref = reference[1 : len(ref_tokens)]
        return kl_and_top1(ref, logits)


def kl_and_top1(reference_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """Mean KL(reference || other) per row and share of rows with the same argmax."""
    ref_logp = torch.log_softmax(reference_logits.float(), -1)
    logp = torch.log_softmax(logits.float(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0)
    top1 = (reference_logits.argmax(-1) == logits.argmax(-1)).float()
    return float(kl.mean()), float(top1.mean())


def fork_cache(cache) -> DynamicCache:
    """A cache that shares tensors with ``cache`` but not its future.

    transformers' dynamic layers replace (never write into) their tensors when tokens are
    appended, and compression replaces them too, so shallow layer copies are independent.
    """
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    state = getattr(cache, "restkv_state", None)
    if state is not None:
        forked.restkv_state = dataclasses.replace(state, layers=dict(state.layers))
    return forked
