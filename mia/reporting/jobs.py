"""A multirun's job folders and the CSV tables written from them (the sweep summary, the reproduction table)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"  # what a finished attack job leaves in its folder


def job_folders(sweep_dir: Path, markers: Sequence[str] = (METRICS_FILE,)) -> list[Path]:
    """The job folders at the sweep root that hold any of ``markers``, in job order (2 before 10)."""
    folders = {path.parent for name in markers for path in sweep_dir.glob(f"*/{name}")}
    return sorted(folders, key=lambda folder: (len(folder.name), folder.name))


def read_metrics(job_dir: Path) -> dict[str, Any]:
    """A finished job's ``metrics.json``."""
    return json.loads((job_dir / METRICS_FILE).read_text())


def settings_cell(metrics: dict[str, Any]) -> str:
    """The attack's settings as one CSV cell: JSON with sorted keys, so that equal settings read equal."""
    return json.dumps(metrics.get("settings", {}), sort_keys=True)


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One CSV row per dict; the columns are the first row's keys, in its order."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
