"""The papers' reported numbers (docs/method.md, "Published numbers"), each with its source.

Paper scale (CIFAR-10: the 35.7 M DDPM of pytorch-ddpm on the SecMI/PIA 25 k / 25 k split). For orientation,
never for tuning. Rates are fractions here (the papers print TPRs in percent); None: the paper gives none.
ASR is the papers' definition: the best accuracy over thresholds on the evaluation set itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One attack's reported result on one dataset."""

    attack: str  # mia's attack name (conf/attack/attack/<name>.yaml)
    dataset: str
    source: str
    queries: int | None
    asr: float | None = None
    auc: float | None = None
    tpr_at_1pct_fpr: float | None = None
    tpr_at_0_1pct_fpr: float | None = None


_NA = "Li et al., arXiv 2510.21783 (NA)"
_SECMI = "Duan et al., ICML 2023 (SecMI_stat)"
_PIA = "Kong et al., ICLR 2024 (PIA, PIAN)"
_SIMA = "Rao et al. 2025 (SimA, best t)"

PUBLISHED: tuple[Published, ...] = (
    Published("na", "cifar10", _NA, 5, asr=0.901, auc=0.957, tpr_at_1pct_fpr=0.287, tpr_at_0_1pct_fpr=0.0122),
    Published("na", "cifar100", _NA, 5, asr=0.839, auc=0.903, tpr_at_1pct_fpr=0.0965, tpr_at_0_1pct_fpr=0.0078),
    Published("na", "tiny-imagenet", _NA, 5, asr=0.842, auc=0.912, tpr_at_1pct_fpr=0.1458, tpr_at_0_1pct_fpr=0.0103),
    Published("na", "sd-v1.4", _NA, 5, asr=0.701, auc=0.652, tpr_at_1pct_fpr=0.080),
    Published("na", "sd-v1.5", _NA, 5, asr=0.696, auc=0.661, tpr_at_1pct_fpr=0.083),
    Published("secmi", "cifar10", _SECMI, 12, asr=0.811, auc=0.881, tpr_at_1pct_fpr=0.0911, tpr_at_0_1pct_fpr=0.0066),
    Published("pia", "cifar10", _PIA, 2, auc=0.885, tpr_at_1pct_fpr=0.137),
    Published("pian", "cifar10", _PIA, 2, auc=0.878, tpr_at_1pct_fpr=0.312),
    Published("sima", "cifar10", _SIMA, 1, asr=0.836, auc=0.905, tpr_at_1pct_fpr=0.359),
)


def published(attack: str, dataset: str) -> Published | None:
    """The reported result of ``attack`` on ``dataset``, or None (e.g. the loss attack: §5 lists none)."""
    return next((p for p in PUBLISHED if p.attack == attack and p.dataset == dataset), None)
