"""SecMI_NN's classifier: a network over residual images, trained as a LightningModule.

``train_classifier`` fits it on labelled residuals (the calibration rows the protocol hands over), with an
optional held-out part of them that picks the best epoch (lowest validation loss). Everything is seeded
(initialisation, batch order) and Lightning runs deterministically, so a fit is reproducible.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mia.evaluation.metrics import auc, roc_curve

log = logging.getLogger(__name__)

ARCHITECTURES = ("cnn", "resnet18")


def small_cnn(channels: int, width: int) -> nn.Module:
    """Three 3x3 convolutions, one 2x pooling, global average pooling, one logit: cheap on a CPU."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1),
    )


def resnet18(channels: int) -> nn.Module:
    """torchvision's ResNet-18 (weights=None) with the CIFAR stem of SecMI's reference (a 3x3 stride-1 first
    convolution, no max pooling), so that 32x32 and smaller residuals are not pooled away at the start."""
    from torchvision.models import resnet18 as torchvision_resnet18

    network = torchvision_resnet18(weights=None, num_classes=1)
    network.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    network.maxpool = nn.Identity()
    return network


def build_network(architecture: str, channels: int, width: int) -> nn.Module:
    return small_cnn(channels, width) if architecture == "cnn" else resnet18(channels)


class ResidualClassifier(L.LightningModule):
    """Logit of "member" from a residual image; the input is divided by a fitted scale (the training rows' RMS),
    so the network sees O(1) values whatever the target's residuals measure."""

    def __init__(self, network: nn.Module, scale: float, lr: float, weight_decay: float, optimizer: str,
                 loss: str) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.lr, self.weight_decay, self.optimizer_name, self.loss_name = lr, weight_decay, optimizer, loss
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (validation loss, epoch, weights)
        self._train_sum, self._train_rows = 0.0, 0
        self._validation: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x / self.scale).squeeze(1)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "mse":  # the reference's: the logit regressed on the 0/1 label
            return F.mse_loss(logits, labels)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self._train_sum += float(loss.detach()) * len(x)
        self._train_rows += len(x)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._validation.append((self(x).detach().cpu(), y.cpu()))

    def on_train_epoch_end(self) -> None:
        record: dict[str, Any] = {"epoch": self.current_epoch, "train_loss": self._train_sum / max(self._train_rows, 1)}
        self._train_sum, self._train_rows = 0.0, 0
        if self._validation:  # Lightning validates before this hook within an epoch
            logits, labels = (torch.cat(part) for part in zip(*self._validation, strict=True))
            self._validation = []
            loss = float(self._loss(logits, labels))
            record.update(validation_loss=loss, validation_auc=auc(roc_curve(logits.double().numpy(),
                                                                              labels.numpy())))
            if self.best is None or loss < self.best[0]:  # the first of equals: the earliest epoch
                self.best = (loss, self.current_epoch, copy.deepcopy(self.network.state_dict()))
        self.history.append(record)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":  # the reference's
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class Training:
    """What the fit chose, for metrics.json."""

    model: ResidualClassifier
    best_epoch: int  # the epoch whose weights are kept (the last one without validation rows)
    history: list[dict[str, Any]] = field(default_factory=list)


def train_classifier(module: ResidualClassifier, x: torch.Tensor, y: torch.Tensor, fit_rows: torch.Tensor,
                     validation_rows: torch.Tensor, epochs: int, batch_size: int, accelerator: str,
                     seed: int) -> Training:
    """Fit ``module`` on ``fit_rows`` and keep the epoch with the lowest loss on ``validation_rows`` (if any)."""
    train = TensorDataset(x[fit_rows], y[fit_rows])
    # A last batch of one sample would break batch normalisation at a 1x1 map (ResNet-18 on small images).
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) % batch_size == 1,
                        generator=torch.Generator().manual_seed(seed))
    validation = None
    if len(validation_rows):
        validation = DataLoader(TensorDataset(x[validation_rows], y[validation_rows]), batch_size=batch_size)
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, deterministic=True, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    # Lightning switches deterministic algorithms on for the whole process; the caller's setting comes back.
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
            trainer.fit(module, train_dataloaders=loader, val_dataloaders=validation)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    best_epoch = epochs - 1
    if module.best is not None:
        _, best_epoch, weights = module.best
        module.network.load_state_dict(weights)
    module.eval()
    return Training(module, best_epoch, module.history)
