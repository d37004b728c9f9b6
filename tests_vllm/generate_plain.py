"""vLLM's own greedy tokens for the prompts in a JSON file, with no plugin loaded (a script the
engine tests run in a subprocess, so the plugin's wrappers never touch this engine)."""

import json
import sys


def main(model: str, prompts_file: str, out_file: str) -> None:
    from engine_settings import ENGINE, SAMPLING
    from vllm import LLM, SamplingParams

    prompts = json.load(open(prompts_file))
    llm = LLM(model=model, **ENGINE)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(**SAMPLING), use_tqdm=False)
    json.dump([list(o.outputs[0].token_ids) for o in outs], open(out_file, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
