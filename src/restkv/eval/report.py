"""Reports rendered from the results store: Markdown tables and PNG plots."""

from __future__ import annotations

import math
import re
import sys
from collections import defaultdict
from pathlib import Path

from ..extras import available, install_hint
from .store import ResultStore

FULL = "full"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


RATIO = re.compile(r"(?:(?<=\()|,)compression_ratio=([0-9.]+)")


def method_order(method: str, budget, ratio=None) -> tuple:
    """Report order: the full cache first, then methods by name, budget and compression ratio."""
    return (method != FULL, method, budget or 0, ratio or 0)


def split_ratio(label: str) -> tuple[str, float | None]:
    """``snapkv(compression_ratio=0.5)`` -> ``("snapkv", 0.5)``: a ratio config's method and ratio."""
    match = RATIO.search(label)
    if match is None:
        return label, None
    rest = label[: match.start()] + label[match.end() :]
    return rest.replace("(,", "(").replace("()", ""), float(match.group(1))


def point(a: dict):
    """A config's column in the tables: ``("budget", 128)``, ``("ratio", 0.5)``, or None for the full cache."""
    if a.get("ratio") is not None:
        return ("ratio", a["ratio"])
    return None if a["budget"] is None else ("budget", a["budget"])


def point_label(key) -> str:
    return "all" if key is None else f"{key[0]} {key[1]:g}"


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean of each measure per (task, model, method, budget); ``n`` is the sample count.

    A config run by compression ratio (``--ratios``) gets its method without the ratio and a
    ``ratio`` field, so tables put ratios in columns beside budgets.
    """
    groups = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["model"], row["method"], row["budget"])].append(row)
    agree = agreement(rows)
    out = []
    for (task, model, label, budget), items in groups.items():
        method, ratio = split_ratio(label)
        out.append(
            {
                "task": task,
                "model": model,
                "method": method,
                "budget": budget,
                "ratio": ratio,
                "n": len(items),
                "score": 100 * _mean([r["score"] for r in items]) if items[0]["score"] is not None else None,
                "kl": _mean([r["kl"] for r in items]),
                "top1": _mean([r["top1"] for r in items]),
                "agreement": _mean([agree.get(id(r)) for r in items]),
                "prompt_tokens": _mean([r["prompt_tokens"] for r in items]),
                "kept_entries": _mean([r["kept_entries"] for r in items]),
                "kv_mib": _mean([r["kv_bytes"] / 2**20 for r in items if r["kv_bytes"] is not None]),
                "prefill_s": _mean([r["prefill_s"] for r in items]),
                "compress_s": _mean([r["compress_s"] for r in items]),
                "decode_ms_per_token": _mean([r["decode_ms_per_token"] for r in items]),
            }
        )
    return sorted(out, key=lambda a: (a["task"], *method_order(a["method"], a["budget"], a["ratio"])))


def answer_of(task: str, prediction: str) -> str:
    """What two predictions must share to agree: BBH's extracted answer, or the stripped text."""
    if task.startswith(("bbh/", "bbh-haystack/")):
        from .tasks.bbh import extract_answer

        return extract_answer(prediction)
    return prediction.strip()


def agreement(rows: list[dict]) -> dict[int, float]:
    """``id(row)`` -> 1.0 if the row's answer is the full cache's answer to the same sample, else 0.0."""
    full = {(r["task"], r["model"], r["sample_id"]): r for r in rows if r["method"] == FULL}
    out = {}
    for r in rows:
        reference = full.get((r["task"], r["model"], r["sample_id"]))
        if reference is not None and r.get("prediction") is not None and reference.get("prediction") is not None:
            out[id(r)] = float(answer_of(r["task"], r["prediction"]) == answer_of(r["task"], reference["prediction"]))
    return out


