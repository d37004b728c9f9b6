"""What several commands share: argument types, the model arguments, method parameters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


class UsageError(ValueError):
    """Bad input from the command line."""


def batch_size(text: str) -> int | str:
    """``auto`` or a positive number of rows."""
    return "auto" if text == "auto" else positive_int(text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _items(text: str) -> list[str]:
    """The comma-separated items of ``text``; at least one (``--budgets ,`` would run nothing)."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of at least one item, got {text!r}")
    return items


def int_list(text: str) -> list[int]:
    return [positive_int(part) for part in _items(text)]


def ratio_list(text: str) -> list[float]:
    """``0.5,0.75``: compression ratios, each in (0, 1)."""
    out = []
    for part in _items(text):
        try:
            value = float(part)
        except ValueError:
            value = None
        if value is None or not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"a compression ratio is a number between 0 and 1, got {part!r}")
        out.append(value)
    return out


def name_list(text: str) -> list[str]:
    return _items(text)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    from ..models import ATTENTION, DEFAULT_MODEL, DTYPES

    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"embedded model name, local folder or hub id (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help="model dtype (default: as saved)")
    parser.add_argument(
        "--attn",
        default="auto",
        choices=list(ATTENTION),
        help="attention implementation (default auto: sdpa, or eager where the architecture needs it, e.g. Gemma 2)",
    )


def add_placement_args(parser: argparse.ArgumentParser) -> None:
    """``--device-map``, ``--max-memory`` and ``--offload-folder``: a model placed by accelerate."""
    parser.add_argument(
        "--device-map",
        help="place the model with accelerate: auto, balanced, sequential, or a JSON file mapping module names "
        "to devices (0, 1, cpu, disk)",
    )
    parser.add_argument("--max-memory", help="with --device-map: per-device limits, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    parser.add_argument("--offload-folder", type=Path, help="with --device-map: where layers offloaded to disk go")


def device_map_of(text: str | None):
    """``--device-map`` as accelerate takes it: a strategy name, or the dict in a JSON file."""
    if text is None or text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--device-map takes auto, balanced, sequential or a JSON file; {text} is none of them")
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"--device-map file {path} is not valid JSON ({err.msg})") from None
    if not isinstance(mapping, dict):
        raise UsageError(f"--device-map file {path} must hold an object from module names to devices")
    return mapping


def max_memory_of(text: str | None) -> dict | None:
    """``0=20GiB,cpu=60GiB`` as ``{0: "20GiB", "cpu": "60GiB"}``."""
    if text is None:
        return None
    limits = {}
    for pair in name_list(text):
        device, sep, size = pair.partition("=")
        if not sep or not size:
            raise UsageError(f"--max-memory takes DEVICE=SIZE pairs such as 0=20GiB,cpu=60GiB; got {pair!r}")
        limits[int(device) if device.isdigit() else device] = size
    return limits


def check_attention(attn: str) -> None:
    """One sentence, before any model is loaded, for an implementation no press can run on."""
    from ..adapters import SUPPORTED_ATTENTION

    if attn != "auto" and attn not in SUPPORTED_ATTENTION:
        raise UsageError(
            f"--attn {attn} cannot run under a press: compressed caches need additive attention masks, which "
            f"{attn} does not take; use {' or '.join(SUPPORTED_ATTENTION)}"
        )


def load_from_args(args):
    """The model named by ``--model/--device/--dtype/--attn``."""
    from ..models import load_model

    check_attention(args.attn)
    placement = getattr(args, "device_map", None)
    if placement is None and (getattr(args, "max_memory", None) or getattr(args, "offload_folder", None)):
        raise UsageError("--max-memory and --offload-folder go with --device-map")
    return load_model(
        args.model, device=args.device, dtype=args.dtype, attn=args.attn, device_map=device_map_of(placement),
        max_memory=max_memory_of(getattr(args, "max_memory", None)),
        offload_folder=str(args.offload_folder) if getattr(args, "offload_folder", None) else None,
    )  # fmt: skip


def method_params(pairs: list[str] | None) -> dict:
    """``--param NAME=VALUE`` pairs as a parameter dict."""
    from ..specs import parse_value  # imports the presses (torch): only when a command runs

    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--param takes NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        params[name.strip()] = parse_value(value.strip())
    return params


def method_configs(methods: list[str], budgets: list[int], pairs: list[str] | None, ratios=()) -> list:
    """Every (method, budget) of ``--methods`` x ``--budgets``, with ``--param METHOD.NAME=VALUE``.

    ``ratios`` (``--ratios``) add one config per compression ratio (the share of the prompt's
    entries removed), kvpress's leaderboard protocol; their labels carry the ratio.

    Each config builds its press once here, so a bad method, budget or parameter is reported
    before any model is loaded. Duplicates are dropped, first one kept.
    """
    from ..specs import MethodConfig, parse_method_spec, parse_value

    params: dict[str, dict] = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        method, dot, key = name.partition(".")
        if not dot or not value:
            raise UsageError(f"--param takes METHOD.NAME=VALUE, got {pair!r}")
        params.setdefault(method.strip(), {})[key.strip()] = parse_value(value.strip())
    unknown = set(params) - {parse_method_spec(m)[0] for m in methods}
    if unknown:
        raise UsageError(f"--param names {', '.join(sorted(unknown))}, which is not in --methods")
    configs = []
    for spec in methods:
        method, inline = parse_method_spec(spec)
        own = {**params.get(method, {}), **inline}
        points = [(None, {})] if method == "full" else [(b, {}) for b in budgets]
        points += [] if method == "full" else [(None, {"compression_ratio": r}) for r in ratios]
        for budget, ratio in points:
            config = MethodConfig.make(method, budget, **own, **ratio)
            config.press()  # validates the method, budget and parameters
            configs.append(config)
    return list(dict.fromkeys(configs))
