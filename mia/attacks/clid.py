"""CLiD (Zhai et al., "Membership Inference on Text-to-image Diffusion Models via Conditional Likelihood
Discrepancy", NeurIPS 2024; reference code zhaisf/CLiD), text-conditional targets only.

A model overfits the conditional distribution of its training images given their captions more than
their marginal one. Per sample, with one seeded noise per timestep shared by every condition, CLiD
measures the denoising loss ``L_c = mean_t mean ‖ε_θ(x_t, t, c) − ε‖²`` under the caption c₀, under
degraded captions c₁..c_m (a growing share of the words replaced by the text encoder's end-of-text token)
and under the empty caption ∅. The features are ``[L₀, L₁−L₀, …, L_m−L₀, L∅−L₀]``: a member has a small
L₀ and large gaps. Queries per sample: |timesteps| × (m + 2) (15 at the defaults).

Two scores, both fitted on the protocol's calibration part only (``learns_from_labels``) and oriented higher
= member: ``clid_th`` mixes the robust-scaled L₀ and −mean(Δ) with a weight α chosen by calibration AUC;
``clid_vec`` is a gradient-boosted classifier (XGBoost) on the features.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch

from mia.attacks.base import Attack, require
from mia.attacks.moves import forward_noise
from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_integer
from mia.errors import MiaError, NotApplicable
from mia.evaluation.metrics import auc, roc_curve
from mia.targets.base import DiffusionTarget

# Function words: the least important words of a caption, degraded last.
STOP_WORDS = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "with", "and", "or", "but", "is", "are", "was", "were", "be",
    "been", "being", "by", "for", "from", "as", "into", "onto", "over", "under", "near", "its", "it", "this", "that",
    "these", "those", "his", "her", "their", "there", "here", "some", "while", "who", "which", "than", "then", "very",
})
DEGRADE_RULE = "content-words-longest-first/1"  # names the rule below; part of the features' cache key


def _core(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def degrade(caption: str, fraction: float, token: str) -> str:
    """``caption`` with ⌈fraction·n⌉ of its n words replaced by ``token``, the most important first.

    Importance, deterministically and without a model: content words before function words
    (``STOP_WORDS``, punctuation), longer words before shorter ones, earlier before later.
    """
    words = caption.split()
    count = min(len(words), math.ceil(fraction * len(words) - 1e-9))  # 0.3 × 10 is 3, not 4
    order = sorted(range(len(words)), key=lambda i: (_core(words[i]) in STOP_WORDS or not _core(words[i]),
                                                     -len(_core(words[i])), i))
    chosen = set(order[:count])
    return " ".join(token if i in chosen else word for i, word in enumerate(words))


@dataclasses.dataclass
class CLiDFeatures(Attack):
    """The features of CLiD (``collect``); the subclasses fit a score on them."""

    name: ClassVar[str] = "clid"
    learns_from_labels: ClassVar[bool] = True
    timesteps: list[int] = dataclasses.field(default_factory=lambda: [440, 450, 460])  # as the reference's
    degradation: list[float] = dataclasses.field(default_factory=lambda: [0.3, 0.5, 0.7])  # share of words replaced
    seed: int = 0  # seeds the noise (per sample and timestep, shared by every condition)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.timesteps, self.degradation = list(self.timesteps), list(self.degradation)
        require(bool(self.timesteps), f"attack.timesteps must be a non-empty list of integer timesteps, got "
                                      f"{self.timesteps!r}")
        for i, t in enumerate(self.timesteps):
            require_integer(f"attack.timesteps[{i}]", t, minimum=0)
        require(bool(self.degradation) and all(isinstance(r, int | float) and not isinstance(r, bool) and 0 < r <= 1
                                               for r in self.degradation),
                f"attack.degradation must be a non-empty list of fractions in (0, 1], got {self.degradation!r}")

    def check(self, target: DiffusionTarget) -> None:
        if target.conditioning != "text":
            kind = "unconditional" if target.conditioning is None else f"{target.conditioning}-conditional"
            raise NotApplicable(f"{self.name} compares captions and needs a text-conditional target; "
                           f"{target.name} is {kind}")
        for t in self.timesteps:
            self._check_timestep(target, t, "attack.timesteps")
        if not getattr(target.tokenizer, "eos_token", None):
            raise MiaError(f"{target.name}'s tokenizer has no end-of-text token to degrade captions with")

    def prediction_settings(self) -> dict[str, Any]:
        """What the features depend on (not the fitted score's settings)."""
        return {"timesteps": self.timesteps, "degradation": self.degradation, "seed": self.seed,
                "guidance_scale": self.guidance_scale, "degrade": DEGRADE_RULE}

    def conditions(self, target: DiffusionTarget, cond: Any) -> list[Any]:
        """c₀ (the batch's), c₁..c_m (degraded), ∅ (the empty caption), with the batch's guidance."""
        captions = cond.captions
        if not any(c.strip() for c in captions):
            raise MiaError(f"{self.name} compares each caption with degraded ones, but every caption of the batch is "
                           "empty (data.caption=none?); give the evaluation set its captions")
        token = target.tokenizer.eos_token
        degraded = [target.text_condition([degrade(c, r, token) for c in captions], cond.guidance_scale)
                    for r in self.degradation]
        return [cond, *degraded, target.empty_condition(len(captions), cond.guidance_scale)]

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """Features [B, m + 2]: L₀ and the gaps L_i − L₀, L∅ − L₀."""
        conditions = self.conditions(target, cond)
        losses = torch.zeros(len(x0), len(conditions), dtype=torch.float64, device=x0.device)
        for stream, t in enumerate(self.timesteps):
            eps = noise.randn(x0.shape[1:], stream=stream, device=x0.device).double()
            x_t = forward_noise(target, x0, eps, t)  # the same x_t under every condition
            for column, condition in enumerate(conditions):
                error = target.predict_noise(x_t, t, condition).double() - eps
                losses[:, column] += error.flatten(1).pow(2).mean(1)
        losses /= len(self.timesteps)
        # Gaps taken in float64, then stored as float32, as the prediction cache holds them: a run that
        # reads cached features then fits and scores exactly what the run that made them did.
        return torch.cat([losses[:, :1], losses[:, 1:] - losses[:, :1]], dim=1).float()

    def _require_fit(self, fitted: object) -> None:
        if fitted is None:
            raise RuntimeError(f"{self.name} must be fitted on calibration features before it scores")


def _robust_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, interquartile range) per column, as scikit-learn's RobustScaler (a zero range scales by 1)."""
    from sklearn.preprocessing import RobustScaler

    scaler = RobustScaler().fit(values)
    return scaler.center_, scaler.scale_


