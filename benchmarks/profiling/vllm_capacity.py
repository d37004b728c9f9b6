"""How many concurrent 2K-token requests vLLM's own block pool holds with and without restkv's
eviction (the vLLM plugin), the throughput at that equal memory, and the pass-key accuracy of each,
against restkv's press on transformers on the same prompts.

vLLM's CPU build (``.venv-vllm``), the embedded SmolLM2, a pool of exactly ``--blocks`` blocks of
``--block-size`` tokens (``num_gpu_blocks_override``). ``--requests`` pass-key prompts of at most
``--prompt-tokens`` tokens are submitted at once, each asking ``--new-tokens`` greedy tokens.
Measured per run, from the scheduler after every engine step: the peak number of requests running
at once, preemptions, wall time and generated tokens per second. Runs alternate (full, restkv,
full, ...) so both see the same machine.

    .venv-vllm/bin/python benchmarks/profiling/vllm_capacity.py [--requests 16] [--prompt-tokens 2048]
        [--blocks 210] [--budget 256] [--new-tokens 32] [--repeats 1] [--press-python .venv/bin/python]
        [--out benchmarks/results/vllm-capacity]

``--press-python``: the main environment's Python, which runs this script's ``press`` mode (restkv's
press on transformers; vLLM's environment pins an older transformers) for the reference accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the scheduler is read in this process
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # CPU build: a small pool, sized by num_gpu_blocks_override


def passkey_prompts(folder: str, count: int, length: int, seed: int = 0):
    """restkv's built-in pass-key prompts as chat-templated ids, with their keys."""
    from transformers import AutoTokenizer

    from restkv.eval.tasks.passkey import passkey_samples

    tokenizer = AutoTokenizer.from_pretrained(folder)

    def encode(text):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    def count_tokens(text):
        return len(tokenizer(encode(text), add_special_tokens=False)["input_ids"])

    samples = passkey_samples(count, length, count_tokens, seed)
    ids = [tokenizer(encode(s.prompt), add_special_tokens=False)["input_ids"] for s in samples]
    return ids, [s.answers[0] for s in samples], tokenizer


def run_vllm(folder, setting, prompts, args) -> dict:
    from vllm import LLM, SamplingParams

    from restkv._compat.vllm import engine_core

    llm = LLM(
        model=folder, dtype=getattr(args, "dtype", "float32"), enforce_eager=getattr(args, "smoke", True),
        enable_prefix_caching=False, block_size=args.block_size,
        max_model_len=args.prompt_tokens + args.new_tokens + args.block_size, max_num_seqs=args.requests,
        num_gpu_blocks_override=args.blocks, max_num_batched_tokens=args.chunk, seed=0,
        additional_config={"restkv": setting},
    )  # fmt: skip
    core, engine = engine_core(llm), llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    start = time.perf_counter()
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": ids}, params)
    peak, preempted, outputs, steps = 0, {}, {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[int(out.request_id)] = list(out.outputs[0].token_ids)
        steps += 1
        running = core.scheduler.running
        peak = max(peak, sum(1 for r in running if r.num_computed_tokens >= r.num_prompt_tokens))
        for r in list(core.scheduler.requests.values()):
            preempted[r.request_id] = max(preempted.get(r.request_id, 0), r.num_preemptions)
    wall = time.perf_counter() - start
    generated = sum(len(t) for t in outputs.values())
    del llm
    return {
        "peak_decoding": peak, "preemptions": sum(preempted.values()), "wall_s": round(wall, 2),
        "tokens_per_s": round(generated / wall, 2), "steps": steps, "outputs": [outputs[i] for i in range(len(prompts))],
    }  # fmt: skip


def press_mode(request_file: str, out_file: str) -> None:
    """restkv's press on transformers, greedy (run with the main environment's Python)."""
    import torch
    from transformers import AutoModelForCausalLM

    from restkv import get_press
    from restkv.generation import greedy_decode

    request = json.loads(Path(request_file).read_text())
    model = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32)
    setting = dict(request["setting"])
    press = get_press(setting.pop("method"), **setting)
    answers = [[int(t) for t in greedy_decode(model, torch.tensor([ids]), press, request["max_tokens"])[0]] for ids in request["prompts"]]
    Path(out_file).write_text(json.dumps(answers))


def accuracy(tokenizer, outputs, keys) -> float:
    return sum(key in tokenizer.decode(out) for out, key in zip(outputs, keys)) / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=210, help="the pool: 210 blocks of 32 hold three 2K requests")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=512, help="max_num_batched_tokens (chunked prefill)")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--press-python", help="the main environment's Python, for restkv's press on transformers")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vllm-capacity"))
    args = parser.parse_args()

    from restkv.models import DEFAULT_MODEL, load_model, restkv_home

    folder = restkv_home() / "models" / DEFAULT_MODEL
    if not (folder / "config.json").is_file():
        load_model(DEFAULT_MODEL)
    folder = str(folder)
    prompts, keys, tokenizer = passkey_prompts(folder, args.requests, args.prompt_tokens)
    evicting = {"method": "restkv", "budget": args.budget}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.out / "rows.jsonl", "a") as log:
        for repeat in range(args.repeats):
            for name, setting in (("full", {"method": "full"}), (f"restkv-{args.budget}", evicting)):
                row = run_vllm(folder, setting, prompts, args)
                row.update(method=name, repeat=repeat, accuracy=accuracy(tokenizer, row.pop("outputs"), keys),
                           requests=args.requests, prompt_tokens=max(map(len, prompts)), blocks=args.blocks,
                           block_size=args.block_size, new_tokens=args.new_tokens, load=os.getloadavg()[0])  # fmt: skip
                print(json.dumps(row), flush=True)
                log.write(json.dumps(row) + "\n")
                rows.append(row)
    if args.press_python:
        request, out = args.out / "press_request.json", args.out / "press_answers.json"
        request.write_text(json.dumps({"model": folder, "prompts": prompts, "setting": evicting, "max_tokens": args.new_tokens}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
        subprocess.run([args.press_python, __file__, "press", str(request), str(out)], check=True, env=env)
        press = accuracy(tokenizer, json.loads(out.read_text()), keys)
        print(json.dumps({"method": f"restkv-{args.budget} press on transformers", "accuracy": press}))
        (args.out / "press_accuracy.json").write_text(json.dumps({"accuracy": press, "n": len(keys)}))
        request.unlink()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "press":
        press_mode(*sys.argv[2:4])
    else:
        main()
