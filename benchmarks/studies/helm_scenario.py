"""One HELM scenario, the full cache against restkv deployments, with paired intervals (issue 33).

Runs ``helm-run`` (the HELM environment, ``make .venv-helm``) on ``--scenario`` for each of
``--deployments`` (names restkv registers in HELM: ``restkv/<model>`` and
``restkv/<model>-restkv-<ratio>``), then reads HELM's per-instance stats and writes, per
deployment, the mean of ``--metric`` with its bootstrap 95% interval and its paired difference
against the first deployment on the same instances, and every instance's score (HELM's run
folders under ``--out/runs`` hold the rest and stay out of git: their names carry ``:``). HELM's request cache under ``--out/prod_env``
makes a rerun (or one with more instances) reuse every answer already computed.

    .venv-helm/bin/python benchmarks/studies/helm_scenario.py --out benchmarks/results/helm \\
        --scenario "synthetic_reasoning_natural:difficulty=easy" --metric f1_set_match --instances 40 \\
        --deployments restkv/smollm2-135m-instruct,restkv/smollm2-135m-instruct-restkv-0.5,restkv/smollm2-135m-instruct-restkv-0.75
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from restkv.eval.intervals import bootstrap_mean, paired_difference


def run_folder(out: Path, suite: str, scenario: str, deployment: str) -> Path:
    """Where HELM writes a run (it spells ``/`` in a model name as ``_``)."""
    return out / "runs" / suite / f"{scenario},model={deployment.replace('/', '_')}"


def instance_scores(folder: Path, metric: str) -> dict[str, float]:
    """``{instance id: metric}`` from HELM's per-instance stats (the unperturbed test split)."""
    scores = {}
    for row in json.loads((folder / "per_instance_stats.json").read_text()):
        for stat in row["stats"]:
            name = stat["name"]
            if name["name"] == metric and name.get("split") == "test" and "perturbation" not in name:
                scores[row["instance_id"]] = stat["mean"]
    if not scores:
        raise SystemExit(f"{folder} has no per-instance {metric!r}: name one of HELM's metrics of this scenario")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--scenario", required=True, help="a HELM run entry without its model, e.g. synthetic_reasoning:mode=induction"
    )
    parser.add_argument("--deployments", required=True, help="comma-separated; the first is the reference")
    parser.add_argument("--metric", default="exact_match")
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--suite", default="restkv")
    args = parser.parse_args()
    deployments = args.deployments.split(",")
    started, load = time.perf_counter(), os.getloadavg()
    command = [str(Path(sys.executable).parent / "helm-run"), "--run-entries",
               *(f"{args.scenario},model={d}" for d in deployments), "--suite", args.suite,
               "--max-eval-instances", str(args.instances), "--local-path", str(args.out / "prod_env"),
               "--output-path", str(args.out)]  # fmt: skip
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    scores = {d: instance_scores(run_folder(args.out, args.suite, args.scenario, d), args.metric) for d in deployments}
    reference = deployments[0]
    rows = []
    for deployment in deployments:
        mean = bootstrap_mean(list(scores[deployment].values()))
        row = {"deployment": deployment, "n": mean.n, args.metric: round(mean.value, 4),
               "interval_95": [round(mean.low, 4), round(mean.high, 4)]}  # fmt: skip
        if deployment != reference:
            paired = paired_difference(scores[deployment], scores[reference])
            row["minus_reference"] = round(paired.difference.value, 4)
            row["minus_reference_95"] = [round(paired.difference.low, 4), round(paired.difference.high, 4)]
        rows.append(row)
    report = {"scenario": args.scenario, "metric": args.metric, "reference": reference, "rows": rows, "scores": scores,
              "wall_s": round(wall, 1), "load_start": load, "load_end": os.getloadavg(),
              "command": " ".join([Path(sys.executable).name, *sys.argv])}  # fmt: skip
    name = args.scenario.replace(":", "-").replace("=", "-").replace(",", "-")
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
