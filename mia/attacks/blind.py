"""``blind``: a model-free control. It never queries the model: it tells the two sets apart from the images alone.

Das et al., "Blind Baselines Beat Membership Inference Attacks for Foundation Models" (2024): when members and
non-members come from different sources (LAION against COCO, say), a classifier that reads only the images
and captions separates them, and any attack's AUC includes that difference. mia runs this control on every
evaluation set given as two folders (mia.controls.blind) and as an attack of its own (``attack=blind``),
fitted on the calibration part and reported like every attack.

Per sample, from the decoded image the model would see (uint8, the model's size) and its caption if any:
per-channel intensity statistics (mean, std, 5th/50th/95th percentiles), saturation (RGB), sharpness (mean
gradient magnitude, Laplacian variance), the grey-level histogram's entropy, the 4x4 lowest-frequency
coefficients of the grey image's orthonormal DCT and the share of its energy above them (JPEG and resampling
leave traces there), and for captions their length in words and characters, the mean word length and a
hashed bag of words (32 buckets). The file's own format and size are not read: the evaluation set holds
the decoded, resized images, which is also all the attacks see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, ClassVar

import numpy as np
import torch

from mia.attacks.base import Attack, require
from mia.attacks.sample_noise import SampleNoise
from mia.targets.base import DiffusionTarget

CLASSIFIERS = ("logistic", "xgboost")
LOW_FREQUENCIES = 4  # the k x k lowest DCT coefficients kept
WORD_BUCKETS = 32


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix of size n (float64)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis


def image_features(images: torch.Tensor) -> torch.Tensor:
    """float64 [B, F] read from uint8 images [B, C, H, W] alone (see the module docstring)."""
    x = images.to(torch.float64) / 255.0
    flat = x.flatten(2)
    quantiles = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95], dtype=x.dtype), dim=2).permute(1, 2, 0)
    columns = [flat.mean(2), flat.std(2), quantiles.flatten(1)]
    grey = x.mean(1)
    if x.shape[1] == 3:
        spread = x.max(1).values - x.min(1).values  # a saturation per pixel
        columns.append(torch.stack([spread.flatten(1).mean(1), spread.flatten(1).std(1)], dim=1))
    dy, dx = grey.diff(dim=1), grey.diff(dim=2)
    centre = grey[:, 1:-1, 1:-1]
    laplacian = centre * 4 - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
    histogram = torch.stack([torch.histc(g, bins=16, min=0.0, max=1.0) for g in grey]) / grey[0].numel()
    entropy = -(histogram * torch.log(histogram.clamp_min(1e-12))).sum(1)
    columns.append(torch.stack([dy.abs().flatten(1).mean(1) + dx.abs().flatten(1).mean(1),
                                laplacian.flatten(1).var(1), entropy], dim=1))
    height, width = grey.shape[1:]
    coefficients = _dct_matrix(height) @ grey @ _dct_matrix(width).T
    k = min(LOW_FREQUENCIES, height, width)
    low = coefficients[:, :k, :k].flatten(1)
    energy = coefficients.pow(2).flatten(1).sum(1).clamp_min(1e-12)
    columns += [low, ((energy - low.pow(2).sum(1)) / energy)[:, None]]
    return torch.cat(columns, dim=1)


def caption_features(captions: list[str]) -> torch.Tensor:
    """float64 [B, 3 + WORD_BUCKETS]: words, characters, mean word length, a hashed bag of words (frequencies)."""
    rows = []
    for caption in captions:
        words = caption.lower().split()
        buckets = np.zeros(WORD_BUCKETS)
        for word in words:  # a stable hash (Python's own is salted per process)
            buckets[int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % WORD_BUCKETS] += 1
        mean_length = sum(len(w) for w in words) / len(words) if words else 0.0
        rows.append([len(words), len(caption), mean_length, *(buckets / max(1, len(words)))])
    return torch.tensor(rows, dtype=torch.float64)


def blind_features(images: torch.Tensor, captions: list[str] | None = None) -> torch.Tensor:
    """The blind control's features of a batch: the images', and the captions' when there are captions.

    Image by image, so that a sample's features do not depend on its batch (batched matrix products round
    differently with the batch's size).
    """
    features = torch.cat([image_features(image[None]) for image in images])
    return features if captions is None else torch.cat([features, caption_features(list(captions))], dim=1)


def blind_classifier(kind: str, seed: int) -> Any:
    """A scikit-learn classifier on standardised features: logistic regression, or gradient-boosted trees."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    from xgboost import XGBClassifier

    return make_pipeline(StandardScaler(), XGBClassifier(n_estimators=100, max_depth=3, learning_rate=0.1,
                                                         n_jobs=1, random_state=seed))


def decision(model: Any, values: np.ndarray) -> np.ndarray:
    """The classifier's log-odds of the positive class (probabilities round to 1 and tie; margins do not)."""
    return np.asarray(model.decision_function(values) if hasattr(model, "decision_function")
                      else model.predict(values, output_margin=True), dtype=np.float64)


@dataclasses.dataclass
class BlindAttack(Attack):
    """A classifier over what the images (and captions) show, fitted on calibration; zero model queries."""

    name: ClassVar[str] = "blind"
    learns_from_labels: ClassVar[bool] = True
    classifier: str = "logistic"  # logistic (regression on standardised features) | xgboost
    seed: int = 0  # seeds the classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.classifier in CLASSIFIERS,
                f"attack.classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")
        self._model: Any = None

    def inputs(self, target: DiffusionTarget, batch: dict[str, Any], noise: SampleNoise) -> tuple[torch.Tensor, Any]:
        """The batch's own images (uint8) and captions: nothing goes through the target, not even its encoder."""
        return batch["image"], batch.get("caption")

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        return blind_features(x0, cond)

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        self._model = blind_classifier(self.classifier, self.seed).fit(features.numpy(), labels.numpy().astype(int))
        return {"classifier": self.classifier, "features": int(features.shape[1]), "n_fit": len(labels)}

    def score(self, features: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("the blind attack must be fitted on calibration features before it scores")
        return torch.from_numpy(decision(self._model, features.numpy()))
