"""``restkv lm-eval``: any lm-evaluation-harness task under a press (pip install 'restkv[lm-eval]')."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..extras import require
from .common import UsageError, add_model_args, check_attention, method_params, name_list, positive_int


def add_parser(subparsers) -> None:
    lm = subparsers.add_parser("lm-eval", help="run lm-evaluation-harness tasks with a compressed cache")
    lm.add_argument("--tasks", type=name_list, required=True, help="lm-eval task names, e.g. bbh_cot_fewshot")
    lm.add_argument("--method", default="restkv", help="eviction method; 'full' keeps everything")
    lm.add_argument("--budget", type=positive_int, default=256, help="KV entries kept per head and layer")
    lm.add_argument("--param", action="append", metavar="NAME=VALUE", help="a method parameter")
    lm.add_argument("--include-path", type=Path, help="a folder of your own lm-eval task YAML files")
    lm.add_argument("--limit", type=positive_int, help="at most this many documents per task")
    lm.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's own)")
    lm.add_argument("--batch-size", type=positive_int, default=1, help="generation batch size")
    lm.add_argument("--out", type=Path, required=True, help="folder for results.json")
    add_model_args(lm)
    lm.add_argument("--model-path", dest="model", help="same as --model (lm-eval's name for it)")
    lm.set_defaults(run=run)


def run(args) -> int:
    require("lm-eval", "restkv lm-eval")
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    from ..eval.harness import PressedLM
    from ..press import get_press

    if args.include_path is not None and not args.include_path.is_dir():
        raise UsageError(f"--include-path {args.include_path} is not a folder")
    params = method_params(args.param)
    budget = None if args.method == "full" else args.budget
    get_press(args.method, budget=budget, **params)  # a bad method or parameter fails before loading
    check_attention(args.attn)
    manager = TaskManager(include_path=str(args.include_path) if args.include_path else None)
    unknown = [t for t in args.tasks if not manager.match_tasks([t])]
    if unknown:
        raise UsageError(f"lm-eval has no task {', '.join(unknown)} (add --include-path for your own)")
    start = time.perf_counter()
    lm = PressedLM(
        args.model, args.method, budget, press_params=params, dtype=args.dtype, attn=args.attn,
        batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(args.tasks), num_fewshot=args.num_fewshot, limit=args.limit, task_manager=manager
    )
    wall = time.perf_counter() - start
    print(make_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(sys.argv),
        "wall_s": round(wall, 1),
        "press": {"method": args.method, **lm.press.params()},
        "results": results["results"],
        "versions": results.get("versions", {}),
        "n-samples": results.get("n-samples", {}),
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"wall time {wall:.0f} s; results in {args.out / 'results.json'}")
    return 0
