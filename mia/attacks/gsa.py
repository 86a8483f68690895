"""GSA (Pang et al., "White-box Membership Inference Attacks against Diffusion Models", PoPETs 2025; code
py85252876/GSA, ``DDPM/gen_l2_gradients_DDPM.py`` and ``test_attack_accuracy.py``).

Per sample, at K timesteps spread over the schedule (``(T//K)·i − 1``, i = 1..K: 99, 199, …, 999 for T = 1000
and K = 10, the reference's), x0 is noised with independent seeded noise per timestep and the denoising loss
``MSE(ε_θ(x_t, t), ε)`` is differentiated with respect to the denoiser's parameters. The features are the L2
norms of the gradient of each parameter tensor (every weight and bias its own entry; ``attack.layers`` picks a
subset by name):

- ``gsa1``: the loss averaged over the K timesteps, one gradient (the reference's ``--attack_method 1``);
- ``gsa2``: one gradient per timestep, the K norm vectors averaged (``--attack_method 2``).

An XGBoost classifier (200 rounds and XGBoost's defaults otherwise, as the reference) is fitted on the
calibration part; the score is its log-odds of "member". Gradients are taken one sample at a time, so a
sample's features never depend on its batch. Cost per sample: K queries (forward passes) and K gradient
passes (backward passes through one sample-forward each), counted apart (``queries_per_sample``,
``gradient_passes_per_sample``). docs/method.md, "GSA".
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mia.attacks.base import Attack, require
from mia.attacks.fitting import inner_split
from mia.attacks.gradients import autograd_on, chosen_parameters, gradient_norms, ordinary, sample_condition
from mia.attacks.moves import forward_noise
from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_integer
from mia.errors import MiaError
from mia.evaluation.metrics import auc, roc_curve
from mia.targets.base import DiffusionTarget

# The classifier's knobs: they change the fit, never the gradients (left out of the cache key).
CLASSIFIER_SETTINGS = ("n_estimators", "max_depth", "learning_rate", "validation", "n_jobs", "classifier_seed")


def gsa_timesteps(num_timesteps: int, k: int) -> list[int]:
    """The reference's ``[x − 1 for x in range(T/K, T + 1, T/K)]``, kept to K entries (the same when K divides T)."""
    step = num_timesteps // k
    return [step * i - 1 for i in range(1, k + 1)]