def file_stem(task: str) -> str:
    """A task name as a plain file name (``ruler/niah_single_1`` -> ``ruler_niah_single_1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_")


def family_means(agg: list[dict]) -> list[dict]:
    """For task families with several tasks (``ruler/...``), the mean over tasks per method and budget."""
    out = []
    families = sorted({a["task"].split("/")[0] for a in agg if "/" in a["task"]})
    for family in families:
        members = [a for a in agg if a["task"].startswith(family + "/")]
        tasks = {a["task"] for a in members}
        if len(tasks) < 2:
            continue

        def config(a: dict) -> tuple:
            return a["model"], a["method"], a["budget"], a.get("ratio")

        for key in sorted({config(a) for a in members}, key=lambda k: method_order(*k[1:])):
            model, method, budget, ratio = key
            same = [a for a in members if config(a) == key]
            if len(same) != len(tasks):
                continue  # a method missing on some task would bias the mean
            mean = {
                k: _mean([a.get(k) for a in same])
                for k in (
                    "score",
                    "kl",
                    "top1",
                    "agreement",
                    "prompt_tokens",
                    "kept_entries",
                    "kv_mib",
                    "prefill_s",
                    "compress_s",
                    "decode_ms_per_token",
                )
            }
            out.append(
                {
                    "task": f"{family} (mean of {len(tasks)} tasks)",
                    "model": model,
                    "method": method,
                    "budget": budget,
                    "ratio": ratio,
                    "n": sum(a["n"] for a in same),
                    **mean,
                }
            )
    return out


def format_cell(value, digits: int = 1) -> str:
    """A report's table cell: ``"-"`` for a missing value (None or NaN), a float to ``digits``
    decimals, anything else as ``str`` would write it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_fmt = format_cell  # the short name the tables below are written with


