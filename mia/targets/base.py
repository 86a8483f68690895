"""The target as attacks see it: ``ε_θ(x_t, t[, cond])``, ᾱ, ``encode``, and a counter every forward pass goes through.

Attacks call nothing else of a model (docs/architecture.md, "the target interface"). A target kind (pixel
pipeline, memoriser, ...) is a loader that builds one of these around its denoiser. Queries are counted by
a forward pre-hook on the denoiser itself, so an attack cannot under-report them. The denoiser always sees
batches of ``micro_batch`` rows, so a sample's prediction does not depend on the batch it came in
(docs/method.md, "batch invariance").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from mia.data.split import Split
from mia.errors import MiaError

# A default micro-batch (rows per denoiser pass) is the largest power of two up to MAX_MICRO_BATCH whose
# inputs hold at most MICRO_BATCH_VALUES numbers: 64 rows for 8x8 to 32x32 images (the default
# data.batch_size, so at the defaults only a run's last batch is padded), 16 for 64x64x3 or Stable
# Diffusion's 4x64x64 latents, fewer for larger inputs (a pass's memory stays bounded).
MAX_MICRO_BATCH = 64
MICRO_BATCH_VALUES = 1 << 18


def rows_per_pass(sample_shape: tuple[int, ...], values: int, most: int) -> int:
    """The largest power of two up to ``most`` whose rows of ``sample_shape`` hold at most ``values`` numbers (≥ 1)."""
    rows = max(1, values // math.prod(sample_shape))
    return min(most, 1 << (rows.bit_length() - 1))


def default_micro_batch(sample_shape: tuple[int, ...]) -> int:
    """Rows per denoiser pass for inputs of ``sample_shape`` (see MICRO_BATCH_VALUES)."""
    return rows_per_pass(sample_shape, MICRO_BATCH_VALUES, MAX_MICRO_BATCH)


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
    lora: dict[str, Any] | None = None  # the LoRA adapter put on the folder's weights (mia.targets.lora), if any
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
        # The denoiser always sees this many rows (the last pass padded): float32 round-off depends on the
        # batch's shape, and NA's differences of nearly equal predictions show it. None: the batch as given.
        self.micro_batch: int | None = default_micro_batch(self.sample_shape)
        self.name = name
        self.identity = identity  # a digest of the weights and schedule; keys the prediction cache ("" = none)
        self.queries = 0  # sample-forwards since construction (or since reset_queries)
        self._real_rows = (1, 1)  # (real, all) rows of the pass under way: padding rows are not queries
        # Sample-backwards (a gradient attack's backward passes through the denoiser's output), counted apart.
        self.gradient_passes = 0
        self.generation_calls = 0  # images made by mia.targets.generation (variations, generations), per sample
        self.denoiser.register_forward_pre_hook(self._count, with_kwargs=True)
        self.denoiser.register_forward_hook(self._watch_gradients)

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        real, rows = self._real_rows
        # Guidance passes each row twice (2 queries per sample), so count the real share of what is seen.
        self.queries += int(sample.shape[0]) * real // rows

    def _watch_gradients(self, module: nn.Module, args: tuple, output: Any) -> None:
        # An output that carries a gradient gets a hook that fires once per backward pass through it.
        sample = getattr(output, "sample", output[0] if isinstance(output, tuple) and output else output)
        if isinstance(sample, torch.Tensor) and sample.requires_grad:
            sample.register_hook(self._count_gradient)

    def _count_gradient(self, grad: torch.Tensor) -> None:
        self.gradient_passes += int(grad.shape[0])

    def reset_queries(self) -> None:
        self.queries = 0
        self.gradient_passes = 0
        self.generation_calls = 0

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
        """Counts apart from the denoiser's queries: other networks' sample-forwards (VAE, text encoder), the
        denoiser's sample-backwards (gradient attacks) and the generation calls of black-box attacks (each holds
        several denoiser queries); the latter two only when made."""
        made = {"gradient_passes": self.gradient_passes, "generation_calls": self.generation_calls}
        return {key: count for key, count in made.items() if count}

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
        """``ε_θ(x_t, t[, cond])`` for a batch at one timestep, as float32, one query per sample.

        The batch runs in passes of ``micro_batch`` rows, the last one padded (see ``_padded``).
        """
        if not 0 <= t < self.num_timesteps:
            raise MiaError(f"timestep {t} is outside the model's schedule 0..{self.num_timesteps - 1}")
        weight = next(self.denoiser.parameters(), None)  # none for the closed-form memoriser, which takes float64
        x_t = x_t if weight is None else x_t.to(weight.dtype)
        size = self.micro_batch
        if size is None:
            eps = self._pass(x_t, t, cond, len(x_t))
        else:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"micro_batch must be a positive integer or None, got {size!r}")
            parts = []
            for rows, real in padded_passes(len(x_t), size):
                pass_x, pass_cond = _padded(x_t, cond, rows)
                parts.append(self._pass(pass_x, t, pass_cond, real))
            eps = torch.cat(parts)
        if not torch.isfinite(eps).all():
            bad = int((~torch.isfinite(eps.flatten(1))).any(1).sum())
            raise MiaError(
                f"the model's noise prediction at t={t} is NaN or infinite for {bad} of {len(eps)} samples; "
                "the target's weights are broken (check the training run's loss)"
            )
        return eps

    def _pass(self, x_t: torch.Tensor, t: int, cond: Any, real: int) -> torch.Tensor:
        """One denoiser pass whose first ``real`` rows are samples and the rest padding; ε of the real rows."""
        timesteps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        self._real_rows = (real, len(x_t))
        try:
            return self.denoise(x_t, timesteps, cond)[:real].float()
        finally:
            self._real_rows = (1, 1)

    def encode(self, images: torch.Tensor, noise: Any = None) -> torch.Tensor:
        """Images in [-1, 1] -> the x0 the denoiser works on (identity for pixel-space models).

        ``noise`` is the batch's per-sample seeded noise (a SampleNoise), for encoders that draw.
        """
        return images

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 -> images in the model's range [-1, 1] (identity for pixel-space models): what a pipeline returns."""
        return x0


