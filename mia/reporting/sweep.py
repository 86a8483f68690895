"""The end of a multirun: one summary table and the sweep's pictures at the sweep root.

A Hydra callback (registered in ``conf/common/hydra/default.yaml``) reads every job's ``metrics.json``
and ``scores.csv`` and writes ``summary.csv``, ``roc_overlay.png`` (all ROC curves, linear and log-log) and,
when one or two knobs were swept, a line plot or heatmaps of AUC and TPR@1%FPR. It logs the best setting.

A job that fails does not end the sweep (``keep_going``): its error line goes to ``error.txt`` in its
folder and to the ``status`` column of ``summary.csv`` (``ok`` for the others), and the command exits
with status 1 once every job has run. A job whose attack does not apply to the target (``NotApplicable``:
CLiD on a pixel model) is ``skipped: <why>`` (``skipped.txt``), which is no failure.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mia.errors import MiaError, NotApplicable
from mia.evaluation.metrics import roc_curve
from mia.evaluation.result import AttackResult
from mia.reporting.figures import plot_heatmap, plot_roc, plot_sweep_lines
from mia.reporting.jobs import METRICS_FILE, job_folders, settings_cell, write_rows

log = logging.getLogger(__name__)

INTERVALS = ("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
METRIC_COLUMNS = (
    "auc", "auc_ci_low", "auc_ci_high", "auc_calibrated_orientation",
    "asr", "asr_ci_low", "asr_ci_high", "asr_calibrated",
    "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci_low", "tpr_at_1pct_fpr_ci_high",
    "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci_low", "tpr_at_0.1pct_fpr_ci_high",
    "queries_per_sample", "queries_per_sample_this_run", "seconds", "seconds_per_1000",
    "n_members", "n_nonmembers", "n_calibration", "encoder_passes_per_sample", "text_encoder_passes_per_sample",
    "gradient_passes_per_sample", "decoder_passes_per_sample", "generation_calls_per_sample",
    "tuning_calibration_queries",
    # The controls (docs/method.md, "controls"): the reference model, the calibrated score, the blind control.
    "reference_model_auc", "reference_model_tpr_at_1pct_fpr", "reference_calibrated_auc",
    "reference_calibrated_tpr_at_1pct_fpr", "uncalibrated_auc", "uncalibrated_tpr_at_1pct_fpr", "blind_control_auc",
    "warnings",
)
CONTROLS = ("reference_model", "reference_calibrated", "uncalibrated", "blind_control")
HEADLINES = ("auc", "tpr_at_1pct_fpr")
FAILURE_FILE = "error.txt"  # in a failed job's folder: its error, one line
SKIP_FILE = "skipped.txt"  # in the folder of a job whose attack does not apply to the target: why, one line


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
    """Every attack job under the sweep root: its overrides, and its result or its error (``result`` None)."""
    jobs = []
    for job_dir in job_folders(sweep_dir, (METRICS_FILE, FAILURE_FILE, SKIP_FILE)):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
        failure, skip = job_dir / FAILURE_FILE, job_dir / SKIP_FILE
        error = (failure.read_text().strip() if failure.exists()
                 else f"skipped: {skip.read_text().strip()}" if skip.exists() else None)
        jobs.append({
            "job": job_dir.name,
            "overrides": dict(_parse_override(o) for o in overrides),
            "error": error,
            "result": None if error is not None else AttackResult.load(job_dir),
        })
    return jobs


def summary_rows(jobs: list[dict[str, Any]], swept: list[str]) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        if job["result"] is None:
            row = {"job": job["job"], "attack": job["overrides"].get("attack", ""), "status": job["error"]}
            row.update({key: job["overrides"].get(key, "") for key in swept})
            row.update({key: "" for key in (*METRIC_COLUMNS, "settings")})
            row["overrides"] = " ".join(f"{k}={v}" for k, v in job["overrides"].items())
            rows.append(row)
            continue
        metrics = job["result"].metrics
        row: dict[str, Any] = {"job": job["job"], "attack": metrics.get("attack"), "status": "ok"}
        row.update({key: job["overrides"].get(key, "") for key in swept})
        for key in INTERVALS:
            low, high = metrics.get(f"{key}_ci", (None, None))
            metrics = {**metrics, f"{key}_ci_low": low, f"{key}_ci_high": high}
        # A tuning's grid cost, apart from the chosen setting's queries_per_sample (as in metrics.json).
        metrics = {**metrics, "tuning_calibration_queries": metrics.get("tuning", {}).get("calibration_queries")}
        for control in CONTROLS:
            block = metrics.get(control) or {}
            metrics = {**metrics, **{f"{control}_{key}": block.get(key) for key in ("auc", "tpr_at_1pct_fpr")}}
        metrics["warnings"] = " | ".join(metrics.get("warnings", [])) or None
        row.update({key: metrics.get(key) for key in METRIC_COLUMNS})
        row["settings"] = settings_cell(metrics)
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
    """Write the summary table of every job under ``sweep_dir`` (failed ones too) and the finished jobs' pictures."""
    everything = collect_jobs(sweep_dir)
    if not everything:
        return {}
    swept = swept_keys(everything)
    table = summary_rows(everything, swept)
    written = {"summary": sweep_dir / "summary.csv"}
    write_rows(written["summary"], table)
    for row in table:
        if row.get("warnings"):
            log.warning("sweep: job %s (%s): %s", row["job"], row["attack"], row["warnings"])
    failed = sum(row["status"] != "ok" and not row["status"].startswith("skipped") for row in table)
    if failed:
        log.warning("sweep: %d of %d jobs failed (status column of %s)", failed, len(table), written["summary"])
    # The pictures show the jobs that ran.
    jobs = [job for job in everything if job["result"] is not None]
    rows = [row for row in table if row["status"] == "ok"]
    if not jobs:
        return written
    written["roc_overlay"] = sweep_dir / "roc_overlay.png"

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


