"""``restkv serve``: an OpenAI-compatible server whose requests keep compressed, paged caches."""

from __future__ import annotations

import os
import sys

from ..extras import require
from .common import UsageError, add_model_args, load_from_args, method_params, positive_int

#: the environment variable ``--api-key`` defaults to (a key on the command line shows in ``ps``)
API_KEY_VARIABLE = "RESTKV_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
    serve.add_argument(
        "--api-key", default=os.environ.get(API_KEY_VARIABLE),
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $RESTKV_API_KEY; "
        "none: any client that reaches the port is served)",
    )  # fmt: skip
    serve.add_argument(
        "--allow-beyond-context", action="store_true",
        help="serve prompts longer than the model's trained context (refused with 413 otherwise)",
    )  # fmt: skip
    add_model_args(serve)
    serve.set_defaults(run=run)


def run(args) -> int:
    from ..press import get_press

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise UsageError("--api-key is empty; give a key or leave the option out")
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
        max_batch_tokens=args.max_batch_tokens, api_key=args.api_key,
        allow_beyond_context=args.allow_beyond_context,
    )  # fmt: skip
    if args.host not in LOOPBACK and args.api_key is None:
        print(
            f"restkv serve: listening on {args.host} without --api-key: anyone who can reach the port can use "
            "the model", file=sys.stderr,
        )  # fmt: skip
    print(
        f"restkv serve: {served.name} under {press.name}"
        f"{'' if press.scorer is None else f' (budget {press.budget})'} on http://{args.host}:{args.port}/v1 "
        f"(pages of {args.page_size} tokens)",
        file=sys.stderr,
        flush=True,
    )
    served.run(host=args.host, port=args.port)
    if served.worker_alive():  # a worker stuck in a forward pass: do not let it hold the process
        from .._compat.transformers_serving import exit_without_worker

        print("restkv serve: the batching worker did not stop in time; exiting without it", file=sys.stderr)
        sys.stderr.flush()
        exit_without_worker(0)
    return 0
