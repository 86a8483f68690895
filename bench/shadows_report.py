"""The shadow-model section of docs/results.md: every fitted choice made on shadows beside the same choice made
with the target's own labels, from the small files bench/shadows.sh and bench/strength.sh keep.

bench/shadows/cifar10/seed<S>/shadow<N>_training.json        each shadow's training record
bench/shadows/cifar10/seed<S>/<defaults|lira|learned>_<attack>.json   each protocol=shadow run's metrics.json
bench/strength/cifar10/seed<S>/<defaults|learned|gradient>_<attack>.json   the same attack on the same target,
                                                              fitted on its calibration part (protocol=calibration)
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.strength_report import cell_of, read_json

BENCH = Path(__file__).resolve().parent
ROOT = BENCH / "shadows" / "cifar10"
STRENGTH = BENCH / "strength" / "cifar10"
FIXED = ("na", "loss", "pia", "pian", "secmi", "sima")  # nothing fitted but a threshold and the orientation
LEARNED = {"secmi_nn": "learned", "learned": "learned", "gsa1": "gradient", "gsa2": "gradient"}  # attack: strength kind


def _seeds() -> list[Path]:
    return sorted(p for p in ROOT.glob("seed*") if p.is_dir() and p.name[4:].isdigit())


def _runs(folders: list[Path], name: str) -> list[dict[str, Any]]:
    return [read_json(f / name) for f in folders if (f / name).exists()]


def _trainings(seeds: list[Path]) -> list[dict[str, Any]]:
    return [read_json(p) for s in seeds for p in sorted(s.glob("shadow*_training.json"))]


def _shadow_count(runs: list[dict[str, Any]]) -> str:
    counts = sorted({len(m["shadows"]["models"]) for m in runs})
    return "/".join(str(c) for c in counts)


def _orientation(runs: list[dict[str, Any]]) -> str:
    """How many seeds' shadows kept the attack's own direction (the paper's), e.g. '3 of 3'."""
    kept = sum(1 for m in runs if m["shadows"]["orientation"] > 0)
    return f"{kept} of {len(runs)}"


def _passes(queries: float, backward: float | None) -> str:
    return f"{queries:,g} quer{'y' if queries == 1 else 'ies'}" + (f" + {backward:,g} backward" if backward else "")


def _calibration_cost(runs: list[dict[str, Any]]) -> str:
    first = runs[0]
    if not first.get("calibration"):  # a fixed attack: the calibrated ASR picks its threshold on half the rows
        return "none (its threshold: half the evaluation rows' labels)"
    labelled = first["n_calibration"]
    backward = first.get("gradient_passes_per_sample")
    return (f"{labelled} target samples' labels, "
            f"{_passes(labelled * first['queries_per_sample'], labelled * backward if backward else None)}")


def _shadow_cost(runs: list[dict[str, Any]]) -> str:
    first = runs[0]["shadows"]
    count = len(first["models"])  # per shadow, so seeds with different numbers of shadows read the same
    backward = first.get("gradient_passes_per_sample")
    return (f"{_passes(first['queries_per_sample'] / count, backward / count if backward else None)} / sample on "
            "each shadow, no target label")


def _table(seeds: list[Path]) -> list[str]:
    strength = [STRENGTH / s.name for s in seeds]
    out = ["| attack | fitted on | seeds | AUC | TPR@1%FPR | balanced accuracy at the fitted threshold | kept the "
           "paper's direction | AUC on the shadows | what the fit cost |", "|" + "---|" * 9]
    for attack in (*FIXED, *LEARNED):
        kind = LEARNED.get(attack, "defaults")
        on_calibration = _runs(strength, f"{kind}_{attack}.json")
        first = on_calibration[0] if on_calibration else {}
        name = "learned (NA features)" if attack == "learned" else attack
        label = (f"{name} ({_passes(first['queries_per_sample'], first.get('gradient_passes_per_sample'))})"
                 if first else name)
        if on_calibration:
            fitted = ("the target's calibration part" if attack in LEARNED
                      else "nothing (threshold: the target's labels)")
            out.append(f"| {label} | {fitted} | {len(on_calibration)} | {cell_of(on_calibration, 'auc')} | "
                       f"{cell_of(on_calibration, 'tpr_at_1pct_fpr')} | {cell_of(on_calibration, 'asr_calibrated')} "
                       f"| – | – | {_calibration_cost(on_calibration)} |")
        for prefix, fitted in (("defaults", "shadows: direction and threshold"), ("lira", "shadows: LiRA"),
                               ("learned", "shadows: the classifier, direction and threshold")):
            every = _runs(seeds, f"{prefix}_{attack}.json")
            if not every or (prefix == "learned") != (attack in LEARNED):
                continue
            for runs, how in _by_fitting(every) if attack in LEARNED else ((every, ""),):
                direction = "–" if attack in LEARNED else _orientation(runs)
                out.append(f"| {label} | {fitted}{how} ({_shadow_count(runs)} shadows) | {len(runs)} | "
                           f"{cell_of(runs, 'auc')} | {cell_of(runs, 'tpr_at_1pct_fpr')} | "
                           f"{cell_of(runs, 'shadows/target_at_threshold/balanced_accuracy')} | {direction} | "
                           f"{_on_shadows(runs, attack in LEARNED)} | {_shadow_cost(runs)} |")
    return out


def _by_fitting(runs: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], str]]:
    """A learned attack's seeds, by where its direction and threshold were chosen: on cross-fitted shadow scores
    (each shadow scored by the attack fitted on the others; runs since that change) or on the shadows' in-sample
    scores (older runs). Never averaged together; one row each when both are there."""
    crossed = [r for r in runs if "cross_fitted" in r["shadows"]]
    older = [r for r in runs if "cross_fitted" not in r["shadows"]]
    if not older or not crossed:
        return [(runs, "")]
    return [(crossed, ", cross-fitted threshold"), (older, ", threshold on in-sample scores")]


