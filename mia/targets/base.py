"""The target as attacks see it: ``ε_θ(x_t, t[, cond])``, ᾱ, ``encode``, and a counter every forward pass goes through.

Attacks call nothing else of a model (docs/architecture.md, "the target interface"). A target kind (pixel
pipeline, memoriser, ...) is a loader that builds one of these around its denoiser. Queries are counted by
a forward pre-hook on the denoiser itself, so an attack cannot under-report them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mia.data.split import Split
from mia.errors import MiaError


class DiffusionTarget(nn.Module):
    """A denoiser with its noise schedule; counts one query per sample per forward pass.

    ``denoiser(x_t, timesteps)`` must return an object with ``.sample`` (as diffusers' UNets do) holding ε.
    ``sample_shape`` is the (channels, height, width) of x0, the denoiser's input.
    """

    conditioning: ClassVar[str | None] = None  # what the denoiser is conditioned on: None, "text" or "class"
    is_latent: ClassVar[bool] = False  # True when x0 is an autoencoder's latent, not the image
    beta_schedule: str | None = None  # the scheduler config's beta_schedule (attacks pick defaults by it)
    # Set by the loader that built the target (mia.targets.<kind>), for the evaluation set and the reports:
    kind: str = "target"  # the loader's kind: pipeline, module, memorizer
    source: str = ""  # what was attacked: a folder, a weights file or a factory ("" = built in code)
    checkpoint: str | None = None  # the mia-train checkpoint whose weights replaced the folder's, if any
    split: Split | None = None  # the member split that labels the evaluation samples (None: give two folders)
    split_only: str | None = None  # why the target can be evaluated on its split only (None: folders are fine)

    def __init__(
        self,
        denoiser: nn.Module,
        alphas_cumprod: torch.Tensor,
        sample_shape: tuple[int, int, int],
        name: str = "target",
        identity: str = "",
    ) -> None:
        super().__init__()
        self.denoiser = denoiser.eval().requires_grad_(False)
        # Kept as the scheduler computed it (float32 in diffusers, the values the model was trained with),
        # stored in float64 so that the coefficients derived from it add no rounding of their own.
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float64), persistent=False)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.name = name
        self.identity = identity  # a digest of the weights and schedule; keys the prediction cache ("" = none)
        self.queries = 0  # sample-forwards since construction (or since reset_queries)
        self.generation_calls = 0  # images made by mia.targets.generation (variations, generations), per sample
        self.denoiser.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.queries += int(sample.shape[0])

    def reset_queries(self) -> None:
        self.queries = 0

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the evaluation set must hold (x0's for pixel models)."""
        return self.sample_shape

    def image_shape_for(self, size: int | None) -> tuple[int, int, int]:
        """The image shape the evaluation set must hold when ``data.image_size`` asks for ``size``."""
        return self.image_shape

    def passes(self) -> dict[str, int]:
        """Counts apart from the denoiser's queries: other networks' sample-forwards (VAE, text encoder) and the
        generation calls of black-box attacks (each holds several denoiser queries); the latter only when made."""
        return {"generation_calls": self.generation_calls} if self.generation_calls else {}

    def check_guidance(self, guidance_scale: float) -> None:
        """Refuse a guidance scale the target cannot apply (unconditional targets: anything but 1)."""
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float) or not guidance_scale >= 1:
            raise MiaError(f"attack.guidance_scale must be a number ≥ 1 (1 = the conditional prediction alone), "
                           f"got {guidance_scale!r}")
        if guidance_scale != 1 and self.conditioning is None:
            raise MiaError(f"attack.guidance_scale={guidance_scale} needs a conditional target; {self.name} is "
                           "unconditional (leave attack.guidance_scale=1)")

    def conditions(self, batch: dict[str, Any], guidance_scale: float = 1.0) -> Any:
        """The conditions of a batch of the evaluation set that ``predict_noise`` takes (None: unconditional)."""
        self.check_guidance(guidance_scale)
        return None

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: Any) -> torch.Tensor:
        """One forward pass of the denoiser (one query per sample); kinds with conditions override this."""
        return self.denoiser(x_t, timesteps).sample

    def predict_noise(self, x_t: torch.Tensor, t: int, cond: Any = None) -> torch.Tensor:
        """``ε_θ(x_t, t[, cond])`` for a batch at one timestep, as float32."""
        if not 0 <= t < self.num_timesteps:
            raise MiaError(f"timestep {t} is outside the model's schedule 0..{self.num_timesteps - 1}")
        timesteps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        weight = next(self.denoiser.parameters(), None)  # none for the closed-form memoriser, which takes float64
        eps = self.denoise(x_t if weight is None else x_t.to(weight.dtype), timesteps, cond).float()
        if not torch.isfinite(eps).all():
            bad = int((~torch.isfinite(eps.flatten(1))).any(1).sum())
            raise MiaError(
                f"the model's noise prediction at t={t} is NaN or infinite for {bad} of {len(eps)} samples; "
                "the target's weights are broken (check the training run's loss)"
            )
        return eps

    def encode(self, images: torch.Tensor, noise: Any = None) -> torch.Tensor:
        """Images in [-1, 1] -> the x0 the denoiser works on (identity for pixel-space models).

        ``noise`` is the batch's per-sample seeded noise (a SampleNoise), for encoders that draw.
        """
        return images

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 -> images in the model's range [-1, 1] (identity for pixel-space models): what a pipeline returns."""
        return x0
