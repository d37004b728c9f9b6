"""``restkv serve``: an OpenAI-compatible server whose requests keep compressed, paged caches."""

from __future__ import annotations

import sys

from ..extras import require
from .common import UsageError, add_model_args, load_from_args, method_params, positive_int


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible API (transformers' continuous batching), evicting after prefill",
        description="Serve the model with transformers' own server and continuous batching. After each request's "
        "prefill its paged cache is compressed with the method and the freed blocks go back to the pool. "
        'A request may name its own press: extra body field "restkv": {"method": "snapkv", "budget": 256}.',
    )
    serve.add_argument("--method", default="restkv", help="eviction method (see 'restkv methods'); 'full' keeps everything")
    serve.add_argument("--budget", type=positive_int, default=1024, help="KV entries kept per head and layer (default 1024)")
    serve.add_argument(
        "--param", action="append", metavar="NAME=VALUE",
        help="a method or press parameter, e.g. --param window_size=16 or --param block_size=16 (block-aligned)",
    )  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)")
    serve.add_argument("--page-size", type=positive_int, default=16, help="tokens per cache block (default 16)")
    serve.add_argument(
        "--num-blocks", type=positive_int, help="cache blocks in the pool (default: what free memory allows)"
    )
    serve.add_argument(
        "--max-batch-tokens", type=positive_int, default=4096, help="tokens per forward pass at most (default 4096)"
    )
    serve.add_argument("--name", help="the model name clients send (default: the model's)")
    add_model_args(serve)
    serve.set_defaults(run=run)


def run(args) -> int:
    from ..press import get_press

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    require("serve", "restkv serve")
    params = method_params(args.param)
    # built before the model is loaded, so a bad method or parameter fails fast
    press = get_press(args.method, budget=None if args.method == "full" else args.budget, **params)
    from ..serve.paged import check_servable

    check_servable(press, None)  # what can be checked without the model
    loaded = load_from_args(args)
    from ..serve.server import ServedModel

    served = ServedModel(
        loaded, press, name=args.name, page_size=args.page_size, num_blocks=args.num_blocks,
        max_batch_tokens=args.max_batch_tokens,
    )  # fmt: skip
    print(
        f"restkv serve: {served.name} under {press.name}"
        f"{'' if press.scorer is None else f' (budget {press.budget})'} on http://{args.host}:{args.port}/v1 "
        f"(pages of {args.page_size} tokens)",
        file=sys.stderr,
        flush=True,
    )
    served.run(host=args.host, port=args.port)
    return 0
