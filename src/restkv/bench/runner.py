"""``restkv bench latency`` and ``restkv bench memory``: measurements into the results store."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from ..eval.store import ResultStore
from ..quantized import parse_kv_quant, quantized_label
from ..specs import MethodConfig
from . import latency, memory


def _row(task, length, model_name, config, kv_quant=None, **fields):
    return {
        "task": task,
        "sample_id": f"len-{length}",
        "model": model_name,
        "method": quantized_label(config.label, parse_kv_quant(kv_quant) if kv_quant else None),
        "budget": config.budget,
        "params": {"method": config.method, **config.press().params()},
        "prompt_tokens": length,
        **fields,
    }


def bench_model(shape: str | None, layers: int | None, model: str, device: str, dtype: str, attn: str = "auto"):
    """The model timed in-process: random weights of ``shape`` (few ``layers``), else ``model`` loaded."""
    if shape:
        from .shapes import random_model

        # random weights have no saved dtype to fall back on
        return random_model(shape, layers, "bfloat16" if dtype == "auto" else dtype, device=device)
    from ..models import load_model

    return load_model(model, device=device, dtype=dtype, attn=attn).model


def run_latency(
    model,
    model_name,
    lengths,
    configs: list[MethodConfig],
    store: ResultStore,
    repeats=3,
    decode_tokens=16,
    chunk_size=None,
    prefill=True,
    compile=False,
):
    """Prefill and decode timings for every length and config (finished rows are skipped).

    With ``compile``, decoding is also timed on static buffers through ``torch.compile``, taking
    turns with the eager loop; those rows are labelled ``<method>+compiled`` and carry the first
    step's latency (compilation included), the eager decode and after how many tokens compiling
    pays off.
    """
    task = "bench-latency"
    paths = ("eager", "compiled") if compile else ("eager",)
    labels = ("", "+compiled") if compile else ("",)  # the method suffix of each path's rows
    for length in tqdm(lengths, desc="latency", unit="length"):
        todo = [
            c
            for c in configs
            if not all(store.has(task, f"len-{length}", model_name, c.label + x, c.budget) for x in labels)
        ]
        if not todo:
            continue
        # each config's decode is its own measurement (on a cache of its budget's size), so no
        # number is reported under two methods' names even where two methods keep as many entries
        decode, compiled = {}, {}
        for config in todo:
            timed = latency.measure_decode_paths(model, length, config.budget, decode_tokens, repeats, paths)
            decode[config] = latency.summary(timed["eager"])
            if compile:
                compiled[config] = (latency.summary(timed["compiled"]), timed["compiled_first_s"])
        presses = [
            config.press()
            if chunk_size is None or config.method == "full"
            else MethodConfig.make(config.method, config.budget, chunk_size=chunk_size, **dict(config.params)).press()
            for config in todo
        ]
        prefills = latency.measure_prefills(model, length, presses, repeats) if prefill else [None] * len(todo)
        rows = []
        for config, times in zip(todo, prefills):
            pre = latency.summary(times) if times is not None else None
            dec = decode[config]
            rows.append(
                _row(task, length, model_name, config, prefill_s=pre["median"] if pre else None, decode_ms_per_token=dec["median"],
                     extra={"prefill_min_max": [pre["min"], pre["max"]] if pre else None, "decode_min_max": [dec["min"], dec["max"]],
                            "tokens_per_s": 1000 / dec["median"], "repeats": repeats, "length": length})
            )  # fmt: skip
            if compile:
                com, first_s = compiled[config]
                saved = dec["median"] - com["median"]
                rows.append(
                    _row(task, length, model_name, config, prefill_s=pre["median"] if pre else None,
                         decode_ms_per_token=com["median"], method=f"{config.label}+compiled",
                         extra={"decode_min_max": [com["min"], com["max"]], "tokens_per_s": 1000 / com["median"],
                                "first_step_s": first_s, "eager_decode_ms_per_token": dec["median"],
                                "pays_off_after_tokens": 1000 * first_s / saved if saved > 0 else None,
                                "repeats": repeats, "length": length})
                )  # fmt: skip
        store.add([r for r in rows if not store.has(task, r["sample_id"], model_name, r["method"], r["budget"])])


def run_memory(spec_base: dict, model_name, lengths, configs: list[MethodConfig], store: ResultStore, chunk_size=None):
    """Peak memory per length and config, each in a fresh process; with ``spec_base["kv_quant"]``
    (e.g. ``"hqq:4"``) the caches are quantized and rows are labelled ``<method>+hqq4``."""
    task = "bench-memory"
    kv_quant = spec_base.get("kv_quant")
    for length in lengths:
        for config in tqdm(configs, desc=f"memory {length}", unit="config"):
            label = _row(task, length, model_name, config, kv_quant)["method"]
            if store.has(task, f"len-{length}", model_name, label, config.budget):
                continue
            spec = {
                **spec_base,
                "method": config.method,
                "budget": config.budget,
                "params": dict(config.params),
                "length": length,
                "chunk_size": None if config.method == "full" else chunk_size,
            }
            start = time.perf_counter()
            result = memory.measure(spec)
            store.add(
                [_row(task, length, model_name, config, kv_quant, prefill_s=result["prefill_s"], kv_bytes=result["kv_bytes"],
                      extra={**result, "prefill_delta_mib": result["prefill_peak_mib"] - result["baseline_mib"],
                             "decode_delta_mib": result["decode_peak_mib"] - result["baseline_mib"],
                             "wall_s": time.perf_counter() - start, "length": length, "chunk_size": spec["chunk_size"]})]
            )  # fmt: skip
