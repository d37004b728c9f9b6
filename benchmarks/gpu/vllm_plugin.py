"""restkv's vLLM plugin on a GPU (CUDA vLLM 0.32, V1 model runner, FlashAttention): the checks that the
CPU build cannot make, in one short run.

1. ``full`` through the plugin gives vLLM's own tokens (an engine in a subprocess with
   ``VLLM_PLUGINS=none`` gives the reference).
2. The FlashAttention layout functions read back what vLLM wrote: with ``observe_only`` the plugin
   records the kept positions it chose from keys and values read through ``read_kv_flash``; they
   must equal ``scorer.select`` on transformers' own queries, keys and values of the same prompt.
3. Capacity at a fixed pool: pass-key prompts submitted at once to an engine with the full cache and
   one with restkv at ``--budget``, peak requests decoding at once and tokens per second (the CPU
   benchmark's measurement, ``benchmarks/profiling/vllm_capacity.py``, reused).

    VLLM_USE_V2_MODEL_RUNNER=0 python benchmarks/gpu/vllm_plugin.py --model PATH [--budget 256]
        [--requests 64] [--prompt-tokens 4096] [--blocks 2000] [--out runs/vllm-gpu]

``--smoke`` runs the same steps on CPU with vLLM's CPU build and the embedded SmolLM2 at toy sizes
(``.venv-vllm/bin/python benchmarks/gpu/vllm_plugin.py --smoke``); on CPU step 2 goes through the CPU
layout functions instead, so the smoke run checks the script, not FlashAttention.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the plugin's records are read in this process
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # CPU build: a small pool, sized by num_gpu_blocks_override
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "profiling"))


def engine(model: str, args, **config):
    from vllm import LLM

    extra = {} if args.smoke else {"gpu_memory_utilization": 0.85}
    return LLM(
        model=model, dtype=args.dtype, enforce_eager=args.smoke, enable_prefix_caching=False, seed=0,
        max_model_len=args.prompt_tokens + 64, block_size=args.block_size, **extra, **config,
    )  # fmt: skip


def tokens(llm, prompts, max_tokens, extra=None):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args=extra)
    return [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)]


def plain_tokens(args, prompts, out: Path) -> list[list[int]]:
    """vLLM's tokens with no plugin loaded, from a subprocess."""
    (out / "prompts.json").write_text(json.dumps(prompts))
    env = {**os.environ, "VLLM_PLUGINS": "none"}
    command = [sys.executable, __file__, "plain", args.model, str(out / "prompts.json"), str(out / "plain.json"), json.dumps(vars(args), default=str)]
    subprocess.run(command, check=True, env=env)
    return json.loads((out / "plain.json").read_text())


def reference_kept(model: str, ids: list[int], budget: int, dtype) -> dict:
    """Kept positions of restkv's scorer on transformers' own tensors (eager attention)."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from restkv import get_press
    from restkv.adapters import attention_modules, last_queries, layer_context

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="eager").to(device)
    scorer = get_press("restkv", budget=budget).scorer
    modules, inputs = attention_modules(hf), {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw: inputs.__setitem__(mod.layer_idx, kw), with_kwargs=True) for m in modules]
    cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
        for h in hooks:
            h.remove()
        kept = {}
        for m in modules:
            kw = inputs[m.layer_idx]
            q = last_queries(m, kw["hidden_states"], kw["position_embeddings"], scorer.window_size)
            layer = cache.layers[m.layer_idx]
            context = layer_context(m, (m.layer_idx, len(modules))).scorer_kwargs()
            kept[m.layer_idx] = scorer.select(q, layer.keys, layer.values, budget=budget, **context)[0].cpu()
    del hf
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder or hub id (default with --smoke: the embedded SmolLM2)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU with vLLM's CPU build")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 with --smoke")
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/vllm-gpu"))
    args = parser.parse_args()
    toy = dict(dtype="float32", budget=64, requests=4, prompt_tokens=400, blocks=36, block_size=32, chunk=128)
    full_size = dict(dtype="bfloat16", budget=256, requests=64, prompt_tokens=4096, blocks=2000, block_size=16, chunk=8192)
    for key, value in (toy if args.smoke else full_size).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model is None:
        if not args.smoke:
            parser.error("--model is required without --smoke")
        from restkv.models import DEFAULT_MODEL, load_model, restkv_home

        folder = restkv_home() / "models" / DEFAULT_MODEL
        if not (folder / "config.json").is_file():
            load_model(DEFAULT_MODEL)
        args.model = str(folder)
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    from vllm_capacity import accuracy, passkey_prompts, run_vllm

    from restkv.integrations.vllm.runner import clear_observed, observed

    report = {"model": args.model, "smoke": args.smoke, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    prompts, keys, tokenizer = passkey_prompts(args.model, args.requests, args.prompt_tokens)
    start = time.perf_counter()

    # 1 and 2: one engine observing, so that its tokens are vLLM's own
    observing = {"method": "restkv", "budget": args.budget, "observe_only": True}
    llm = engine(args.model, args, max_num_batched_tokens=args.chunk, additional_config={"restkv": observing})
    clear_observed()
    mine = tokens(llm, prompts[:2], 16, {"restkv": {"method": "full"}})
    tokens(llm, prompts[:1], 1)
    (_, _, kept), = observed()
    del llm
    report["full_equals_vllm"] = mine == plain_tokens(args, prompts[:2], args.out)
    dtype = getattr(torch, args.dtype)
    reference = reference_kept(args.model, prompts[0], args.budget, dtype)
    pairs = [(set(kept[i][h].tolist()), set(reference[i][h].tolist())) for i in reference for h in range(reference[i].shape[0])]
    report["kept_sets_equal"] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
    report["kept_overlap"] = round(sum(len(a & b) / len(b) for a, b in pairs) / len(pairs), 4)

    # 3: capacity at a fixed pool
    rows = []
    for name, setting in (("full", {"method": "full"}), (f"restkv-{args.budget}", {"method": "restkv", "budget": args.budget})):
        row = run_vllm(args.model, setting, prompts, args)
        row.update(method=name, accuracy=accuracy(tokenizer, row.pop("outputs"), keys))
        rows.append(row)
    report["capacity"] = rows
    report["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=1)
    print(text)
    (args.out / "vllm_plugin.json").write_text(text)
    if not (report["full_equals_vllm"] and report["kept_overlap"] >= 0.95):
        sys.exit(1)


def plain(model: str, prompts_file: str, out_file: str, settings: str) -> None:
    args = argparse.Namespace(**json.loads(settings))
    llm = engine(model, args, max_num_batched_tokens=args.chunk)
    Path(out_file).write_text(json.dumps(tokens(llm, json.loads(Path(prompts_file).read_text()), 16)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plain":
        plain(*sys.argv[2:6])
    else:
        main()
