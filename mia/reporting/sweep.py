"""The end of a multirun: one summary table and the sweep's pictures at the sweep root.

A Hydra callback (registered in ``conf/hydra/default.yaml``) reads every job's ``metrics.json`` and
``scores.csv`` and writes ``summary.csv``, ``roc_overlay.png`` (all ROC curves, linear and log-log) and,
when one or two knobs were swept, a line plot or heatmaps of AUC and TPR@1%FPR. It logs the best setting.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mia.evaluation.metrics import roc_curve
from mia.evaluation.result import AttackResult
from mia.reporting.figures import plot_heatmap, plot_roc, plot_sweep_lines

log = logging.getLogger(__name__)

INTERVALS = ("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
METRIC_COLUMNS = (
    "auc", "auc_ci_low", "auc_ci_high", "auc_calibrated_orientation",
    "asr", "asr_ci_low", "asr_ci_high", "asr_calibrated",
    "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci_low", "tpr_at_1pct_fpr_ci_high",
    "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci_low", "tpr_at_0.1pct_fpr_ci_high",
    "queries_per_sample", "queries_per_sample_this_run", "seconds", "seconds_per_1000",
    "n_members", "n_nonmembers", "n_calibration",
)
HEADLINES = ("auc", "tpr_at_1pct_fpr")


def _parse_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _sorted_values(values: set[str]) -> list[str]:
    numbers = {v: _as_number(v) for v in values}
    if all(n is not None for n in numbers.values()):
        return sorted(values, key=lambda v: numbers[v])
    return sorted(values)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every finished attack job under the sweep root: its overrides, its result."""
    jobs = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job_dir = metrics_file.parent
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
        jobs.append({
            "job": job_dir.name,
            "overrides": dict(_parse_override(o) for o in overrides),
            "result": AttackResult.load(job_dir),
        })
    return jobs


def summary_rows(jobs: list[dict[str, Any]], swept: list[str]) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        metrics = job["result"].metrics
        row: dict[str, Any] = {"job": job["job"], "attack": metrics.get("attack")}
        row.update({key: job["overrides"].get(key, "") for key in swept})
        for key in INTERVALS:
            low, high = metrics.get(f"{key}_ci", (None, None))
            metrics = {**metrics, f"{key}_ci_low": low, f"{key}_ci_high": high}
        row.update({key: metrics.get(key) for key in METRIC_COLUMNS})
        row["settings"] = json.dumps(metrics.get("settings", {}), sort_keys=True)
        row["overrides"] = " ".join(f"{k}={v}" for k, v in job["overrides"].items())
        rows.append(row)
    return rows


def swept_keys(jobs: list[dict[str, Any]]) -> list[str]:
    """The override keys whose values differ between jobs, in the order they were given."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job["overrides"] if k not in keys and not k.startswith("hydra")]
    return [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]


def write_summary(sweep_dir: Path) -> dict[str, Path]:
    """Write the summary table and pictures for the finished jobs under ``sweep_dir``."""
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        return {}
    swept = swept_keys(jobs)
    rows = summary_rows(jobs, swept)
    written = {"summary": sweep_dir / "summary.csv", "roc_overlay": sweep_dir / "roc_overlay.png"}
    with open(written["summary"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def label(job: dict[str, Any]) -> str:
        knobs = ", ".join(f"{k.split('.')[-1]}={job['overrides'][k]}" for k in swept if k in job["overrides"])
        return f"{knobs or job['result'].attack} (AUC {job['result'].metrics['auc']:.3f})"

    curves = [(label(job), roc_curve(*job["result"].evaluation_part())) for job in jobs]
    plot_roc(curves, title="sweep").savefig(written["roc_overlay"], dpi=120)

    numeric = [k for k in swept if all(_as_number(job["overrides"].get(k, "x")) is not None for job in jobs)]
    if len(swept) == 2:
        written.update(_heatmaps(sweep_dir, rows, swept))
    elif len(swept) == 1 and numeric:
        key = swept[0]
        order = sorted(rows, key=lambda r: float(r[key]))
        figure = plot_sweep_lines([float(r[key]) for r in order], {m: [r[m] for r in order] for m in HEADLINES},
                                  key, "sweep")
        written["sweep_plot"] = sweep_dir / f"sweep_{key}.png"
        figure.savefig(written["sweep_plot"], dpi=120)

    best = max(rows, key=lambda r: r["auc"])
    log.info("sweep summary: %s (%d jobs)", written["summary"], len(rows))
    log.info("best AUC %.4f (TPR@1%%FPR %.4f): job %s, %s", best["auc"], best["tpr_at_1pct_fpr"], best["job"],
             best["overrides"] or best["attack"])
    return written


def _heatmaps(sweep_dir: Path, rows: list[dict[str, Any]], swept: list[str]) -> dict[str, Path]:
    row_key, column_key = swept
    row_values = _sorted_values({str(r[row_key]) for r in rows})
    column_values = _sorted_values({str(r[column_key]) for r in rows})
    written = {}
    for metric in HEADLINES:
        grid = np.full((len(row_values), len(column_values)), np.nan)
        for r in rows:
            grid[row_values.index(str(r[row_key])), column_values.index(str(r[column_key]))] = r[metric]
        path = sweep_dir / f"heatmap_{metric}.png"
        plot_heatmap(grid, row_values, column_values, metric, row_key, column_key).savefig(path, dpi=120)
        written[f"heatmap_{metric}"] = path
    return written


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, summarise its attack jobs at the sweep root."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir)
