"""kvpress's leaderboard protocol as one resumable run: RULER at 4K tokens, four compression
ratios, every method compressing the context before its question (query-agnostic), and the
window methods once more with the question in the prompt (query-aware), each mode in its own
results store.

Prompts are run round-robin over the tasks (the first prompt of every task, then the second,
...), so a run stopped at any point holds about as many prompts of each task and its partial
table weighs tasks evenly. A prompt whose rows are all in the store is skipped, so a killed run
continues where it stopped. The time left is estimated before the run from this store's own
earlier runs (seconds per prompt and configuration), and after its first prompt otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..forecast import duration
from ..options import refusal
from ..specs import MethodConfig, parse_method_spec
from .runner import run_sweep, setting_of
from .store import ResultStore

#: the share of each prompt's entries removed, as on kvpress's leaderboard
RATIOS = (0.25, 0.5, 0.75, 0.875)
#: RULER's prompt length on kvpress's leaderboard
LENGTH = 4096
#: prompts generated per task whatever ``samples`` asks for, so that a later, longer run gets
#: the same first prompts (RULER's generators draw their prompts from a seeded sequence)
POOL = 10
#: the methods run query-agnostic by default: restkv as the paper sets it, its preset, its
#: reconstruction probe with the paper's other settings, and the baselines
AGNOSTIC_METHODS = (
    "full",
    "restkv",
    "restkv[preset=agnostic]",
    "restkv[probe=reconstruct]",
    "expected_attention",
    "keydiff",
    "lagkv",
    "snapkv",
    "tova",
    "streamingllm",
    "knorm",
)
#: methods the protocol names but cannot run yet, and why (one sentence each)
NOT_RUNNABLE = {
    "kvzip": "kvzip's reconstruction passes (restkv.reconstruct) have no path through the evaluation "
    "engine yet, so the leaderboard cannot run it",
}
#: the two modes and their store folders under the run's folder
MODES = {"query-agnostic": True, "query-aware": False}


def configs_for(methods: list[str], ratios=RATIOS, agnostic: bool = True) -> list[MethodConfig]:
    """One config per method and ratio (``full`` once); one sentence for a method the protocol
    cannot run, or, query-agnostic, one that needs the question to compress."""
    configs = []
    for spec in methods:
        name, params = parse_method_spec(spec)
        if name in NOT_RUNNABLE:
            raise ValueError(NOT_RUNNABLE[name])
        points = [{}] if name == "full" else [{"compression_ratio": r} for r in ratios]
        for point in points:
            config = MethodConfig.make(name, None, **params, **point)
            press = config.press()  # a bad method or parameter fails here, before any model loads
            sentence = refusal("query-agnostic", press) if agnostic else None
            if sentence is not None:
                raise ValueError(f"{spec} cannot run query-agnostic: {sentence}")
            configs.append(config)
    return list(dict.fromkeys(configs))


def window_methods(methods: list[str]) -> list[str]:
    """The methods of ``methods`` whose scores read the prompt's last queries (and no probe),
    with ``full``: the ones whose results change when the question is in the prompt."""
    out = []
    for spec in methods:
        name, params = parse_method_spec(spec)
        if name == "full":
            out.append(spec)
            continue
        if name in NOT_RUNNABLE:
            continue
        press = MethodConfig.make(name, None, **params, compression_ratio=0.5).press()
        if press.probe is None and press.scorer.query_span == "window":
            out.append(spec)
    return out


def round_robin(groups) -> list[tuple]:
    """``(group, sample)`` pairs: every task's first sample, then every task's second, ..."""
    longest = max((len(g.samples) for g in groups), default=0)
    return [(g, g.samples[i]) for i in range(longest) for g in groups if i < len(g.samples)]


def pending(loaded, pairs, configs, store: ResultStore, agnostic: bool) -> list[tuple]:
    """The pairs of :func:`round_robin` with at least one config not yet in ``store``."""
    left = []
    for group, sample in pairs:
        for config in configs:
            params = {"method": config.method, **config.press().params()}
            setting = setting_of(loaded, sample, params, agnostic)
            if not store.has(group.name, sample.id, loaded.name, config.label, config.budget, setting):
                left.append((group, sample))
                break
    return left


def seconds_per_prompt_config(log: Path) -> float | None:
    """Seconds per prompt and configuration over this store's earlier runs (None without any)."""
    if not log.is_file():
        return None
    wall = work = 0.0
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("prompts_run"):
            wall += entry["wall_s"]
            work += entry["prompts_run"] * entry["configs"]
    return wall / work if work else None


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_mode(
    loaded, groups, configs: list[MethodConfig], folder: Path, agnostic: bool, batch="auto", progress=True,
    command: str = "", time_limit: float | None = None,
) -> dict:  # fmt: skip
    """Run every pending prompt of ``groups`` under ``configs`` into ``folder/results.sqlite``,
    round-robin over the tasks, and log the run to ``folder/runs.jsonl``. Returns the run's record.

    ``time_limit``: seconds after which no new prompt is started (the one running finishes), so a
    run fits a lent machine's window and stops with whole prompts in the store."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "runs.jsonl"
    started, load_start = time.perf_counter(), load_average()
    mode = "query-agnostic" if agnostic else "query-aware"
    record = {"command": command, "mode": mode, "configs": len(configs), "prompts_run": 0, "load_start": load_start}
    with ResultStore(folder / "results.sqlite", writer=True) as store:
        todo = pending(loaded, round_robin(groups), configs, store, agnostic)
        rate = seconds_per_prompt_config(log)
        estimate = f"about {duration(rate * len(configs) * len(todo))}" if rate else "known after the first prompt"
        print(f"restkv: {mode}: {len(todo)} prompts x {len(configs)} configurations left; {estimate}", file=sys.stderr)
        bar = tqdm(total=len(todo), desc=mode, unit="prompt", disable=not progress)
        try:
            for i, (group, sample) in enumerate(todo):
                start = time.perf_counter()
                if time_limit is not None and start - started >= time_limit:
                    record["stopped"] = "time limit"
                    print(f"restkv: {mode}: time limit reached, {len(todo) - i} prompts left", file=sys.stderr)
                    break
                run_sweep(
                    loaded, group.name, [sample], configs, store, group.score, progress=False, batch=batch,
                    mode="generate", query_agnostic=agnostic,
                )  # fmt: skip
                record["prompts_run"] += 1
                bar.update(1)
                if i == 0 and rate is None and len(todo) > 1:
                    left = (time.perf_counter() - start) * (len(todo) - 1)
                    print(f"restkv: {mode}: about {duration(left)} left", file=sys.stderr)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI turns it into one): the log says so
            record["stopped"] = "interrupted"
            raise
        finally:
            bar.close()
            record.update(wall_s=round(time.perf_counter() - started, 1), load_end=load_average())
            record["prompts_left"] = len(todo) - record["prompts_run"]
            if record["prompts_run"]:
                with open(log, "a") as out:
                    out.write(json.dumps(record) + "\n")
    return record


#: said above a table where some task has one prompt: resampling within it has nothing to draw
SINGLE_PROMPT = (
    "**Some task has a single prompt here: the bootstrap resamples nothing within it, so the intervals "
    "and paired differences below understate the uncertainty (they collapse towards points). Read no "
    "difference in this table as significant.**"
)


def render(out: Path, title: str = "", seed: int = 0) -> Path:
    """``out/leaderboard.md``: per mode, the table of :func:`restkv.eval.leaderboard.leaderboard_markdown`
    and its plot (``out/<mode>.png``), from whatever the stores hold so far."""
    from .leaderboard import leaderboard_markdown, plot_leaderboard
    from .report import NO_PLOTS

    parts = [f"# Leaderboard{': ' + title if title else ''}", ""]
    parts += [
        "Scores x100, the mean over tasks (each task weighs the same) with a stratified bootstrap 95% interval;",
        "n is the number of prompts behind a cell. Paired differences are taken on the prompts both methods ran;",
        "`tie` marks an interval that contains 0.",
        "",
    ]
    found = False
    for mode in MODES:
        path = out / mode / "results.sqlite"
        if not path.is_file():
            continue
        with ResultStore(path) as store:
            rows = [r for r in store.rows() if r.get("score") is not None]
        if not rows:
            continue
        found = True
        per_task: dict[str, set] = {}
        for row in rows:
            per_task.setdefault(row["task"], set()).add(row["sample_id"])
        counts = sorted(len(v) for v in per_task.values())
        plot = plot_leaderboard(rows, out / f"{mode}.png", f"{title} ({mode})", seed=seed)
        parts += [
            f"## {mode}",
            "",
            f"{len(per_task)} tasks, {counts[0]}-{counts[-1]} prompts per task.",
            "",
            *([SINGLE_PROMPT, ""] if counts[0] < 2 else []),
            leaderboard_markdown(rows, seed=seed),
            f"![{mode}]({plot.name})" if plot else NO_PLOTS,
            "",
        ]
    if not found:
        raise ValueError(f"{out} holds no scored leaderboard rows yet")
    target = out / "leaderboard.md"
    target.write_text("\n".join(parts))
    return target
