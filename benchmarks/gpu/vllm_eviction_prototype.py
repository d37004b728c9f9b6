"""docs/serving.md's vLLM plan, as a prototype: ReST-KV on a vLLM-layout paged KV cache.

    python benchmarks/gpu/vllm_eviction_prototype.py --out runs/vllm-proto            # a GPU (and vllm, if installed)
    python benchmarks/gpu/vllm_eviction_prototype.py --out runs/vllm-smoke --smoke    # a tiny model on a CPU (CI)

What it does, request by request, on one pool of ``--blocks`` blocks of ``--block-size`` tokens
per layer laid out as vLLM's FlashAttention backend lays its cache out
(``[2, num_blocks, block_size, num_kv_heads, head_size]`` per layer):

1. prefill with the model (transformers computes the keys, values and the window's queries),
   and write keys and values to the pool through a slot mapping, as vLLM's ``reshape_and_cache``;
2. read the prompt's keys and values back through the request's block table, score them with
   ReST-KV from the observation window's queries (uniform budget: one count for every layer);
3. compact: write each KV head's kept entries, in position order, to the first slots of the
   request's blocks, shorten the block table and return the emptied blocks to the free list;
4. decode with a per-request position offset: the next token's position is the true sequence
   length, its slot the one after the kept entries; attention reads the pool through the block
   table (here by gathering into a transformers cache each step, which a kernel would not need).

Checks (in the JSON summary): the decoded tokens equal restkv's own press on the same prompt
(``matches_press``), the blocks freed, and the time compaction takes. With ``vllm`` importable it
also reads the installed vLLM's FlashAttention cache shape and checks the layout assumed here
against it, and times vLLM's own generation of the same prompts (full cache) as the baseline
that an integrated version would be compared with. What is *not* here: the change to vLLM's
scheduler, block manager and attention metadata that would run steps 2-4 inside vLLM
(docs/serving.md, section 5, says why that work stalled upstream).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

from restkv import get_press
from restkv.adapters import attention_modules, last_queries, layer_context
from restkv.generation import greedy_decode


class VLLMLayoutPool:
    """A paged KV cache in vLLM's layout: per layer ``[2, blocks, block_size, H_kv, d]``, block tables, a free list."""

    def __init__(self, layers: int, blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype, device):
        self.block_size = block_size
        self.kv = [torch.zeros(2, blocks, block_size, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.free = list(range(blocks - 1, -1, -1))
        self.tables: dict[str, list[int]] = {}
        self.stored: dict[str, int] = {}  # entries a request has in the pool
        self.offset: dict[str, int] = {}  # its position minus its stored entries (tokens evicted)

    def slots(self, rid: str, start: int, end: int) -> torch.Tensor:
        """The slot mapping of a request's entries ``start..end-1``: block * block_size + offset."""
        table, bs = self.tables[rid], self.block_size
        return torch.tensor([table[i // bs] * bs + i % bs for i in range(start, end)], device=self.kv[0].device)

    def grow(self, rid: str, total: int) -> None:
        table = self.tables.setdefault(rid, [])
        need = math.ceil(total / self.block_size) - len(table)
        if need > len(self.free):
            raise MemoryError("the pool is out of blocks")
        table.extend(self.free.pop() for _ in range(need))

    def write(self, rid: str, layer: int, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        """keys/values ``[n, H_kv, d]`` to entries ``start..`` of the request (vLLM's reshape_and_cache)."""
        slots = self.slots(rid, start, start + keys.shape[0])
        kv = self.kv[layer].view(2, -1, *self.kv[layer].shape[-2:])
        kv[0].index_copy_(0, slots, keys)
        kv[1].index_copy_(0, slots, values)

    def read(self, rid: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The request's stored keys and values ``[H_kv, n, d]``, read through its block table."""
        slots = self.slots(rid, 0, self.stored[rid])
        kv = self.kv[layer].view(2, -1, *self.kv[layer].shape[-2:])
        return kv[0].index_select(0, slots).transpose(0, 1), kv[1].index_select(0, slots).transpose(0, 1)

    def compact(self, rid: str, kept: list[torch.Tensor]) -> int:
        """Move each layer's kept entries (``[H_kv, k]`` positions, sorted) to the first slots; free the rest."""
        count = kept[0].shape[-1]
        for layer, idx in enumerate(kept):
            keys, values = self.read(rid, layer)
            gather = idx[..., None].expand(-1, -1, keys.shape[-1])
            self.write(rid, layer, keys.gather(1, gather).transpose(0, 1), values.gather(1, gather).transpose(0, 1), 0)
        table = self.tables[rid]
        keep_blocks = math.ceil(count / self.block_size)
        self.free.extend(reversed(table[keep_blocks:]))
        del table[keep_blocks:]
        self.offset[rid] = self.stored[rid] - count
        self.stored[rid] = count
        return len(table)

    def release(self, rid: str) -> None:
        self.free.extend(reversed(self.tables.pop(rid)))
        self.stored.pop(rid)
        self.offset.pop(rid)


def capture_window(model, window: int):
    """Hooks that keep each attention layer's last ``window`` post-RoPE queries of a prefill."""
    captured, handles = {}, []
    for module in attention_modules(model):
        def hook(mod, args, kwargs, captured=captured):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if hidden.shape[1] > 1:
                captured[mod.layer_idx] = last_queries(mod, hidden, kwargs["position_embeddings"], window)
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return captured, handles


@torch.no_grad()
def serve_request(model, pool: VLLMLayoutPool, rid: str, ids: torch.Tensor, press, new_tokens: int, sync) -> dict:
    """Prefill, compress in the pool, decode with a position offset; returns tokens and what happened."""
    scorer = press.scorer
    n = ids.shape[1]
    modules = attention_modules(model)
    captured, handles = capture_window(model, min(scorer.window_size, n))
    cache = DynamicCache(config=model.config)
    try:
        logits = model(ids, cache=cache, use_cache=True).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    pool.grow(rid, n)
    pool.stored[rid], pool.offset[rid] = n, 0
    for i, layer in enumerate(cache.layers):
        pool.write(rid, i, layer.keys[0].transpose(0, 1), layer.values[0].transpose(0, 1), 0)
    blocks_before = len(pool.tables[rid])
    sync()
    start = time.perf_counter()
    budget = press.budget
    kept = []
    for position, module in enumerate(modules):
        keys, values = pool.read(rid, module.layer_idx)
        context = layer_context(module, (position, len(modules))).scorer_kwargs()
        kept.append(scorer.select(captured[module.layer_idx], keys[None], values[None], budget=budget, **context)[0])
    blocks_after = pool.compact(rid, kept) if kept[0].shape[-1] < n else blocks_before
    sync()
    compaction_ms = 1000 * (time.perf_counter() - start)
    free_after = len(pool.free)
    tokens = [int(logits.argmax(-1))]
    for _ in range(new_tokens - 1):
        stored = pool.stored[rid]
        step_cache = DynamicCache(config=model.config)
        for i in range(len(modules)):
            keys, values = pool.read(rid, i)
            step_cache.update(keys[None], values[None], i)
        position = torch.tensor([[stored + pool.offset[rid]]], device=ids.device)  # the true sequence length
        token = torch.tensor([[tokens[-1]]], device=ids.device)
        logits = model(token, cache=step_cache, position_ids=position, use_cache=True).logits[:, -1]
        pool.grow(rid, stored + 1)
        for i, layer in enumerate(step_cache.layers):  # the new entry goes right after the kept ones
            pool.write(rid, i, layer.keys[0, :, -1:].transpose(0, 1), layer.values[0, :, -1:].transpose(0, 1), stored)
        pool.stored[rid] = stored + 1
        tokens.append(int(logits.argmax(-1)))
    return {"prompt_tokens": n, "kept": int(kept[0].shape[-1]), "blocks_before": blocks_before,
            "blocks_after": blocks_after, "free_blocks_after_compaction": free_after, "compaction_ms": round(compaction_ms, 2),
            "tokens": tokens}  # fmt: skip


def tiny_llama(device):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)  # fmt: skip
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device).eval()


def vllm_checks(model_path: str | None, prompts: list[list[int]], new_tokens: int, block_size: int, shape) -> dict:
    """The installed vLLM's cache layout against ours, and its own full-cache generation time."""
    try:
        import vllm
    except ImportError:
        return {"vllm": None}
    out = {"vllm": vllm.__version__}
    try:
        from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend

        theirs = tuple(FlashAttentionBackend.get_kv_cache_shape(7, block_size, shape[-2], shape[-1]))
        out["layout_matches"] = theirs == (2, 7, block_size, shape[-2], shape[-1])
        out["vllm_kv_cache_shape"] = list(theirs)
    except Exception as err:  # the backend moved between releases: say so, do not guess
        out["layout_error"] = f"{type(err).__name__}: {err}"
    if model_path is None:
        return out
    try:
        from vllm import LLM, SamplingParams, TokensPrompt

        llm = LLM(model=model_path, block_size=block_size, enforce_eager=True, gpu_memory_utilization=0.3)
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
        out["vllm_full_cache_s"] = round(time.perf_counter() - start, 3)
    except Exception as err:
        out["vllm_generate_error"] = f"{type(err).__name__}: {err}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="a tiny random-weight model on the CPU, no vllm")
    parser.add_argument("--model", default=None, help="a local model folder (default: the embedded SmolLM2)")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.smoke:
        device, model, model_path = "cpu", tiny_llama("cpu"), None
        requests, length, budget, new_tokens, window = args.requests or 3, args.prompt_tokens or 150, args.budget or 40, args.new_tokens or 6, 8
    else:
        from restkv.models import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_model(args.model or "smollm2-135m-instruct", device=device)
        model, model_path = loaded.model, str(loaded.model.name_or_path)
        requests, length, budget, new_tokens, window = args.requests or 8, args.prompt_tokens or 2048, args.budget or 256, args.new_tokens or 32, 32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    press = get_press("restkv", budget=budget, window_size=window)
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prompts = [torch.randint(3, vocab, (1, length + 7 * r), generator=gen).to(device) for r in range(requests)]
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim)
    blocks = requests * math.ceil((length + 7 * requests + new_tokens) / args.block_size)
    pool = VLLMLayoutPool(cfg.num_hidden_layers, blocks, args.block_size, shape[1], shape[2], model.dtype, device)
    records = []
    for r, ids in enumerate(prompts):  # requests stay resident: the pool fills as they arrive
        record = serve_request(model, pool, f"req{r}", ids, press, new_tokens, sync)
        reference, *_ = greedy_decode(model, ids, press, new_tokens, eos_ids=set())
        record["matches_press"] = record.pop("tokens") == reference
        records.append(record)
    summary = {
        "smoke": args.smoke, "device": device, "requests": requests, "budget": budget, "block_size": args.block_size,
        "pool_blocks": blocks, "records": records,
        "all_match_press": all(r["matches_press"] for r in records),
        "blocks_freed": sum(r["blocks_before"] - r["blocks_after"] for r in records),
    }  # fmt: skip
    if not args.smoke:
        summary.update(vllm_checks(model_path, [p[0].tolist() for p in prompts], new_tokens, args.block_size, shape))
    summary["wall_s"] = round(time.perf_counter() - start, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
