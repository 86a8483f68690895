"""SecMI_NN (Duan et al., "Are Diffusion Models Vulnerable to Membership Inference Attacks?", ICML 2023).

The learned variant of SecMI: a classifier over the residual image ``|x̂ − x̃_{t_sec}|`` of SecMI's round trip
(``SecMI.residual``: the same moves and queries as SecMI_stat), trained on the calibration part only.
The score is the classifier's logit of "member".

As in the reference code (jinhaoduan/SecMI, ``mia_evals/secmia.py``), the input is the absolute residual in
the model's [-1, 1] space, one channel per image channel, and the network a ResNet-18 with a CIFAR stem
(``architecture=resnet18``). mia's differences, each a config key: a small CNN by default (CPU-friendly);
the residual divided by a fitted scale (the training rows' RMS) since the small CNN has no batch norm
to absorb it; Adam and a logistic loss by default (the reference: SGD, momentum 0.9, weight decay 5e-4,
the logit regressed on the label by MSE; ``optimizer=sgd loss=mse``); and the epoch chosen on a held-out
part of the *calibration* rows, where the reference picks its checkpoint by accuracy on its test split.
Queries per sample: t_sec/interval + 2 (12 at the defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from mia.attacks.base import Attack, require
from mia.attacks.fitting import inner_split
from mia.attacks.residual_classifier import ARCHITECTURES, ResidualClassifier, build_network, train_classifier
from mia.attacks.sample_noise import SampleNoise
from mia.attacks.secmi import SecMI
from mia.checks import require_integer
from mia.targets.base import DiffusionTarget


@dataclasses.dataclass
class SecMINN(Attack):
    name: ClassVar[str] = "secmi_nn"
    learns_from_labels: ClassVar[bool] = True
    t_sec: int = 100  # timestep of SecMI's round trip (paper: 100)
    interval: int = 10  # SecMI's DDIM step (paper's k: 10)
    architecture: str = "cnn"  # cnn | resnet18
    width: int = 32  # channels of the small CNN's first layers (cnn only)
    epochs: int = 15  # training epochs (the reference's 15)
    batch_size: int = 64  # training batch
    lr: float = 1e-3  # learning rate (the reference's 1e-3)
    optimizer: str = "adam"  # adam | sgd (momentum 0.9, the reference's)
    weight_decay: float = 5e-4  # the reference's
    loss: str = "bce"  # bce (logistic) | mse (the reference's)
    validation: float = 0.2  # calibration fraction held out to pick the best epoch (0 = keep the last)
    accelerator: str = "cpu"  # device of the classifier's training: cpu | gpu | auto
    scoring_batch: int = 256  # samples per forward pass when scoring
    seed: int = 0  # seeds the initialisation, the batch order and the inner split (SecMI is deterministic)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._secmi = SecMI(t_sec=self.t_sec, interval=self.interval)  # validates t_sec and interval
        require(self.architecture in ARCHITECTURES,
                f"attack.architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        for key in ("width", "epochs", "batch_size", "scoring_batch"):
            value = getattr(self, key)
            require_integer(f"attack.{key}", value, minimum=1)
        require(self.lr > 0, f"attack.lr must be > 0, got {self.lr!r}")
        require(self.weight_decay >= 0, f"attack.weight_decay must be ≥ 0, got {self.weight_decay!r}")
        require(self.optimizer in ("adam", "sgd"), f"attack.optimizer must be adam or sgd, got {self.optimizer!r}")
        require(self.loss in ("bce", "mse"), f"attack.loss must be bce or mse, got {self.loss!r}")
        require(0 <= self.validation < 1, f"attack.validation must be a fraction in [0, 1), got {self.validation!r}")
        self._model: ResidualClassifier | None = None

    def check(self, target: DiffusionTarget) -> None:
        self._secmi.check(target)

    def prediction_settings(self) -> dict[str, Any]:
        """What the residuals depend on: SecMI's round trip, not the classifier."""
        return {"t_sec": self.t_sec, "interval": self.interval, "guidance_scale": self.guidance_scale}

    def collect(self, target: DiffusionTarget, x0: torch.Tensor, noise: SampleNoise, cond: Any = None) -> torch.Tensor:
        """The residuals [B, C, H, W], rounded to float32 as the cache stores them (fresh and cached runs agree)."""
        return self._secmi.residual(target, x0, cond).to(torch.float32)

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        x = features.detach().cpu().to(torch.float32)
        y = labels.detach().cpu().to(torch.float32)
        fit_rows, held_out = inner_split(y.numpy(), self.validation, self.seed, "attack.validation")
        fit_rows, held_out = torch.from_numpy(fit_rows), torch.from_numpy(held_out)
        scale = float(x[fit_rows].pow(2).mean().sqrt())
        scale = scale if np.isfinite(scale) and scale > 0 else 1.0
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, leaving the caller's generator alone
            torch.manual_seed(self.seed)
            network = build_network(self.architecture, x.shape[1], self.width)
        module = ResidualClassifier(network, scale, self.lr, self.weight_decay, self.optimizer, self.loss)
        training = train_classifier(module, x, y, fit_rows, held_out, self.epochs, self.batch_size,
                                    self.accelerator, self.seed)
        self._model = training.model
        best = training.history[training.best_epoch]
        return {
            "architecture": self.architecture,
            "parameters": sum(p.numel() for p in network.parameters()),
            "input_scale": scale,
            "n_fit": len(fit_rows),
            "n_validation": len(held_out),
            "best_epoch": training.best_epoch,
            "validation_auc": best.get("validation_auc"),
            "history": training.history,
        }

    @torch.no_grad()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("secmi_nn must be fitted on calibration residuals before it scores")
        device = self._model.scale.device
        x = features.detach().to(torch.float32)
        step = self.scoring_batch
        logits = [self._model(x[i:i + step].to(device)).cpu() for i in range(0, len(x), step)]
        return torch.cat(logits).to(torch.float64)