def _error_line(error: BaseException) -> str:
    text = str(error) if isinstance(error, MiaError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())  # one line, whatever the message held


class SweepSummary(Callback):
    """Hydra callback: records each multirun job's failure, and summarises the sweep at its root at the end.

    ``keep_going`` (the default): a failed job is recorded and the sweep goes on; the command's exit status
    is 1 when any job failed. Otherwise Hydra's own behaviour: the failure is raised after the batch of jobs.
    """

    def __init__(self, keep_going: bool = True) -> None:
        self.keep_going = keep_going

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # a rerun into the same sweep folder starts clean
            for name in (FAILURE_FILE, SKIP_FILE):
                (Path(config.hydra.runtime.output_dir) / name).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or job_return.status != JobStatus.FAILED:
            return
        error = job_return._return_value  # the exception (reading .return_value would raise it)
        line = _error_line(error)
        skipped = isinstance(error, NotApplicable)
        (Path(config.hydra.runtime.output_dir) / (SKIP_FILE if skipped else FAILURE_FILE)).write_text(line + "\n")
        trace = None if isinstance(error, MiaError) else error  # a bug's traceback goes to the job's log
        if skipped:
            log.info("job %s skipped: %s", config.hydra.job.num, line)
        else:
            log.error("job %s failed: %s", config.hydra.job.num, line, exc_info=trace)
        if self.keep_going:
            job_return.status = JobStatus.COMPLETED  # so that the sweeper goes on; the failure is on disk
            job_return.return_value = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        write_summary(sweep_dir)
        failed = sorted(p.parent.name for p in sweep_dir.glob(f"*/{FAILURE_FILE}"))
        if failed:
            total = len({p.parent for p in sweep_dir.glob("*/.hydra")})
            print(f"mia-{config.get('task_name', 'sweep')}: error: {len(failed)} of {total} jobs failed (jobs "
                  f"{', '.join(failed)}; see the status column of {sweep_dir / 'summary.csv'})", file=sys.stderr)
            sys.exit(1)
