"""Per-sample feature vectors made from an attack's model queries: the inputs of the ``learned`` attack.

Each feature set runs one of mia's attacks (its own moves and queries, never a copy of them) and keeps a
short vector per sample instead of one score:

- ``na``: NA's k predictions along its path (``NoiseAggregation.collect``) -> the k(k−1)/2 pairwise L2
  distances ‖ε̂_i − ε̂_j‖, the k norms ‖ε̂_i‖, and the paper's statistic (1/k²)·Σ‖ε̂_i − ε̂_j‖². k queries.
- ``secmi``: SecMI's residual |x̂ − x̃_{t_sec}| (``SecMI.residual``) -> its sum of squares (SecMI_stat's
  statistic), mean, standard deviation, maximum, median, 90th and 99th percentiles, and the sum of squares
  per channel. t_sec/interval + 2 queries.
- ``loss_multi_t``: the loss attack's ‖ε_θ(x_t, t) − ε‖² at each of several t (the same seeded ε at every
  t). One query per t (per draw).
- ``sima_multi_t``: SimA's Σ|ε_θ(x0, t)|^p at each of several t. One query per t.

A feature set's settings are those of the attack it runs (``attack.source``, over that attack's defaults);
the noise seed is the learned attack's own ``attack.seed``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from mia.attacks.base import Attack
from mia.attacks.loss import LossAttack
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.attacks.sample_noise import SampleNoise
from mia.attacks.secmi import SecMI
from mia.attacks.sima import SimA
from mia.checks import require_integer
from mia.errors import MiaError
from mia.targets.base import DiffusionTarget


def _build(cls: type[Attack], source: dict[str, Any], features: str, excluded: set[str]) -> Attack:
    """``cls(**source)``, refusing keys that are not ``cls``'s settings (or that the feature set fixes)."""
    # Guidance and calibration are the learned attack's own settings (attack.guidance_scale, attack.calibration).
    allowed = {f.name for f in dataclasses.fields(cls)} - excluded - {"guidance_scale", "calibration"}
    unknown = sorted(set(source) - allowed)
    if unknown:
        hint = "; the noise seed is attack.seed" if "seed" in unknown else ""
        raise MiaError(f"attack.source.{unknown[0]} is not a setting of the {features} features; they take "
                       f"{', '.join(sorted(allowed))}{hint}")
    return cls(**source)


