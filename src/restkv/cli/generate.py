"""``restkv generate``: answer one prompt with a compressed cache and print what it cost."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import UsageError, add_model_args, add_placement_args, load_from_args, method_params, positive_int


def add_parser(subparsers) -> None:
    gen = subparsers.add_parser("generate", help="answer a prompt with a compressed cache and print what it cost")
    gen.add_argument("prompt", nargs="?", help="the question (appended after --prompt-file's text when both are given)")
    gen.add_argument("--prompt-file", type=Path, help="read the prompt (or its context) from this file")
    gen.add_argument(
        "--method", default="restkv", help="eviction method (see 'restkv methods'); 'full' keeps everything"
    )
    gen.add_argument(
        "--budget", type=positive_int, default=128, help="KV entries kept per head and layer (default 128)"
    )
    gen.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a method parameter, e.g. --param window_size=16"
    )
    gen.add_argument("--profile", type=Path, help="ReST-KV parameters tuned by 'restkv tune'")
    gen.add_argument("--max-new-tokens", type=positive_int, default=64)
    gen.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    add_model_args(gen)
    add_placement_args(gen)
    gen.set_defaults(run=run)


def read_prompt(args) -> str:
    """``--prompt-file``'s text followed by the positional prompt."""
    if args.prompt is None and args.prompt_file is None:
        raise UsageError("give a prompt, or --prompt-file with the text")
    text = ""
    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            raise UsageError(f"prompt file {args.prompt_file} does not exist")
        text = args.prompt_file.read_text()
    prompt = "\n\n".join(part for part in (text, args.prompt) if part)
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return prompt


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: prompts longer than this (in tokens) get a time estimate before their prefill starts
LONG_PROMPT = 8192


def announce_long_prompt(loaded, prompt: str, chat: bool, max_new_tokens: int) -> None:
    """Say how long a long prompt's prefill and answer will take here, before they start."""
    from ..forecast import announce, measure
    from ..generation import encode_prompt

    tokens = encode_prompt(loaded.tokenizer, prompt, chat=chat).shape[1]
    if tokens > LONG_PROMPT:
        rates = measure(loaded.model, tokens)
        what = f"generate: a {tokens}-token prompt, up to {max_new_tokens} new tokens"
        announce(what, rates.prefill(tokens) + max_new_tokens * rates.step_s, rates)


def run(args) -> int:
    from ..generation import generate_with_stats
    from ..press import get_press

    prompt = read_prompt(args)
    params = method_params(args.param)
    if args.profile is not None:
        params["profile"] = str(args.profile)
    # built before the model is loaded, so a bad method or parameter fails fast
    press = get_press(args.method, budget=None if args.method == "full" else args.budget, **params)
    loaded = load_from_args(args)
    chat = loaded.chat and not args.no_chat
    announce_long_prompt(loaded, prompt, chat, args.max_new_tokens)
    result = generate_with_stats(
        loaded.model,
        loaded.tokenizer,
        prompt,
        press,
        args.max_new_tokens,
        chat=chat,
        progress=press.chunk_size is not None,
    )
    print(result.text.strip())
    print(
        f"\n[{press.name}] prompt {result.prompt_tokens} tokens | KV entries kept {result.kept_entries} of "
        f"{result.full_entries} ({100 * result.kept_entries / max(result.full_entries, 1):.0f}%) | "
        f"prefill {result.prefill_s:.2f} s | decode {result.decode_ms_per_token:.1f} ms/token | "
        f"peak memory {peak_rss_mib():,.0f} MiB",
        file=sys.stderr,
    )
    return 0
