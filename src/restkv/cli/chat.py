"""``restkv chat``: compress a document once, then answer questions on it (typed, or from a file)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import UsageError, add_model_args, add_placement_args, load_from_args, method_params, positive_int


def add_parser(subparsers) -> None:
    chat = subparsers.add_parser(
        "chat", help="compress a document once, then answer many questions on it without re-reading it"
    )
    source = chat.add_mutually_exclusive_group(required=True)
    source.add_argument("--context-file", type=Path, help="the document to compress")
    source.add_argument("--load", type=Path, metavar="FILE", help="a context saved with --save (same model and dtype)")
    chat.add_argument(
        "--questions", type=Path, help="answer each non-empty line of this file (default: read questions from stdin)"
    )
    chat.add_argument("--save", type=Path, metavar="FILE", help="save the compressed context for a later --load")
    chat.add_argument("--method", help="eviction method (default restkv; see 'restkv methods'); 'full' keeps all")
    chat.add_argument("--budget", type=positive_int, help="KV entries kept per head and layer (default 128)")
    chat.add_argument("--param", action="append", metavar="NAME=VALUE", help="a method parameter")
    chat.add_argument("--max-new-tokens", type=positive_int, default=64)
    chat.add_argument("--no-chat", action="store_true", help="do not wrap the text in the chat template")
    add_model_args(chat)
    add_placement_args(chat)
    chat.set_defaults(run=run)


def build_press(args):
    """The press from --method/--budget/--param (refused with --load, which brings its own)."""
    from ..press import get_press

    if args.load is not None:
        if args.method or args.budget or args.param:
            raise UsageError("--load brings the method it was compressed with; drop --method, --budget and --param")
        return None
    method = args.method or "restkv"
    return get_press(method, budget=None if method == "full" else args.budget or 128, **method_params(args.param))


def read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text") from None


def questions(args):
    """The questions: the lines of --questions, or stdin's lines as they are typed."""
    if args.questions is not None:
        lines = [line.strip() for line in read_text(args.questions, "questions file").splitlines()]
        if not any(lines):
            raise UsageError(f"questions file {args.questions} has no questions")
        yield from (line for line in lines if line)
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def run(args) -> int:
    from ..context import compress_context, load_context

    press = build_press(args)  # before the model loads, so a bad method fails fast
    context = read_text(args.context_file, "context file") if args.context_file is not None else None
    loaded = load_from_args(args)
    if context is not None:
        progress = press.chunk_size is not None
        ctx = compress_context(
            loaded.model, loaded.tokenizer, context, press, chat=loaded.chat and not args.no_chat, progress=progress
        )
        print(
            f"[{ctx.press.name}] context {ctx.context_tokens} tokens compressed in {ctx.prefill_s:.2f} s; "
            f"KV entries kept {ctx.kept_entries}",
            file=sys.stderr,
        )
    else:
        ctx = load_context(args.load, loaded.model, loaded.tokenizer)
        print(f"[{ctx.press.name}] loaded a {ctx.context_tokens}-token context from {args.load}", file=sys.stderr)
    if args.save is not None:
        ctx.save(args.save)
        print(f"saved the compressed context to {args.save}", file=sys.stderr)
    batch = args.questions is not None
    for question in questions(args):
        start = time.perf_counter()
        answer = ctx.ask(question, args.max_new_tokens).strip()
        print(f"Q: {question}\nA: {answer}\n" if batch else answer, flush=True)
        print(f"[{time.perf_counter() - start:.2f} s]", file=sys.stderr)
    return 0