@dataclasses.dataclass
class GSA1(Attack):
    """GSA1: the gradient of the loss averaged over K timesteps; per-tensor L2 norms; XGBoost on calibration."""

    name: ClassVar[str] = "gsa1"
    learns_from_labels: ClassVar[bool] = True
    k: int = 10  # timesteps (T//k)·i − 1, i = 1..k (99, 199, …, 999 for T = 1000)
    layers: list[str] | None = None  # glob patterns over the denoiser's parameter names; None = every tensor
    n_estimators: int = 200  # XGBoost rounds (the reference's)
    max_depth: int | None = None  # None = XGBoost's default (6), as the reference
    learning_rate: float | None = None  # None = XGBoost's default (0.3), as the reference
    validation: float = 0.25  # calibration fraction held out to report a validation AUC before refitting on all
    n_jobs: int = 1  # classifier threads
    classifier_seed: int = 0  # seeds the classifier and the inner split
    seed: int = 0  # seeds the noise, per sample and timestep

    def __post_init__(self) -> None:
        super().__post_init__()
        require_integer("attack.k", self.k, minimum=1)
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(p, str) for p in self.layers) or not self.layers:
                raise MiaError(f"attack.layers must be a non-empty list of glob patterns over parameter names "
                               f"(e.g. ['conv_in.*', '*attentions*']) or null for all, got {self.layers!r}")
            self.layers = list(self.layers)
        for key in ("n_estimators", "n_jobs"):
            require_integer(f"attack.{key}", getattr(self, key), minimum=1)
        if self.max_depth is not None:
            require_integer("attack.max_depth", self.max_depth, minimum=1)
        require(self.learning_rate is None or self.learning_rate > 0,
                f"attack.learning_rate must be > 0 (or null: XGBoost's default), got {self.learning_rate!r}")
        require(0 <= self.validation < 1, f"attack.validation must be a fraction in [0, 1), got {self.validation!r}")
        self._model: Any = None
        self._columns: list[str] | None = None

    def timesteps(self, target: DiffusionTarget) -> list[int]:
        return gsa_timesteps(target.num_timesteps, self.k)

    def check(self, target: DiffusionTarget) -> None:
        require(self.k <= target.num_timesteps,
                f"attack.k={self.k} timesteps do not fit the target's {target.num_timesteps}; lower attack.k")
        self._columns = [name for name, _ in chosen_parameters(target, self.layers)]

    def prediction_settings(self) -> dict[str, Any]:
        """What the gradient norms depend on: the timesteps, the layers, the noise seed, not the classifier."""
        return {k: v for k, v in super().prediction_settings().items() if k not in CLASSIFIER_SETTINGS}

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """float32 [B, P]: the gradient norms of each sample, computed one sample at a time."""
        parameters = [p for _, p in chosen_parameters(target, self.layers)]
        timesteps = self.timesteps(target)
        eps = noise.randn((len(timesteps), *x0.shape[1:]), device=x0.device)  # [B, K, ...]: one draw per timestep
        rows = []
        # One sample per pass, and passes of one row: a fixed shape (batch-invariant, mia.targets.base) without
        # padding a gradient pass to the target's micro-batch.
        micro_batch, target.micro_batch = target.micro_batch, 1
        with autograd_on(parameters), restored(target, micro_batch):
            for row in range(len(x0)):
                rows.append(self.sample_features(target, ordinary(x0[row:row + 1]), ordinary(eps[row]),
                                                 sample_condition(cond, row), timesteps, parameters))
        return torch.stack(rows)

    def sample_features(self, target: DiffusionTarget, x0: torch.Tensor, eps: torch.Tensor, cond: Any,
                        timesteps: list[int], parameters: list[torch.nn.Parameter]) -> torch.Tensor:
        """GSA1: ``F.mse_loss`` over the K noised copies (the mean over timesteps and pixels), one gradient."""
        predictions = [target.predict_noise(forward_noise(target, x0, eps[j:j + 1], t), t, cond)
                       for j, t in enumerate(timesteps)]
        return gradient_norms(F.mse_loss(torch.cat(predictions), eps), parameters)

    def _classifier(self) -> Any:
        from xgboost import XGBClassifier

        optional = {"max_depth": self.max_depth, "learning_rate": self.learning_rate}
        return XGBClassifier(n_estimators=self.n_estimators, n_jobs=self.n_jobs, random_state=self.classifier_seed,
                             **{k: v for k, v in optional.items() if v is not None})

    @staticmethod
    def _margin(model: Any, values: np.ndarray) -> np.ndarray:
        """Log-odds of "member" (probabilities round to 1.0 and tie; margins do not)."""
        return np.asarray(model.predict(values, output_margin=True), dtype=np.float64)

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        values = features.detach().cpu().to(torch.float64).numpy().reshape(len(features), -1)
        labels = labels.cpu().numpy().astype(int)
        fit_rows, held_out = inner_split(labels, self.validation, self.classifier_seed, "attack.validation")
        validation_auc = None
        if len(held_out):
            model = self._classifier().fit(values[fit_rows], labels[fit_rows])
            validation_auc = auc(roc_curve(self._margin(model, values[held_out]), labels[held_out]))
        self._model = self._classifier().fit(values, labels)  # the final classifier: every calibration row
        columns = self._columns or [f"f{i}" for i in range(values.shape[1])]
        weights = np.asarray(self._model.feature_importances_)
        top = np.argsort(-weights, kind="stable")[:20]
        return {
            "classifier": "xgboost",
            "n_features": values.shape[1],
            "n_fit": len(values),
            "validation": {"n_fit": len(fit_rows), "n_validation": len(held_out), "auc": validation_auc},
            "training_auc": auc(roc_curve(self._margin(self._model, values), labels)),  # in-sample: optimistic
            "feature_importance": {columns[i]: round(float(weights[i]), 6) for i in top if weights[i] > 0},
        }

    def score(self, features: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError(f"{self.name} must be fitted on calibration features before it scores")
        values = features.detach().cpu().to(torch.float64).numpy().reshape(len(features), -1)
        return torch.from_numpy(self._margin(self._model, values))


@dataclasses.dataclass
class GSA2(GSA1):
    """GSA2: one gradient per timestep; the K per-tensor norm vectors averaged."""

    name: ClassVar[str] = "gsa2"

    def sample_features(self, target: DiffusionTarget, x0: torch.Tensor, eps: torch.Tensor, cond: Any,
                        timesteps: list[int], parameters: list[torch.nn.Parameter]) -> torch.Tensor:
        """The mean over timesteps of the norms of ∂MSE(ε_θ(x_t, t), ε)/∂p: a forward and a backward per timestep
        (the reference backpropagates each timestep's loss through one K-batch forward: the same gradients)."""
        norms = []
        for j, t in enumerate(timesteps):
            prediction = target.predict_noise(forward_noise(target, x0, eps[j:j + 1], t), t, cond)
            norms.append(gradient_norms(F.mse_loss(prediction, eps[j:j + 1]), parameters))
        return torch.stack(norms).mean(0)


@contextlib.contextmanager
def restored(target: DiffusionTarget, micro_batch: int | None):
    """Give the target back its micro-batch, however the block ends."""
    try:
        yield
    finally:
        target.micro_batch = micro_batch
