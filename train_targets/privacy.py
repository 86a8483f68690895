"""DP-SGD training of pixel DDPM targets with Opacus: settings, checks, the privacy engine and the spent budget.

Per-sample gradients come from Opacus' hooks attached to the UNet itself (``wrap_model=False``), so the
module keeps its own class and parameter names: the EMA callback, the checkpoints and ``save_pretrained``
see a plain ``UNet2DModel``. The optimizer is Opacus' ``DPOptimizer`` around the target's AdamW: it clips
each member's gradient to ``max_grad_norm``, adds Gaussian noise of std ``noise_multiplier · max_grad_norm``
to the sum, divides by the expected batch size, and tells the accountant about every step. What each
incompatibility with the rest of mia-train is, and how it is handled, is in docs/method.md.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from mia.checks import is_integer, require_bool, require_number
from mia.errors import MiaError

log = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class DPSettings:
    """``training.dp`` once checked: exactly one of ``noise_multiplier`` and ``target_epsilon`` is set."""

    noise_multiplier: float | None
    target_epsilon: float | None
    max_grad_norm: float
    delta: float
    accountant: str
    poisson_sampling: bool


def dp_settings(node: Any) -> DPSettings | None:
    """The checked settings of ``training.dp``, or None when DP is off; one MiaError line for a bad combination."""
    if node is None:
        return None
    node = dict(node)
    enabled = node.get("enabled", False)
    require_bool("training.dp.enabled", enabled)
    if not enabled:
        return None
    known = {"enabled", "noise_multiplier", "target_epsilon", "max_grad_norm", "delta", "accountant",
             "poisson_sampling"}
    unknown = sorted(set(node) - known)
    if unknown:
        raise MiaError(f"training.dp.{unknown[0]} is not a DP setting; the settings are {', '.join(sorted(known))}")
    noise, target = node.get("noise_multiplier"), node.get("target_epsilon")
    if (noise is None) == (target is None):
        raise MiaError(
            "training.dp needs exactly one of noise_multiplier (the noise is given, ε follows) and target_epsilon "
            f"(ε is given, the noise follows); got noise_multiplier={noise!r}, target_epsilon={target!r}"
        )
    if noise is not None:
        require_number("training.dp.noise_multiplier", noise, 0.0)
    else:
        require_number("training.dp.target_epsilon", target, 0.0, open_interval=True)
    max_grad_norm = node.get("max_grad_norm")
    require_number("training.dp.max_grad_norm", max_grad_norm, 0.0, open_interval=True)
    delta = node.get("delta")
    require_number("training.dp.delta", delta, 0.0, 1.0, open_interval=True)
    accountant = node.get("accountant", "rdp")
    if accountant not in ACCOUNTANTS:
        raise MiaError(f"training.dp.accountant must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}")
    poisson = node.get("poisson_sampling", True)
    require_bool("training.dp.poisson_sampling", poisson)
    return DPSettings(
        noise_multiplier=None if noise is None else float(noise),
        target_epsilon=None if target is None else float(target),
        max_grad_norm=float(max_grad_norm),
        delta=float(delta),
        accountant=accountant,
        poisson_sampling=poisson,
    )


class PrivateTraining:
    """The privacy engine of one run: it makes the UNet and its optimizer private and accounts for every step."""

    def __init__(self, settings: DPSettings, members: int, max_steps: int) -> None:
        from opacus import PrivacyEngine

        self.settings = settings
        self.members = members
        self.max_steps = max_steps
        with warnings.catch_warnings():
            # Opacus warns that its noise is not drawn from a cryptographic generator; said once in the log.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self.engine = PrivacyEngine(accountant=settings.accountant)
        self.noise_multiplier: float | None = settings.noise_multiplier
        if settings.delta >= 1 / members:
            # δ is the chance the guarantee fails outright; at δ ≥ 1/n a mechanism that publishes one random
            # member in full meets it. Allowed (it is the user's budget), but said.
            log.warning("DP-SGD: δ = %g is not below 1/members = %g; the usual choice is δ < 1/n",
                        settings.delta, 1 / members)
        if settings.noise_multiplier == 0:
            log.warning("DP-SGD with noise_multiplier=0: gradients are clipped but no noise is added, so there "
                        "is no privacy guarantee (ε = ∞)")
        self.sample_rate: float | None = None  # set by plan()
        self.hooks: Any = None  # Opacus' per-sample gradient hooks, once attached

    def check_model(self, denoiser: torch.nn.Module) -> None:
        """Refuse a network Opacus cannot take per-sample gradients of (BatchNorm, say), before training."""
        from opacus.validators import ModuleValidator

        # UNet2DModel uses GroupNorm, which is per sample; a BatchNorm mixes the samples of a batch, so the
        # per-sample gradient is not defined. ModuleValidator.fix would swap it for GroupNorm, which changes
        # the architecture the user asked for: refused instead.
        errors = ModuleValidator.validate(denoiser, strict=False)
        if errors:
            raise MiaError(f"DP-SGD cannot train this denoiser: {errors[0]} (Opacus' ModuleValidator; "
                           f"{len(errors)} problem(s) in all)")

    def plan(self, sample_rate: float) -> None:
        """Fix the noise multiplier for this sampling rate (from target_epsilon when given), before training."""
        self.sample_rate = sample_rate
        if self.settings.noise_multiplier is not None:
            return
        from opacus.accountants.utils import get_noise_multiplier

        if not is_integer(self.max_steps) or self.max_steps < 1:  # a training length ε can be spread over
            raise MiaError(f"training.dp.target_epsilon needs a training length: set trainer.max_steps ≥ 1 "
                           f"(got {self.max_steps!r})")
        # Steps, not Opacus' epochs: make_private_with_epsilon would turn epochs back into
        # int(epochs / sample_rate) steps, which can come out one short when max_steps is not a whole number of
        # epochs. The noise is for the whole run (max_steps), so a resume with the same max_steps gets the same
        # noise and the run ends at the target.
        try:
            self.noise_multiplier = get_noise_multiplier(
                target_epsilon=self.settings.target_epsilon, target_delta=self.settings.delta,
                sample_rate=sample_rate, steps=self.max_steps, accountant=self.settings.accountant,
            )
        except ValueError as err:
            raise MiaError(f"training.dp.target_epsilon={self.settings.target_epsilon} cannot be reached in "
                           f"{self.max_steps} steps at sampling rate {sample_rate:.3g} ({err})") from err
        log.info("DP-SGD: noise multiplier %.4f reaches ε = %g at δ = %g after %d steps (sampling rate %.4g)",
                 self.noise_multiplier, self.settings.target_epsilon, self.settings.delta, self.max_steps,
                 sample_rate)

    def make_private(self, denoiser: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     train_loader: DataLoader) -> torch.optim.Optimizer:
        """Attach per-sample gradient hooks to ``denoiser``; the returned DPOptimizer clips, noises and accounts."""
        if self.noise_multiplier is None or self.sample_rate is None:
            raise RuntimeError("PrivateTraining.plan() comes before make_private()")
        if self.hooks is not None:  # configure_optimizers called again: the old hooks go first
            self.release()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            hooks, dp_optimizer, _ = self.engine.make_private(
                module=denoiser,
                optimizer=optimizer,
                data_loader=train_loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.settings.max_grad_norm,
                loss_reduction="mean",  # the DDPM loss is the mean over the batch of each member's own loss
                # The data module already samples the batches (Poisson when poisson_sampling is on); Opacus
                # would only build another loader that Lightning never sees.
                poisson_sampling=False,
                wrap_model=False,  # hooks on the UNet itself: no GradSampleModule, no "_module." names
            )
        # Opacus accounts at 1 / len(train_loader), and a DPDataLoader's length is int(1 / q), which float
        # rounding makes one short for some batch counts (93 batches → 92). The accountant gets the sampler's
        # own rate instead.
        dp_optimizer.attach_step_hook(self.engine.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        self.hooks = hooks
        # The UNet's first convolution takes x_t, which needs no gradient, so torch says its backward hook sees
        # the output's gradient only: all Opacus needs there (the weights' per-sample gradients).
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs since no inputs require gradients")
        # An empty Poisson batch skips the forward on purpose (DDPMTarget.training_step); Lightning warns of it.
        warnings.filterwarnings("ignore", message="`training_step` returned `None`")
        log.info(
            "DP-SGD on: per-sample gradients clipped to %g, noise multiplier %.4f, sampling rate %.4g (%s "
            "sampling), %s accountant; noise from torch's seeded generator, not a cryptographic one",
            self.settings.max_grad_norm, self.noise_multiplier, self.sample_rate,
            "Poisson" if self.settings.poisson_sampling else "shuffled fixed-size", self.settings.accountant,
        )
        return dp_optimizer

    def empty_step(self, denoiser: torch.nn.Module) -> None:
        """Give every parameter the per-sample gradients of a batch of no sample, for a step of noise only."""
        for p in denoiser.parameters():
            if p.requires_grad:
                p.grad_sample = p.new_zeros((0, *p.shape))

    def release(self) -> None:
        """Remove the hooks and the per-sample gradients from the UNet (before it is exported)."""
        if self.hooks is not None:
            self.hooks.cleanup()
            self.hooks = None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the accountant's history (plain numbers) and the noise in use."""
        history = [[float(noise), float(rate), int(steps)] for noise, rate, steps in self.engine.accountant.history]
        return {"history": history, "noise_multiplier": self.noise_multiplier, "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the accounting of the run that wrote the checkpoint."""
        self.engine.accountant.history = [(float(n), float(r), int(s)) for n, r, s in state["history"]]
        log.info("DP-SGD: resumed the privacy accounting after %d steps", self.steps)

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.engine.accountant.history)

    def spent(self) -> dict[str, Any]:
        """The (ε, δ) spent so far and what it was computed from, for ``training.json``."""
        history = self.engine.accountant.history
        if any(noise == 0 for noise, _, _ in history):
            epsilon = math.inf  # a step without noise: no guarantee (PRV cannot even be evaluated there)
        else:
            epsilon = float(self.engine.get_epsilon(self.settings.delta)) if history else 0.0
        rates = sorted({rate for _, rate, _ in history})
        noises = sorted({noise for noise, _, _ in history})
        return {
            # No noise (noise_multiplier=0) gives no guarantee: ε = ∞, written as null (JSON has no infinity).
            "epsilon": epsilon if math.isfinite(epsilon) else None,
            "delta": self.settings.delta,
            "noise_multiplier": noises[0] if len(noises) == 1 else noises,
            "max_grad_norm": self.settings.max_grad_norm,
            "sample_rate": rates[0] if len(rates) == 1 else rates,
            "steps": self.steps,
            "accountant": self.settings.accountant,
            "poisson_sampling": self.settings.poisson_sampling,
            "target_epsilon": self.settings.target_epsilon,
            "history": [list(entry) for entry in history],  # (noise multiplier, sampling rate, steps) runs
        }