@dataclasses.dataclass
class CLiDThreshold(CLiDFeatures):
    """``clid_th``: −[(1−α)·L₀ + α·(−mean Δ)] on robust-scaled columns, α chosen by calibration AUC."""

    name: ClassVar[str] = "clid_th"
    alphas: list[float] = dataclasses.field(default_factory=lambda: [i / 10 for i in range(11)])  # α grid

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alphas = list(self.alphas)
        require(bool(self.alphas) and all(isinstance(a, int | float) and 0 <= a <= 1 for a in self.alphas),
                f"attack.alphas must be a non-empty list of weights in [0, 1], got {self.alphas!r}")
        self._fit: tuple[float, np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _columns(features: torch.Tensor) -> np.ndarray:
        values = features.detach().cpu().double().numpy()
        return np.stack([values[:, 0], -values[:, 1:].mean(1)], axis=1)  # L₀ and −mean Δ (∅ included)

    @staticmethod
    def _mix(scaled: np.ndarray, alpha: float) -> np.ndarray:
        return -((1 - alpha) * scaled[:, 0] + alpha * scaled[:, 1])  # low loss, large gaps = member

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        columns = self._columns(features)
        center, scale = _robust_scale(columns)
        scaled, labels = (columns - center) / scale, labels.numpy()
        by_alpha = {alpha: auc(roc_curve(self._mix(scaled, alpha), labels)) for alpha in self.alphas}
        alpha = max(self.alphas, key=lambda a: by_alpha[a])  # the first of equals: the grid's order decides
        self._fit = (alpha, center, scale)
        return {"alpha": alpha, "calibration_auc": by_alpha[alpha],
                "robust_center": center.tolist(), "robust_scale": scale.tolist()}

    def score(self, features: torch.Tensor) -> torch.Tensor:
        self._require_fit(self._fit)
        alpha, center, scale = self._fit
        return torch.from_numpy(self._mix((self._columns(features) - center) / scale, alpha))


@dataclasses.dataclass
class CLiDClassifier(CLiDFeatures):
    """``clid_vec``: P(member | features) from gradient-boosted trees (XGBoost) fitted on calibration."""

    name: ClassVar[str] = "clid_vec"
    n_estimators: int = 20  # boosting rounds (the reference's 20)
    max_depth: int = 3  # depth of each tree
    learning_rate: float = 0.3  # shrinkage (XGBoost's default)
    subsample: float = 0.7  # rows sampled per tree
    colsample_bytree: float = 0.7  # features sampled per tree
    gamma: float = 0.7  # minimum loss reduction to split
    reg_alpha: float = 1.0  # L1 penalty on leaf weights
    reg_lambda: float = 1.0  # L2 penalty on leaf weights
    classifier_seed: int = 0  # seeds the row and feature sampling

    def __post_init__(self) -> None:
        super().__post_init__()
        require_integer("attack.n_estimators", self.n_estimators, minimum=1)
        require_integer("attack.max_depth", self.max_depth, minimum=1)
        for key in ("subsample", "colsample_bytree"):
            require(0 < getattr(self, key) <= 1, f"attack.{key} must be in (0, 1], got {getattr(self, key)!r}")
        self._model = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        from xgboost import XGBClassifier

        settings = {k: getattr(self, k) for k in ("n_estimators", "max_depth", "learning_rate", "subsample",
                                                 "colsample_bytree", "gamma", "reg_alpha", "reg_lambda")}
        # Members are the positive class (label 1); the reference labels them 0 and reads P(non-member).
        self._model = XGBClassifier(**settings, random_state=self.classifier_seed, n_jobs=1)
        values = features.detach().cpu().double().numpy()
        self._model.fit(values, labels.numpy().astype(int))
        constant = bool(np.ptp(self._model.predict_proba(values)[:, 1]) == 0)
        chosen = {"classifier": "xgboost", "calibration_rows": len(labels), "constant": constant}
        if constant:
            chosen["warning"] = (f"clid_vec's classifier fitted on {len(labels)} calibration rows predicts one value "
                                 "for every sample (too few rows for its settings to split on): its scores carry no "
                                 "information; attack more samples or raise protocol.calibration")
        return chosen

    def score(self, features: torch.Tensor) -> torch.Tensor:
        self._require_fit(self._model)
        proba = self._model.predict_proba(features.detach().cpu().double().numpy())[:, 1]
        return torch.from_numpy(proba.astype(np.float64))
