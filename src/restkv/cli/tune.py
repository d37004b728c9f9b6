"""``restkv tune``: search ReST-KV's knobs for a model and write a JSON profile."""

from __future__ import annotations

from pathlib import Path

from .common import UsageError, add_model_args, add_placement_args, batch_size, load_from_args, positive_int


def add_parser(subparsers) -> None:
    tn = subparsers.add_parser("tune", help="search ReST-KV's knobs for a model; writes a JSON profile")
    tn.add_argument("--budget", type=positive_int, default=128)
    tn.add_argument(
        "--calibration",
        type=Path,
        help='JSONL of {"prompt": ..., "answers": [...]} (default: built-in pass-key and needle prompts)',
    )
    tn.add_argument("--samples", type=positive_int, default=8, help="built-in calibration prompts")
    tn.add_argument("--length", type=positive_int, default=470)
    tn.add_argument("--batch", type=batch_size, default="auto", help="candidates decoded together (see eval --batch)")
    tn.add_argument("--out", type=Path, required=True, help="the profile to write (JSON)")
    add_model_args(tn)
    add_placement_args(tn)
    tn.set_defaults(run=run)


def run(args) -> int:
    from ..profiles import save_profile
    from ..tune import builtin_calibration, calibration_samples, tune

    if args.calibration is not None and not args.calibration.is_file():
        raise UsageError(f"calibration file {args.calibration} does not exist")
    if args.budget <= 8:
        raise UsageError(f"--budget ({args.budget}) must be larger than the smallest window tried (8)")
    loaded = load_from_args(args)
    if args.calibration is not None:
        samples = calibration_samples(args.calibration)
    else:
        samples = builtin_calibration(loaded, args.samples, args.length)
    profile = tune(loaded, samples, args.budget, batch=args.batch)
    save_profile(profile, args.out)
    paper, chosen = profile["paper_defaults"], profile["chosen"]
    print(f"chosen: {profile['params']}")
    print(
        f"  accuracy {chosen['accuracy']}, KL {chosen['kl']:.4f}  "
        f"(paper defaults: accuracy {paper['accuracy']}, KL {paper['kl']:.4f})"
    )
    print(
        f"{profile['candidates_evaluated']} settings on {profile['samples']} prompts "
        f"in {profile['search_s']:.0f} s; profile: {args.out}"
    )
    return 0
