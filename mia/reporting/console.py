"""The console: the results table printed at the end of an attack run, and the libraries' chatter kept out of it.

Known noise is lowered to debug level (Lightning's device banner and tips, the seed line) or filtered
(warnings that say nothing about the user's run); everything else still shows.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

# Lightning's INFO lines: "GPU available ...", "TPU available ...", a LitLogger advertisement, "Seed set to 0",
# "`Trainer.fit` stopped: `max_steps=...` reached". mia logs what matters of these itself.
_CHATTY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
)
_KNOWN_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",  # torch deprecation inside Lightning's own code
    r"The number of training batches .* is smaller than the logging interval",  # step-based logging works
)


def quiet_libraries() -> None:
    """Lower the libraries' known chatter; call once at the start of an entry point."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    # W&B's own terminal lines ("syncing is set to offline", "anonymous setting ..."); mia names the run
    # folder itself. The user's own WANDB_SILENT wins.
    os.environ.setdefault("WANDB_SILENT", "true")


# The headline numbers, in the order they are shown (also the W&B run's summary scalars).
SCALARS = (
    "auc", "asr", "asr_calibrated", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "queries_per_sample",
    "seconds", "seconds_per_1000",
)
# What a run counted beside the headline numbers (a sweep's summary.csv has a column for each of these too).
COUNTS = ("queries_per_sample_this_run", "encoder_passes_per_sample", "text_encoder_passes_per_sample",
          "gradient_passes_per_sample", "decoder_passes_per_sample", "generation_calls_per_sample")


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small aligned table of the headline numbers, with their intervals where there are some."""
    rows = []
    if metrics.get("n_calibration"):
        rows.append(f"  {'n_calibration':<20} {metrics['n_calibration']} (set aside; the numbers below are the rest)")
    if "shadows" in metrics:
        shadows = metrics["shadows"]
        lira = shadows.get("lira", {}).get("mode")
        in_sample = shadows.get("auc_on_shadows_in_sample")  # a fitted attack's: its AUC on them is cross-fitted
        crossed = f" leaving each out, {in_sample:.4f} in-sample" if in_sample is not None else ""
        rows.append(f"  {'fitted on':<20} {len(shadows['models'])} shadow models (AUC on them "
                    f"{shadows['auc_on_shadows']:.4f}{crossed}, orientation {shadows['orientation']:+.0f}"
                    f"{f', LiRA {lira}' if lira else ''}; {shadows['queries_per_sample']} queries per sample on them); "
                    "no target label used")
    if "tuning" in metrics:
        tuning = metrics["tuning"]
        chosen = ", ".join(f"{k}={v}" for k, v in tuning["chosen"].items())
        rows.append(f"  {'tuned':<20} {chosen} ({tuning['criterion']} {tuning['calibration_value']:.4f} on "
                    f"calibration, {tuning['calibration_queries']} queries)")
    for key in ("attack", "n_members", "n_nonmembers", *SCALARS, *COUNTS):
        if key in metrics:
            value = metrics[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            if f"{key}_ci" in metrics:
                low, high = metrics[f"{key}_ci"]
                text += f"  [{low:.4f}, {high:.4f}]"
            rows.append(f"  {key:<20} {text}")
    rows += _controls(metrics)
    return "\n".join(rows)


def _auc_text(block: dict[str, Any]) -> str:
    interval = block.get("auc_ci")
    tpr = block.get("tpr_at_1pct_fpr")
    return (f"AUC {block['auc']:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")
            + (f", TPR@1%FPR {tpr:.4f}" if tpr is not None else ""))


def _controls(metrics: dict[str, Any]) -> list[str]:
    """The controls' lines: the reference model and the calibrated score, the blind control, warnings."""
    rows = []
    for key, what in (("reference_model", "the reference model, same samples"),
                      ("reference_calibrated", "target − reference (attack.calibration=reference)"),
                      ("uncalibrated", "the target's own score, without the reference")):
        if key in metrics:
            rows.append(f"  {key:<20} {_auc_text(metrics[key])}  ({what})")
    blind = metrics.get("blind_control")
    if blind and blind.get("ran"):
        rows.append(f"  {'blind_control':<20} {_auc_text(blind)}  (no model: can the two sets be told apart?)")
    rows += [f"  WARNING: {warning}" for warning in metrics.get("warnings", [])]
    return rows
