"""Measured against published, side by side: the end of ``experiment=reproduce_cifar10``.

A Hydra callback (added by the experiment beside the sweep summary) reads every job's ``metrics.json`` at
the sweep root and writes ``reproduction.csv`` and ``reproduction.md``: per attack, the counted queries, ASR
as the papers define it (best threshold on the evaluation set) next to the calibrated one (threshold chosen
on one half, accuracy on the other), AUC and TPR at 1% / 0.1% FPR, each next to its published value
(mia.reporting.published). The table is also logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mia.reporting.jobs import job_folders, read_metrics, settings_cell, write_rows
from mia.reporting.published import published

log = logging.getLogger(__name__)

# (metrics.json key, Published field, column title, printed as percent)
COMPARED = (
    ("asr", "asr", "ASR (best threshold, as papers)", False),
    ("auc", "auc", "AUC", False),
    ("tpr_at_1pct_fpr", "tpr_at_1pct_fpr", "TPR@1%FPR", True),
    ("tpr_at_0.1pct_fpr", "tpr_at_0_1pct_fpr", "TPR@0.1%FPR", True),
)


def reproduction_rows(sweep_dir: Path, dataset: str) -> list[dict[str, Any]]:
    """One row per finished job: measured metrics and the published ones for its attack on ``dataset``."""
    rows = []
    for job_dir in job_folders(sweep_dir):
        job, metrics = job_dir.name, read_metrics(job_dir)
        paper = published(metrics["attack"], dataset)
        row: dict[str, Any] = {"job": job, "attack": metrics["attack"],
                               "queries_per_sample": metrics.get("queries_per_sample"),
                               "queries_published": paper.queries if paper else None}
        for key, field, _, _ in COMPARED:
            row[key] = metrics.get(key)
            row[f"{key}_published"] = getattr(paper, field) if paper else None
            if key == "asr":
                row["asr_calibrated"] = metrics.get("asr_calibrated")
        row.update(n_members=metrics.get("n_members"), n_nonmembers=metrics.get("n_nonmembers"),
                   source=paper.source if paper else "none in docs/method.md",
                   settings=settings_cell(metrics))
        rows.append(row)
    return rows


def _cell(value: Any, percent: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}%" if percent else f"{value:.3f}"


def format_table(rows: list[dict[str, Any]], dataset: str) -> str:
    """A Markdown table, each cell ``measured / published``."""
    head = ["attack", "queries", *(title for _, _, title, _ in COMPARED[:1]), "ASR calibrated (held out)",
            *(title for _, _, title, _ in COMPARED[1:]), "published in"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["attack"], f"{row['queries_per_sample']} / {row['queries_published'] or '—'}"]
        for key, _, _, percent in COMPARED:
            cells.append(f"{_cell(row[key], percent)} / {_cell(row[f'{key}_published'], percent)}")
            if key == "asr":
                cells.append(_cell(row["asr_calibrated"], False))
        cells.append(row["source"])
        lines.append("| " + " | ".join(cells) + " |")
    sizes = {(r["n_members"], r["n_nonmembers"]) for r in rows}
    members, nonmembers = sizes.pop() if len(sizes) == 1 else ("?", "?")
    return (f"Measured / published ({dataset}; published at paper scale, docs/method.md), on {members} members and "
            f"{nonmembers} non-members:\n\n" + "\n".join(lines) + "\n")


def write_reproduction(sweep_dir: Path, dataset: str) -> dict[str, Path]:
    """Write ``reproduction.csv`` and ``reproduction.md`` at the sweep root and log the table."""
    rows = reproduction_rows(sweep_dir, dataset)
    if not rows:
        log.warning("no finished attack job under %s; no reproduction table", sweep_dir)
        return {}
    written = {"csv": sweep_dir / "reproduction.csv", "table": sweep_dir / "reproduction.md"}
    write_rows(written["csv"], rows)
    table = format_table(rows, dataset)
    written["table"].write_text(table)
    log.info("%s\nreproduction table: %s", table, written["table"])
    return written


class ReproductionTable(Callback):
    """Hydra callback: at the end of a multirun, compare its attacks with the papers' numbers on ``dataset``."""

    def __init__(self, dataset: str = "cifar10") -> None:
        self.dataset = dataset

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_reproduction(sweep_dir, self.dataset)
