"""``learned``: a gradient-boosted classifier over an attack's per-sample features, fitted on calibration only.

``collect`` runs the feature set's attack (``attack.features``: na, secmi, loss_multi_t, sima_multi_t; see
``mia.attacks.features``) and keeps a short feature vector per sample; those are what the prediction cache
stores, so refitting with other classifier settings makes no model queries. ``fit`` (calibration rows
only, through the protocol) first fits on a seeded inner split and measures AUC on the held-out rest,
to report how well the classifier generalises, then refits on every calibration row. ``score``
scores by the classifier's margin (log-odds of "member"), higher = member. Queries per sample: the
feature set's (k = 5 for na at its defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from mia.attacks.base import Attack, require
from mia.attacks.features import FeatureSet, feature_set
from mia.attacks.fitting import inner_split
from mia.attacks.sample_noise import SampleNoise
from mia.checks import require_integer
from mia.evaluation.metrics import auc, roc_curve
from mia.targets.base import DiffusionTarget

CLASSIFIERS = ("xgboost", "hist_gradient_boosting")


@dataclasses.dataclass
class LearnedAttack(Attack):
    name: ClassVar[str] = "learned"
    learns_from_labels: ClassVar[bool] = True
    features: str = "na"  # na | secmi | loss_multi_t | sima_multi_t
    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # the feature attack's settings
    classifier: str = "xgboost"  # xgboost | hist_gradient_boosting (scikit-learn)
    n_estimators: int = 100  # boosting rounds
    max_depth: int = 3  # depth of each tree
    learning_rate: float = 0.1  # shrinkage
    l2_regularization: float = 1.0  # L2 penalty on leaf values (XGBoost's reg_lambda)
    subsample: float = 1.0  # rows sampled per tree (xgboost only)
    min_child_weight: float = 1.0  # least hessian in a leaf (xgboost only)
    min_samples_leaf: int = 5  # least rows in a leaf (hist_gradient_boosting only)
    validation: float = 0.25  # calibration fraction held out to report a validation AUC (0 = none)
    n_jobs: int = 1  # classifier threads
    classifier_seed: int = 0  # seeds the classifier's sampling and the inner split
    seed: int = 0  # seeds the features' noise, per sample

    def __post_init__(self) -> None:
        super().__post_init__()
        self.source = dict(self.source or {})
        self._set: FeatureSet = feature_set(self.features, self.source)
        require(self.classifier in CLASSIFIERS,
                f"attack.classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")
        for key in ("n_estimators", "max_depth", "min_samples_leaf", "n_jobs"):
            value = getattr(self, key)
            require_integer(f"attack.{key}", value, minimum=1)
        require(self.learning_rate > 0, f"attack.learning_rate must be > 0, got {self.learning_rate!r}")
        require(0 < self.subsample <= 1, f"attack.subsample must be in (0, 1], got {self.subsample!r}")
        require(0 <= self.validation < 1, f"attack.validation must be a fraction in [0, 1), got {self.validation!r}")
        self._model: Any = None

    def check(self, target: DiffusionTarget) -> None:
        self._set.check(target)
        self._columns = self._set.columns(target.sample_shape)

    def prediction_settings(self) -> dict[str, Any]:
        """What the features depend on: the feature set, its attack's settings and the noise seed."""
        return {"features": self.features, "source": self._set.settings(), "seed": self.seed,
                "guidance_scale": self.guidance_scale}

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        # Rounded to float32 as the cache stores them, so a fresh run and a cached one fit the same values.
        return self._set.collect(target, x0, noise, cond).to(torch.float32)

    def _classifier(self) -> Any:
        if self.classifier == "xgboost":
            from xgboost import XGBClassifier

            return XGBClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                 learning_rate=self.learning_rate, reg_lambda=self.l2_regularization,
                                 subsample=self.subsample, min_child_weight=self.min_child_weight,
                                 tree_method="hist", n_jobs=self.n_jobs, random_state=self.classifier_seed)
        from sklearn.ensemble import HistGradientBoostingClassifier

        # No early stopping: it would split the calibration rows again, on its own terms.
        return HistGradientBoostingClassifier(max_iter=self.n_estimators, max_depth=self.max_depth,
                                              learning_rate=self.learning_rate,
                                              l2_regularization=self.l2_regularization,
                                              min_samples_leaf=self.min_samples_leaf, early_stopping=False,
                                              random_state=self.classifier_seed)

    def _threads(self) -> Any:
        """scikit-learn's histogram boosting takes its threads from OpenMP: held to ``n_jobs`` here."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self.n_jobs, user_api="openmp")

    def _margin(self, model: Any, values: np.ndarray) -> np.ndarray:
        """Log-odds of "member" (a probability rounds to 1.0 and ties; the margin does not)."""
        if self.classifier == "xgboost":
            return np.asarray(model.predict(values, output_margin=True), dtype=np.float64)
        with self._threads():
            return np.asarray(model.decision_function(values), dtype=np.float64)

    def _fitted(self, values: np.ndarray, labels: np.ndarray) -> Any:
        with self._threads():
            return self._classifier().fit(values, labels)

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        values = features.detach().cpu().to(torch.float64).numpy().reshape(len(features), -1)
        labels = labels.cpu().numpy().astype(int)
        fit_rows, held_out = inner_split(labels, self.validation, self.classifier_seed, "attack.validation")
        validation_auc = None
        if len(held_out):
            model = self._fitted(values[fit_rows], labels[fit_rows])
            validation_auc = auc(roc_curve(self._margin(model, values[held_out]), labels[held_out]))
        self._model = self._fitted(values, labels)  # the final classifier: every calibration row
        columns = getattr(self, "_columns", None) or [f"f{i}" for i in range(values.shape[1])]
        importance = self._importance(self._model, columns)
        return {
            "classifier": self.classifier,
            "features": columns,
            "n_fit": len(values),
            "validation": {"n_fit": len(fit_rows), "n_validation": len(held_out), "auc": validation_auc},
            "training_auc": auc(roc_curve(self._margin(self._model, values), labels)),  # in-sample: optimistic
            **({"feature_importance": importance} if importance else {}),
        }

    @staticmethod
    def _importance(model: Any, columns: list[str]) -> dict[str, float]:
        """XGBoost's gain importances, largest first (scikit-learn's histogram boosting has none)."""
        weights = getattr(model, "feature_importances_", None)
        if weights is None:
            return {}
        order = np.argsort(-np.asarray(weights), kind="stable")
        return {columns[i]: round(float(weights[i]), 6) for i in order if weights[i] > 0}

    def score(self, features: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("the learned attack must be fitted on calibration features before it scores")
        values = features.detach().cpu().to(torch.float64).numpy().reshape(len(features), -1)
        return torch.from_numpy(self._margin(self._model, values))

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings["source"] = self._set.settings()  # resolved: the feature attack's defaults spelled out
        return settings