def _on_shadows(runs: list[dict[str, Any]], learned: bool) -> str:
    """The AUC on the shadows; a learned attack's says whether it is cross-fitted or in-sample."""
    cell = cell_of(runs, "shadows/auc_on_shadows")
    if "cross_fitted" in runs[0]["shadows"]:
        return f"{cell} (leave one shadow out; in-sample {cell_of(runs, 'shadows/auc_on_shadows_in_sample')})"
    return cell + (" (in-sample)" if learned else "")


def _lira_modes(seeds: list[Path]) -> str:
    modes = sorted({m["shadows"]["lira"]["mode"] for m in (r for a in FIXED for r in _runs(seeds, f"lira_{a}.json"))
                    if "lira" in m["shadows"]})
    return ", ".join(modes)


def shadows_section() -> list[str]:
    seeds = _seeds()
    trainings = _trainings(seeds)
    if not seeds or not trainings:
        return []
    minutes = [t["seconds"] / 60 for t in trainings]
    first = trainings[0]
    per_seed = " · ".join(f"seed {s.name[4:]}: {len(list(s.glob('shadow*_training.json')))}" for s in seeds)
    modes = _lira_modes(seeds)
    many = (f"{len(seeds)} split seeds, mean ± standard deviation" if len(seeds) > 1
            else f"split seed {seeds[0].name[4:]}")
    return [
        f"## Fitted on shadows beside fitted on calibration (CIFAR-10, {many})", "",
        "Made by `bench/shadows.sh`. Each strength target's shadows are trained with its recipe "
        "(`experiment=shadows_strength_cifar10`), each drawing "
        f"{first['members']} members and {first['nonmembers']:,} non-members from the target's "
        f"{first['members'] + first['nonmembers']:,} samples (`split.pool`, which reads which samples the target "
        "has, never how they are labelled). Under `protocol=shadow` every fitted choice (the score's direction, "
        "the threshold, a classifier, LiRA's Gaussians) is made on the shadows' own members and non-members, and "
        "every target sample is an evaluation row; the target's labels are read only to measure. The rows fitted "
        "on calibration are the strength benchmark's (above): measured on the three quarters of the samples their "
        "calibration part left, the threshold's balanced accuracy being its calibrated ASR.", "",
        f"Shadows per seed: {per_seed}; each trained in {min(minutes):.1f}–{max(minutes):.1f} minutes on 2 CPU "
        f"cores ({sum(minutes):.0f} minutes in all, median {statistics.median(minutes):.1f}), "
        f"{first['steps']:,} steps as the target. Their queries are counted apart, per target sample."
        + (f" LiRA ran in its {modes} form (docs/method.md, \"Shadow models\")." if modes else ""), "",
        *_table(seeds), ""]