def _padded(x_t: torch.Tensor, cond: Any, rows: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """One pass's rows of a batch and of its condition (``padded_passes``: the last real row repeated past the end).

    At one fixed shape a row's output does not depend on its position or on the other rows (checked in
    tests/test_batch_invariance.py), so what the padding holds does not matter; repeating a real row keeps
    the denoiser's input in the range it was trained on.
    """
    if len(rows) == len(x_t):  # the whole batch is one pass (rows 0..n-1): no copy
        return x_t, cond
    rows = rows.to(x_t.device)
    return x_t[rows], condition_rows(cond, rows)


def condition_rows(cond: Any, rows: torch.Tensor) -> Any:
    """The rows ``rows`` of a batch's condition: None, a tensor, an object with ``rows(index)`` (a Condition),
    or a dict of those (a custom module's keyword conditions). Anything else is refused: a list or tuple could
    hold one item per row or one tensor per field, and guessing which would give a row another's condition."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[rows.to(cond.device)]
    if hasattr(cond, "rows"):  # mia.targets.guidance.Condition
        return cond.rows(rows)
    if isinstance(cond, dict):
        return {key: condition_rows(value, rows) for key, value in cond.items()}
    raise MiaError(f"the target's condition of type {type(cond).__name__} cannot be split into passes of "
                   "micro_batch rows; make it a tensor, a dict of tensors or an object with a rows(index) method, "
                   "or set the target's micro_batch to None (whole batches; scores may then depend on the batch)")


def padded_passes(count: int, size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """The passes of ``size`` rows over a batch of ``count``: each one's row indices (``padded_rows``) and how
    many of them are real rows (the rest repeat the last one and are not counted)."""
    for start in range(0, count, size):
        yield padded_rows(count, start, size), min(size, count - start)


def padded_rows(count: int, start: int, size: int) -> torch.Tensor:
    """The row indices ``start .. start+size`` of a batch of ``count`` rows, the last real one repeated past its end."""
    rows = torch.arange(start, min(start + size, count))
    return torch.cat([rows, rows[-1:].expand(size - len(rows))])
