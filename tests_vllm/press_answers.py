"""restkv's press on transformers, greedy, for prompts given as token ids (a script the vLLM tests run
with the main environment's Python: vLLM's environment pins an older transformers).

Input JSON: {"model": folder, "prompts": [[ids]], "settings": [{"method": ..., params} or null],
"max_tokens": n}; output JSON: the generated token ids per prompt (no stop token, as ignore_eos).
"""

import json
import sys

import torch


def main(request_file: str, out_file: str) -> None:
    from transformers import AutoModelForCausalLM

    from restkv import get_press
    from restkv.generation import greedy_decode

    request = json.load(open(request_file))
    model = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32)
    answers = []
    for ids, setting in zip(request["prompts"], request["settings"]):
        setting = dict(setting or {"method": "full"})
        method = setting.pop("method")
        press = None if method == "full" else get_press(method, **setting)
        tokens = greedy_decode(model, torch.tensor([ids]), press, request["max_tokens"])[0]
        answers.append([int(t) for t in tokens])
    json.dump(answers, open(out_file, "w"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])
