"""What a run's numbers become, read back: the W&B summary (from the offline run's record log), a sweep's
summary.csv and the console each carry metrics.json's numbers and counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
import wandb
from conftest import compose_config
from omegaconf import OmegaConf
from wandb.proto import wandb_internal_pb2

from mia.reporting.console import COUNTS, format_metrics
from mia.reporting.sweep import write_summary
from mia.reporting.wandb_run import summary_items
from mia.runs.attack import run

QUICK = ["metrics.bootstrap=50", "trainer.enable_progress_bar=false"]
BLOCK, HEADER = 32768, 7  # the record log's block size and record header (LevelDB's log format)


def log_records(path: Path) -> list[bytes]:
    """The records of an offline run's ``run-*.wandb``: what ``wandb sync`` uploads.

    The file is W&B's header (``:W&B``, a magic number, a version: 7 bytes), then LevelDB-style blocks of
    32 KiB; each record piece has a checksum (4), a length (2, little-endian), a type (1: whole, 2: first,
    3: middle, 4: last) and its bytes; a block's tail shorter than a header is padding.
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    records, pending, position = [], b"", HEADER
    while position + HEADER <= len(data):
        if BLOCK - position % BLOCK < HEADER:
            position += BLOCK - position % BLOCK
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def offline_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary as its record log holds it, flat keys only (W&B's own media entries are nested)."""
    summary: dict[str, Any] = {}
    for raw in log_records(next(run_dir.glob("run-*.wandb"))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "summary":
            continue
        # A key is written as ``key`` or as a one-part ``nested_key``; a longer path is W&B's own nesting.
        for item in record.summary.update:
            if item.key or len(item.nested_key) == 1:
                summary[item.key or item.nested_key[0]] = json.loads(item.value_json)
        for item in record.summary.remove:
            summary.pop(item.key or item.nested_key[0], None)
    return summary


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of metrics.json under the name the summary gives it: "/"-joined, intervals as low and high."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{path}{key}/").items()}
    if isinstance(value, list):
        names = ["low", "high"] if path.endswith("_ci/") else [str(i) for i in range(len(value))]
        pairs = zip(names, value, strict=True)
        return {k: v for name, item in pairs for k, v in leaves(item, f"{path}{name}/").items()}
    return {path.rstrip("/"): value}


def test_summary_items_flattens_every_leaf():
    metrics = {"attack": "clid_th", "auc": 0.75, "auc_ci": [0.5, 0.9], "labels_verified": True, "checkpoint": None,
               "calibration": {"alpha": 0.3, "robust_scale": [1.0, 2.0]}, "encoder_passes_per_sample": 1,
               "evaluation_set": {"duplicates": {"left_out": 0, "repeated_members": []}}}
    assert summary_items(metrics) == {
        "attack": "clid_th", "auc": 0.75, "auc_ci/low": 0.5, "auc_ci/high": 0.9, "labels_verified": True,
        "checkpoint": None, "calibration/alpha": 0.3, "calibration/robust_scale/0": 1.0,
        "calibration/robust_scale/1": 2.0, "encoder_passes_per_sample": 1, "evaluation_set/duplicates/left_out": 0,
    }


def test_every_number_of_metrics_json_reaches_the_wandb_summary_the_sweep_table_and_the_console(
        tiny_target: Path, tmp_path: Path):
    # A tuned run: intervals, calibration counts, the tuning's grid and its queries, provenance, labels checked.
    job = tmp_path / "sweep" / "0"
    overrides = ["attack=sima", "tune=sima_t", "tune.grid.t=[50,100]", "protocol.calibration=0.25"]
    run(compose_config("attack", [f"target.path={tiny_target}", *QUICK, "logger=wandb", *overrides], job))
    # run.finish() can return before W&B's service has written the record log; teardown waits for it.
    wandb.teardown()
    metrics = json.loads((job / "metrics.json").read_text())

    runs = list((job / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    summary = offline_summary(runs[0])
    expected = leaves(metrics)
    assert len(expected) > 50  # the walk reached the nested sections
    for key, value in expected.items():
        assert key in summary, key
        assert summary[key] == value and type(summary[key]) is type(value), (key, summary[key], value)
    # Spelled out, the ones a reviewer sorts and filters on.
    assert (summary["auc_ci/low"], summary["auc_ci/high"]) == tuple(metrics["auc_ci"])
    assert summary["n_members"] == 18 and summary["n_nonmembers"] == 18 and summary["n_calibration"] == 12
    assert summary["tuning/calibration_queries"] == 2 * 12  # two settings of t, one query per calibration sample
    assert summary["queries_per_sample"] == 1
    assert summary["evaluation_set/labels_verified"] is True
    assert summary["provenance/libraries/torch"] == torch.__version__

    # The sweep's table and the console carry the same counts.
    (job / ".hydra").mkdir(exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    with open(write_summary(tmp_path / "sweep")["summary"]) as handle:
        row = next(csv.DictReader(handle))
    console = format_metrics(metrics).splitlines()
    for key in ("n_members", "n_nonmembers", "n_calibration", "queries_per_sample", *COUNTS):
        assert row[key] == str(metrics.get(key, "")), key  # empty where the run has none (a pixel target's VAE)
        shown = [line for line in console if line.startswith(f"  {key:<20} ")]
        assert len(shown) == (key in metrics), key
        assert all(line.split()[1] == str(metrics[key]) for line in shown), key
    assert row["tuning_calibration_queries"] == "24" and any("24 queries" in line for line in console)


def test_the_console_shows_the_other_networks_passes():
    metrics = {"attack": "clid_th", "n_members": 4, "n_nonmembers": 4, "queries_per_sample": 3,
               "queries_per_sample_this_run": 0, "encoder_passes_per_sample": 1, "text_encoder_passes_per_sample": 2,
               "gradient_passes_per_sample": 10,  # GSA's backward passes
               "decoder_passes_per_sample": 3, "generation_calls_per_sample": 3}  # a black-box attack's
    lines = format_metrics(metrics).splitlines()
    for key in COUNTS:
        assert f"  {key:<20} {metrics[key]}" in lines, key
