"""Why NA flips: its timestep profile at several noise scales, in one figure and one CSV.

    python -m bench.na_flip target.path=<target> [flip.noise_scales=[0.1,0.5,1.0]]
        [flip.statistics=[pairwise_l2,magnitude]] [flip.timesteps=[40,60,80]] [target.kind=memorizer]

Settings: conf/attack/experiment/na_flip.yaml (applied by this command) over mia-attack's config tree.

For every noise scale s and start timestep t it runs NA (k, m, direction, seed as ``attack.*``) on up to
``flip.max_samples`` members and non-members each, and records both groups' quartiles of each statistic
and the AUC. The statistics share one set of predictions per (s, t) (the prediction cache), so a
statistic costs no queries beyond the first. With ``flip.scaling`` it also measures the predictions
against the noise that was injected: their dispersion (pairwise_l2) and their magnitude (1/k)·Σ‖ε̂_i‖²,
each over s²·D, the expected ‖s·ε‖² (D values per sample); 1 means "as large as the injected noise".
For a perfect memoriser a member's predictions are exactly s·ε (magnitude ratio 1, dispersion 0).
Writes ``na_flip.csv``, ``na_flip_scaling.csv`` and ``na_flip.png`` (both kinds, one row each) to the run folder.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from mia.attacks.aggregation import pairwise_l2
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.attacks.sample_noise import SampleNoise
from mia.config import ATTACK_CONFIG_DIR, build
from mia.data.evaluation_set import EvaluationSet
from mia.data.images import to_model_range
from mia.errors import MiaError
from mia.evaluation.metrics import auc, roc_curve
from mia.evaluation.profile import TimestepProfile
from mia.reporting.console import quiet_libraries
from mia.reporting.figures import plot_noise_scale_profiles
from mia.runs.attack import evaluation_set_of, scoring_settings
from mia.runs.exit import run_or_exit
from mia.scoring.engine import ScoringSettings
from mia.scoring.profile import timestep_profile
from mia.targets.base import DiffusionTarget

log = logging.getLogger("bench.na_flip")
Profiles = dict[str, dict[float, TimestepProfile]]
SCALING = ("dispersion / s²D", "magnitude / s²D")


def noise_scale_profiles(attack: NoiseAggregation, target: DiffusionTarget, evalset: EvaluationSet,
                         noise_scales: Sequence[float], timesteps: Sequence[int], statistics: Sequence[str],
                         max_samples: int | None, settings: ScoringSettings) -> Profiles:
    """{statistic: {noise scale: NA's timestep profile}} on the same samples and noise."""
    if not noise_scales or not statistics:
        raise MiaError("flip.noise_scales and flip.statistics must each hold at least one value")
    profiles: Profiles = {statistic: {} for statistic in statistics}
    for scale in noise_scales:
        for statistic in statistics:  # __post_init__ refuses an unknown statistic or a negative scale
            variant = dataclasses.replace(attack, noise_scale=float(scale), statistic=statistic)
            profiles[statistic][float(scale)] = timestep_profile(variant, target, evalset, timesteps, max_samples,
                                                                 settings)
    return profiles


def relative_to_injected(predictions: torch.Tensor, noise_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NA's predictions [B, k, D] against the injected noise: (pairwise_l2, (1/k)·Σ_i ‖ε̂_i‖²), each over s²·D."""
    injected = noise_scale**2 * predictions.shape[2]
    return pairwise_l2(predictions) / injected, predictions.to(torch.float64).pow(2).sum(2).mean(1) / injected


@torch.no_grad()
def scaling_profiles(attack: NoiseAggregation, target: DiffusionTarget, evalset: EvaluationSet,
                     noise_scales: Sequence[float], timesteps: Sequence[int], max_samples: int | None,
                     batch_size: int) -> Profiles:
    """{SCALING name: {noise scale: profile}}; AUCs take the smaller value as the member (as NA does).

    NA's own ``collect`` on each batch (k counted queries per sample and cell), the same noise as NA's run.
    """
    subset = evalset.first(max_samples)
    labels = subset.labels.numpy()
    device = target.alphas_cumprod.device
    profiles: Profiles = {name: {} for name in SCALING}
    for scale in noise_scales:
        if scale <= 0:
            log.warning("scaling: skipping noise scale %s, which injects no noise to compare with", scale)
            continue
        values: dict[str, dict[int, np.ndarray]] = {name: {} for name in SCALING}
        before = target.queries
        for t in timesteps:
            variant = dataclasses.replace(attack, noise_scale=float(scale), t=int(t))
            if not variant.fits(target):
                continue
            parts = []
            for start in range(0, len(subset), batch_size):
                rows = range(start, min(start + batch_size, len(subset)))
                x0 = target.encode(to_model_range(subset.stack(rows)).to(device))
                noise = SampleNoise(subset.keys[rows], variant.seed)
                parts.append(relative_to_injected(variant.collect(target, x0, noise), float(scale)))
            for i, name in enumerate(SCALING):
                values[name][int(t)] = torch.cat([p[i] for p in parts]).cpu().numpy()
        if not values[SCALING[0]]:
            raise MiaError("flip.timesteps holds no timestep whose NA path fits the schedule")
        queries = (target.queries - before) / len(subset)
        for name in SCALING:
            kept = sorted(values[name])
            profiles[name][float(scale)] = TimestepProfile(
                name, kept,
                np.array([np.percentile(values[name][t][labels == 1], [25, 50, 75]) for t in kept]),
                np.array([np.percentile(values[name][t][labels == 0], [25, 50, 75]) for t in kept]),
                np.array([auc(roc_curve(-values[name][t], labels)) for t in kept]), queries)
    return profiles


def save_profiles_csv(profiles: Profiles, path: str | Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["statistic", "noise_scale", "t", "auc", "member_q25", "member_median", "member_q75",
                         "nonmember_q25", "nonmember_median", "nonmember_q75"])
        for statistic, by_scale in profiles.items():
            for scale, profile in sorted(by_scale.items()):
                for i, t in enumerate(profile.timesteps):
                    writer.writerow([statistic, scale, t, profile.auc[i], *profile.members[i], *profile.nonmembers[i]])


def auc_table(profiles: Profiles) -> str:
    """AUC by t (rows) and noise scale (columns), one block per statistic, for the log."""
    lines = []
    for statistic, by_scale in profiles.items():
        scales = sorted(by_scale)
        timesteps = sorted({t for p in by_scale.values() for t in p.timesteps})
        lines.append(f"{statistic}: AUC, t \\ s " + " ".join(f"{s:>6g}" for s in scales))
        for t in timesteps:
            cells = []
            for s in scales:
                profile = by_scale[s]
                cells.append(f"{profile.auc[profile.timesteps.index(t)]:6.3f}" if t in profile.timesteps else "     -")
            lines.append(f"  {t:>4d}   " + " ".join(cells))
    return "\n".join(lines)


def scaling_table(profiles: Profiles) -> str:
    """Members' and non-members' medians by t (rows) and noise scale (columns), one block per quantity."""
    lines = []
    for name, by_scale in profiles.items():
        scales = sorted(by_scale)
        lines.append(f"{name}, t \\ s: " + " ".join(f"{s:>15g}" for s in scales))
        for t in sorted({t for p in by_scale.values() for t in p.timesteps}):
            cells = []
            for s in scales:
                p = by_scale[s]
                i = p.timesteps.index(t) if t in p.timesteps else None
                cells.append("              -" if i is None else f"{p.members[i, 1]:>7.3g}/{p.nonmembers[i, 1]:<7.3g}")
            lines.append(f"  {t:>4d}   " + " ".join(cells))
    return "\n".join(lines)


def flip(cfg: DictConfig) -> Path:
    if not isinstance(cfg.get("flip"), DictConfig):
        raise MiaError("bench.na_flip needs the flip.* settings of experiment=na_flip")
    attack = build(cfg.attack, _convert_="all")
    if not isinstance(attack, NoiseAggregation):
        raise MiaError(f"bench.na_flip profiles NA's statistics; attack={attack.name} has none (use attack=na)")
    target = build(cfg.target)
    evalset = evaluation_set_of(cfg, target)
    profiles = noise_scale_profiles(attack, target, evalset, list(cfg.flip.noise_scales), list(cfg.flip.timesteps),
                                    list(cfg.flip.statistics), cfg.flip.max_samples, scoring_settings(cfg))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_profiles_csv(profiles, out_dir / "na_flip.csv")
    files = ["na_flip.csv", "na_flip.png"]
    if cfg.flip.scaling:
        scaling = scaling_profiles(attack, target, evalset, list(cfg.flip.noise_scales), list(cfg.flip.timesteps),
                                   cfg.flip.max_samples, cfg.data.batch_size)
        save_profiles_csv(scaling, out_dir / "na_flip_scaling.csv")
        files.insert(1, "na_flip_scaling.csv")
        log.info("against the injected noise (medians, members / non-members):\n%s", scaling_table(scaling))
        profiles = {**profiles, **scaling}
    plot_noise_scale_profiles(profiles).savefig(out_dir / "na_flip.png", dpi=120)
    log.info("NA on %s (%s), k=%d, m=%d, %s:\n%s", target.source, target.kind, attack.k, attack.m,
             attack.direction, auc_table(profiles))
    log.info("files: %s (%s)", out_dir, ", ".join(files))
    return out_dir


@hydra.main(version_base="1.3", config_path=ATTACK_CONFIG_DIR, config_name="attack")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    run_or_exit("na-flip", flip, cfg)


if __name__ == "__main__":
    # mia-attack's config tree with the na_flip experiment (its flip.* settings), unless another is named.
    if not any(arg.startswith(("experiment=", "+experiment=")) for arg in sys.argv[1:]):
        sys.argv.append("experiment=na_flip")
    main()