def score_table(
    agg: list[dict], task: str, measure: str = "score", higher_is_better: bool = True, digits: int = 1
) -> str:
    """Methods x budgets (and compression ratios) for one task; the full cache on top; the best per column in bold."""
    items = [a for a in agg if a["task"] == task]
    budgets = sorted({point(a) for a in items if point(a) is not None})
    methods = sorted({a["method"] for a in items}, key=lambda m: (m != FULL, m))
    cell = {(a["method"], point(a)): a[measure] for a in items}
    best = {}
    for b in budgets:
        values = [cell[(m, b)] for m in methods if m != FULL and cell.get((m, b)) is not None]
        if values:
            best[b] = max(values) if higher_is_better else min(values)
    lines = ["| method | " + " | ".join(point_label(b) for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for m in methods:
        if m == FULL:
            value = _fmt(cell.get((FULL, None)), digits)
            lines.append(f"| {FULL} (no eviction) | " + " | ".join(value for _ in budgets) + " |")
            continue
        cells = []
        for b in budgets:
            v = cell.get((m, b))
            text = _fmt(v, digits)
            cells.append(f"**{text}**" if v is not None and v == best.get(b) else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(agg: list[dict], task: str) -> str:
    """Every measure per method and budget for one task."""
    head = "| method | budget | n | score | KL | top-1 | prompt tokens | KV entries kept | KV MiB | prefill s | decode ms/token |"
    lines = [head, "|---" * 11 + "|"]
    for a in (a for a in agg if a["task"] == task):
        lines.append(
            f"| {a['method']} | {point_label(point(a)).removeprefix('budget ')} | {a['n']} | {_fmt(a['score'])} | "
            f"{_fmt(a['kl'], 4)} | {_fmt(a['top1'], 2)} | {_fmt(a['prompt_tokens'], 0)} | {_fmt(a['kept_entries'], 0)} | "
            f"{_fmt(a['kv_mib'], 2)} | {_fmt(a['prefill_s'], 2)} | {_fmt(a['decode_ms_per_token'], 1)} |"
        )
    return "\n".join(lines)


def plot_against_budget(
    agg: list[dict], task: str, path: Path, measures=(("score", "score"), ("kl", "mean KL to full cache"))
) -> Path | None:
    """One panel per measure, one line per method, the full cache as a dashed line (None
    without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None

    items = [a for a in agg if a["task"] == task]
    fig, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4), squeeze=False)
    for ax, (measure, label) in zip(axes[0], measures):
        for method in sorted({a["method"] for a in items} - {FULL}):
            points = sorted(
                (a["budget"], a[measure])
                for a in items
                if a["method"] == method and a["budget"] is not None and a[measure] is not None
            )
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        full = next((a[measure] for a in items if a["method"] == FULL), None)
        if full is not None:
            ax.axhline(full, color="black", linestyle="--", label="full cache")
        _log2_axis(ax, "budget (entries per head and layer)", label)
    return _save_figure(fig, axes, task, items, path)


def bench_table(rows: list[dict], task: str) -> str:
    """One line per method, budget and length; ratios against the full cache at the same length."""
    items = sorted(
        (r for r in rows if r["task"] == task),
        key=lambda r: (r["prompt_tokens"], r["method"] != FULL, r["method"], r["budget"] or 0),
    )
    full = {r["prompt_tokens"]: r for r in items if r["method"] == FULL}
    if task == "bench-latency":
        lines = [
            "| length | method | budget | prefill s | vs full | decode ms/token | vs full | tokens/s |",
            "|---" * 8 + "|",
        ]
        for r in items:
            f = full.get(r["prompt_tokens"])
            pre_ratio = r["prefill_s"] / f["prefill_s"] if f and r["prefill_s"] and f["prefill_s"] else None
            dec_ratio = r["decode_ms_per_token"] / f["decode_ms_per_token"] if f else None
            lines.append(
                f"| {r['prompt_tokens']} | {r['method']} | {r['budget'] or 'all'} | {_fmt(r['prefill_s'], 3)} | {_fmt(pre_ratio, 3)} | "
                f"{_fmt(r['decode_ms_per_token'], 1)} | {_fmt(dec_ratio, 3)} | {_fmt(r['extra'].get('tokens_per_s'), 1)} |"
            )
        return "\n".join(lines)
    lines = [
        "| length | method | budget | chunk | prefill peak MiB | over baseline | vs full | decode peak MiB | prefill s |",
        "|---" * 9 + "|",
    ]
    for r in items:
        e, f = r["extra"], full.get(r["prompt_tokens"])
        ratio = e["prefill_delta_mib"] / f["extra"]["prefill_delta_mib"] if f else None
        lines.append(
            f"| {r['prompt_tokens']} | {r['method']} | {r['budget'] or 'all'} | {e.get('chunk_size') or '-'} | {_fmt(e['prefill_peak_mib'], 0)} | "
            f"{_fmt(e['prefill_delta_mib'], 0)} | {_fmt(ratio, 3)} | {_fmt(e['decode_peak_mib'], 0)} | {_fmt(r['prefill_s'], 1)} |"
        )
    return "\n".join(lines)


def plot_against_length(rows: list[dict], task: str, path: Path) -> Path | None:
    """Prefill and decode (or memory) against the context length, a line per method and budget
    (None without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None

    items = [r for r in rows if r["task"] == task]
    if task == "bench-latency":
        panels = (
            ("prefill s", lambda r: r["prefill_s"] or float("nan")),
            ("decode ms/token", lambda r: r["decode_ms_per_token"]),
        )
    else:
        panels = (
            ("prefill peak over baseline (MiB)", lambda r: r["extra"]["prefill_delta_mib"]),
            ("decode peak (MiB)", lambda r: r["extra"]["decode_peak_mib"]),
        )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    series = sorted({(r["method"], r["budget"]) for r in items}, key=lambda k: (k[0] != FULL, k[0], k[1] or 0))
    for ax, (label, value) in zip(axes[0], panels):
        for method, budget in series:
            points = sorted(
                (r["prompt_tokens"], value(r)) for r in items if r["method"] == method and r["budget"] == budget
            )
            style = dict(color="black", linestyle="--") if method == FULL else {}
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=f"{method} {budget or ''}".strip(),
                **style,
            )
        _log2_axis(ax, "context length (tokens)", label)
    return _save_figure(fig, axes, task, items, path)


def niah_cells(rows: list[dict]) -> dict:
    """``{(method, budget): {(length, depth): mean score in %}}`` for needle rows that carry their cell."""
    cells = defaultdict(lambda: defaultdict(list))
    for r in rows:
        extra = r.get("extra") or {}
        if "length" in extra and "depth" in extra and r["score"] is not None:
            cells[(r["method"], r["budget"])][(extra["length"], extra["depth"])].append(r["score"])
    return {
        key: {cell: 100 * sum(v) / len(v) for cell, v in grid.items()}
        for key, grid in sorted(cells.items(), key=lambda kv: method_order(*kv[0]))
    }


def niah_grid_table(grid: dict) -> str:
    """One row per prompt length, one column per needle depth."""
    lengths, depths = sorted({c[0] for c in grid}), sorted({c[1] for c in grid})
    lines = ["| length \\ depth | " + " | ".join(f"{d:g}" for d in depths) + " |", "|---" * (len(depths) + 1) + "|"]
    for length in lengths:
        lines.append(f"| {length} | " + " | ".join(_fmt(grid.get((length, d)), 0) for d in depths) + " |")
    return "\n".join(lines)


def plot_niah_heatmaps(cells: dict, path: Path) -> Path | None:
    """One heatmap (length x depth, score) per method and budget (None without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None

    keys = list(cells)
    cols = min(4, len(keys))
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False, layout="constrained")
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, (method, budget) in zip(axes.flat, keys):
        grid = cells[(method, budget)]
        lengths, depths = sorted({c[0] for c in grid}), sorted({c[1] for c in grid})
        values = [[grid.get((length, d), float("nan")) for d in depths] for length in lengths]
        image = ax.imshow(values, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
        ax.set_title(f"{method} @ {budget or 'all'}", fontsize=8)
        ax.set_xlabel("needle depth", fontsize=7)
        ax.set_ylabel("tokens", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="score (%)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: the files a run writes into its ``--out`` folder, besides the plots ``report.md`` links
RUN_FILES = (
    "results.sqlite",
    "results.sqlite-wal",
    "results.sqlite-shm",
    "results.sqlite.lock",
    "runs.jsonl",
    "report.md",
)


def discard_results(run_dir: str | Path) -> list[Path]:
    """Delete what restkv wrote into ``run_dir`` (the results database, the run log, the report
    and the plots it links), and nothing else; returns the deleted paths."""
    run_dir = Path(run_dir)
    names = list(RUN_FILES)
    report = run_dir / "report.md"
    if report.is_file():
        names += [n for n in re.findall(r"!\[[^\]]*\]\(([^)/\\]+\.png)\)", report.read_text()) if n not in names]
    removed = [run_dir / n for n in names if (run_dir / n).is_file()]
    for path in removed:
        path.unlink()
    return removed


def summary(run_dir: str | Path, family: str) -> str:
    """Score, agreement with the full cache and KL per config: the mean over ``family``'s tasks (macro) when it has several."""
    with ResultStore(Path(run_dir) / "results.sqlite") as store:
        rows = [r for r in store.rows() if r["task"] == family or r["task"].startswith(family + "/")]
    agg = aggregate(rows)
    means = family_means(agg) or agg
    lines = [
        f"{means[0]['task']}:" if means else f"{family}: no rows",
        "| method | budget | n | score | agreement % | KL |",
        "|---" * 6 + "|",
    ]
    for a in means:
        agree = None if a.get("agreement") is None else 100 * a["agreement"]
        lines.append(
            f"| {a['method']} | {point_label(point(a)).removeprefix('budget ')} | {a['n']} | {_fmt(a['score'])} | "
            f"{_fmt(agree)} | {_fmt(a['kl'], 4)} |"
        )
    return "\n".join(lines)


def render_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and one PNG per task into ``run_dir`` from its ``results.sqlite``."""
    run_dir = Path(run_dir)
    db = run_dir / "results.sqlite"
    if not db.is_file():
        raise ValueError(
            f"{run_dir} has no results.sqlite: run 'restkv eval' or 'restkv demo' with --out {run_dir} first"
        )
    with ResultStore(db) as store:
        rows = store.rows()
    if not rows:
        raise ValueError(f"{db} holds no results yet")
    agg = aggregate([r for r in rows if not r["task"].startswith("bench-")])
    agg = family_means(agg) + agg
    parts = [
        f"# restkv report: {run_dir.name}",
        "",
        f"Model: {', '.join(sorted({r['model'] for r in rows}))}; {len(rows)} result rows.",
        "",
    ]
    generators = sorted({(r.get("extra") or {}).get("generator") for r in rows} - {None})
    if generators:
        parts += [f"Prompts built by: {', '.join(generators)}.", ""]
    for task in sorted({a["task"] for a in agg}):
        # a plot against the budget, where there are budgets (a run by compression ratio has none)
        by_budget = any(a["budget"] is not None for a in agg if a["task"] == task)
        plot = plot_against_budget(agg, task, run_dir / f"{file_stem(task)}.png") if by_budget else None
        parts += [
            f"## {task}",
            "",
            "Score (higher is better; best per column in bold):",
            "",
            score_table(agg, task),
            "",
            "Mean KL divergence from the full cache's next-token distributions (lower is better):",
            "",
            score_table(agg, task, "kl", higher_is_better=False, digits=4),
            "",
            *agreement_part(agg, task),
            "All measures:",
            "",
            detail_table(agg, task),
            "",
            *([f"![{task}]({plot.name})", ""] if plot else []),
        ]
    cells = niah_cells(rows)
    if cells:
        heatmap = plot_niah_heatmaps(cells, run_dir / "niah_heatmap.png")
        parts += ["## Needle-in-a-Haystack grid", "", "Score per (length, depth) cell:", ""]
        for (method, budget), grid in cells.items():
            parts += [f"**{method} @ {budget or 'all'}**", "", niah_grid_table(grid), ""]
        parts += [f"![niah heatmap]({heatmap.name})", ""] if heatmap else []
    for task in sorted({r["task"] for r in rows if r["task"].startswith("bench-")}):
        plot = plot_against_length(rows, task, run_dir / f"{file_stem(task)}.png")
        parts += [f"## {task}", "", bench_table(rows, task), "", *([f"![{task}]({plot.name})", ""] if plot else [])]
    if not available("plots"):
        parts += [NO_PLOTS, ""]
        print(f"restkv: {NO_PLOTS}", file=sys.stderr)
    out = run_dir / "report.md"
    out.write_text("\n".join(parts))
    return out


def agreement_part(agg: list[dict], task: str) -> list[str]:
    """The agreement table of a task whose rows have predictions to compare, else nothing."""
    items = [a for a in agg if a["task"] == task]
    if all(a.get("agreement") is None for a in items):
        return []
    intro = "Share of samples answered as the full cache answered them, in % (higher is better):"
    scaled = [{**a, "agreement": None if a["agreement"] is None else 100 * a["agreement"]} for a in items]
    return [intro, "", score_table(scaled, task, "agreement"), ""]


def _log2_axis(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _save_figure(fig, axes, task: str, items: list, path: Path) -> Path:
    """Legend, title and PNG file shared by every plot of a report."""
    plt = _pyplot()
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{task}: {items[0]['model'] if items else ''}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    """matplotlib's pyplot on the file-only backend (reports run without a display), or None
    where matplotlib is not installed (the tables are written all the same)."""
    if not available("plots"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: the line a report carries in place of its plots when matplotlib is missing
NO_PLOTS = f"Plots left out: matplotlib is not installed ({install_hint('plots')})."
