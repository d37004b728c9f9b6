"""A leaderboard table from a results store: each method's mean over tasks at each compression
ratio with its 95% interval, and its paired difference against the best other method there.

kvpress's leaderboard averages RULER's tasks with equal weight; so does this table, and its
intervals resample prompts within their task (:func:`restkv.eval.intervals.bootstrap_mean`).
A difference whose interval contains 0 is reported as a tie, not as a win.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .intervals import Interval, bootstrap_mean, paired_difference
from .report import split_ratio

FULL = "full"


def scores_by_config(rows: list[dict]) -> dict[tuple[str, float | None], dict[str, dict[str, float]]]:
    """``{(method, ratio): {task: {sample_id: score}}}`` from store rows (scores as given)."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if row.get("score") is None:
            continue
        method, ratio = split_ratio(row["method"])
        table[(method, ratio)][row["task"]][row["sample_id"]] = float(row["score"])
    return {k: dict(v) for k, v in table.items()}


def _mean(tasks: dict[str, dict[str, float]], seed: int) -> Interval:
    return bootstrap_mean({t: list(s.values()) for t, s in sorted(tasks.items())}, seed=seed)


def _cell(interval: Interval, scale: float = 100.0) -> str:
    return f"{interval.value * scale:.1f} [{interval.low * scale:.1f}, {interval.high * scale:.1f}]"


def leaderboard_markdown(rows: list[dict], *, seed: int = 0) -> str:
    """The table, one row per method and ratio, scores x100 with bootstrap 95% intervals.

    Columns: the mean over tasks and its interval; n prompts; the paired difference against
    the best other compressing method at the same ratio (``tie`` when its interval contains 0);
    the paired difference against the full cache. Only prompts both sides ran are paired.
    A method that ran fewer prompts than the most at its ratio is listed after the others and is
    never the best other: a mean over a few prompts must not set the bar for the rest.
    """
    configs = scores_by_config(rows)
    if not configs:
        raise ValueError("the store holds no scored rows")
    means = {c: _mean(tasks, seed) for c, tasks in configs.items()}
    full = next((c for c in configs if c[0] == FULL), None)
    lines = [
        "| method | ratio | score [95% CI] | n | vs best other at this ratio | vs full |",
        "|---|---|---|---|---|---|",
    ]
    if full is not None:
        lines.append(f"| {FULL} | - | {_cell(means[full])} | {means[full].n} | - | - |")
    ratios = sorted({r for _, r in configs if r is not None})
    for ratio in ratios:
        most = max(means[c].n for c in configs if c[1] == ratio)
        here = sorted((c for c in configs if c[1] == ratio), key=lambda c: (means[c].n < most, -means[c].value))
        for config in here:
            others = [c for c in here if c != config and means[c].n == most]
            versus = "-"
            if others:
                best = others[0]
                paired = paired_difference(configs[config], configs[best], seed=seed)
                versus = f"{_difference(paired)} vs {best[0]}"
            against_full = "-"
            if full is not None:
                against_full = _difference(paired_difference(configs[config], configs[full], seed=seed))
            lines.append(
                f"| {config[0]} | {ratio:g} | {_cell(means[config])} | {means[config].n} | {versus} | {against_full} |"
            )
    return "\n".join(lines) + "\n"


def _difference(paired) -> str:
    d = paired.difference
    text = f"{d.value * 100:+.1f} [{d.low * 100:+.1f}, {d.high * 100:+.1f}]"
    return text + (" tie" if paired.tie else "")


def curves(rows: list[dict], *, seed: int = 0) -> dict[str, list[tuple[float, Interval]]]:
    """Per method, ``(ratio, interval)`` points in ratio order; the full cache's one point has ratio 0."""
    out: dict[str, list] = defaultdict(list)
    for (method, ratio), tasks in sorted(scores_by_config(rows).items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        out[method].append((0.0 if ratio is None else ratio, _mean(tasks, seed)))
    return dict(out)


def plot_leaderboard(rows: list[dict], path: Path, title: str = "", *, seed: int = 0) -> Path | None:
    """Score against compression ratio, one line per method with its 95% band, in the style of
    kvpress's leaderboard; the full cache is a dashed line with its band across the plot (None
    without matplotlib)."""
    from .report import _pyplot

    lines = curves(rows, seed=seed)
    if not lines:
        raise ValueError("the store holds no scored rows")
    plt = _pyplot()
    if plt is None:
        return None
    ratios = sorted({r for points in lines.values() for r, _ in points if r > 0}) or [0.0]
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, points in sorted(lines.items(), key=lambda kv: (kv[0] != FULL, kv[0])):
        if method == FULL:
            full = points[0][1]
            ax.axhline(full.value * 100, color="black", linestyle="--", label=f"{FULL} ({full.value * 100:.1f})")
            ax.axhspan(full.low * 100, full.high * 100, color="black", alpha=0.06)
            continue
        xs = [r for r, _ in points]
        (line,) = ax.plot(xs, [i.value * 100 for i in points_of(points)], marker="o", label=method)
        ax.fill_between(
            xs, [i.low * 100 for i in points_of(points)], [i.high * 100 for i in points_of(points)],
            color=line.get_color(), alpha=0.12,
        )  # fmt: skip
    ax.set_xticks(ratios)
    ax.set_xlabel("compression ratio (share of the context's entries removed)")
    ax.set_ylabel("score (mean over tasks, 95% interval)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def points_of(points: list[tuple[float, Interval]]) -> list[Interval]:
    """The intervals of ``(ratio, interval)`` points."""
    return [i for _, i in points]