class FeatureSet:
    """One attack's queries, kept as a feature vector per sample."""

    name: ClassVar[str]

    def check(self, target: DiffusionTarget) -> None:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What the features depend on (besides the target, the samples and the noise seed)."""
        raise NotImplementedError

    def columns(self, sample_shape: tuple[int, ...]) -> list[str]:
        """The name of each feature, in order."""
        raise NotImplementedError

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any) -> torch.Tensor:
        """float64 [B, F]."""
        raise NotImplementedError


class NAFeatures(FeatureSet):
    name = "na"

    def __init__(self, source: dict[str, Any]) -> None:
        # The statistic and δ only aggregate the predictions; the classifier replaces them.
        self.attack: NoiseAggregation = _build(NoiseAggregation, source, self.name, {"seed", "statistic", "delta"})

    def check(self, target: DiffusionTarget) -> None:
        self.attack.check(target)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.attack.prediction_settings().items() if k != "seed"}

    def columns(self, sample_shape: tuple[int, ...]) -> list[str]:
        k = self.attack.k
        pairs = [f"dist_{i}_{j}" for i in range(k) for j in range(i + 1, k)]
        return [*pairs, *(f"norm_{i}" for i in range(k)), "pairwise_l2"]

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any) -> torch.Tensor:
        eps = self.attack.collect(target, x0, noise, cond).to(torch.float64)
        k = eps.shape[1]
        # Exact differences (no matrix-product shortcut), as NA's own statistics: members' are tiny.
        dist = torch.cdist(eps, eps, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
        upper = torch.triu_indices(k, k, offset=1, device=eps.device)
        pairs = dist[:, upper[0], upper[1]]
        statistic = dist.pow(2).sum((1, 2)) / k**2
        return torch.cat([pairs, eps.norm(dim=2), statistic[:, None]], dim=1)


class SecMIFeatures(FeatureSet):
    name = "secmi"
    QUANTILES: ClassVar[tuple[float, ...]] = (0.5, 0.9, 0.99)

    def __init__(self, source: dict[str, Any]) -> None:
        self.attack: SecMI = _build(SecMI, source, self.name, {"seed"})

    def check(self, target: DiffusionTarget) -> None:
        self.attack.check(target)

    def settings(self) -> dict[str, Any]:
        return {"t_sec": self.attack.t_sec, "interval": self.attack.interval}

    def columns(self, sample_shape: tuple[int, ...]) -> list[str]:
        quantiles = [f"q{round(100 * q)}" for q in self.QUANTILES]
        return ["sum_sq", "mean", "std", "max", *quantiles, *(f"sum_sq_c{c}" for c in range(sample_shape[0]))]

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any) -> torch.Tensor:
        residual = self.attack.residual(target, x0, cond)
        flat = residual.flatten(1)
        quantiles = torch.quantile(flat, torch.tensor(self.QUANTILES, dtype=flat.dtype, device=flat.device), dim=1).T
        per_channel = residual.pow(2).flatten(2).sum(2)
        summary = [flat.pow(2).sum(1), flat.mean(1), flat.std(1), flat.max(1).values]
        return torch.cat([torch.stack(summary, dim=1), quantiles, per_channel], dim=1)


class MultiTimestep(FeatureSet):
    """One attack's score at each of several timesteps (``attack.source.timesteps``)."""

    base: ClassVar[type[Attack]]
    default_timesteps: ClassVar[tuple[int, ...]]
    column: ClassVar[str]

    def __init__(self, source: dict[str, Any]) -> None:
        source = dict(source)
        timesteps = list(source.pop("timesteps", self.default_timesteps))
        if not timesteps or len(set(timesteps)) != len(timesteps):
            raise MiaError(f"attack.source.timesteps must be a non-empty list of distinct integer timesteps, "
                           f"got {timesteps!r}")
        for i, t in enumerate(timesteps):
            require_integer(f"attack.source.timesteps[{i}]", t, minimum=0)
        if "t" in source:
            raise MiaError(f"the {self.name} features take attack.source.timesteps (a list), not attack.source.t")
        self.attacks = [_build(self.base, {**source, "t": t}, self.name, {"seed"}) for t in timesteps]

    def check(self, target: DiffusionTarget) -> None:
        for attack in self.attacks:
            attack.check(target)

    def settings(self) -> dict[str, Any]:
        first = {k: v for k, v in self.attacks[0].settings().items() if k not in ("seed", "t")}
        return {"timesteps": [a.t for a in self.attacks], **first}

    def columns(self, sample_shape: tuple[int, ...]) -> list[str]:
        return [f"{self.column}_t{a.t}" for a in self.attacks]

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any) -> torch.Tensor:
        # Each score is oriented higher = member (a negated loss); the features keep the loss itself.
        return torch.stack([-a.scores_of(target, x0, noise, cond) for a in self.attacks], dim=1).to(torch.float64)


class LossFeatures(MultiTimestep):
    name = "loss_multi_t"
    base = LossAttack
    default_timesteps = (50, 100, 200, 300, 500)
    column = "loss"


class SimAFeatures(MultiTimestep):
    name = "sima_multi_t"
    base = SimA
    default_timesteps = (10, 50, 100, 200, 300)
    column = "abs_pow_p"


FEATURE_SETS: dict[str, type[FeatureSet]] = {
    cls.name: cls for cls in (NAFeatures, SecMIFeatures, LossFeatures, SimAFeatures)
}


def feature_set(name: str, source: dict[str, Any] | None) -> FeatureSet:
    if name not in FEATURE_SETS:
        raise MiaError(f"attack.features must be one of {', '.join(FEATURE_SETS)}, got {name!r}")
    if source is not None and not isinstance(source, dict):
        raise MiaError(f"attack.source must be a mapping of the {name} attack's settings, got {source!r}")
    return FEATURE_SETS[name](dict(source or {}))
