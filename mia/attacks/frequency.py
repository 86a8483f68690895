"""FreMIA's frequency filter (ICML 2026, arXiv 2505.20955; code poetic2/FreMIA, ``filter.py``: ``Fourier_filter``).

The attacks that compare two images or predictions (NA, loss, PIA, PIAN, SecMI) can attenuate the high
frequencies of what they compare before the distance (``attack.frequency_filter=high``): a 2-D FFT over the
last two axes (height, width), every frequency outside a centred ``2t × 2t`` box of the lowest ones (DC
included) multiplied by ``s``, and back (the real part). FreMIA's defaults: t = 5, s = 0.2, whatever the
image size. The filter is linear, so filtering both quantities and filtering their difference are the same;
it costs no model query. Which quantities each attack filters is in docs/method.md, "FreMIA's filter".
"""

from __future__ import annotations

import dataclasses

import torch

from mia.attacks.base import Attack, require
from mia.targets.base import DiffusionTarget

FREQUENCY_FILTERS = ("none", "high")  # high: attenuate the high frequencies (FreMIA)
DEFAULT_CUTOFF, DEFAULT_SCALE = 5, 0.2  # FreMIA's t and s (argparse --t 5 --s 0.2)


def low_frequency_box(height: int, width: int, cutoff: int, device: torch.device | None = None) -> torch.Tensor:
    """bool [H, W] in fftshift-ed order: True on the rows [H//2 − t, H//2 + t) × cols [W//2 − t, W//2 + t).

    Clamped to the grid: the reference's slice wraps around for t > H//2 (a negative start), which would keep
    almost nothing; here the box simply covers the whole grid then.
    """
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    keep_rows = (rows >= height // 2 - cutoff) & (rows < height // 2 + cutoff)
    keep_cols = (cols >= width // 2 - cutoff) & (cols < width // 2 + cutoff)
    return keep_rows[:, None] & keep_cols[None, :]


def frequency_filter(x: torch.Tensor, cutoff: int = DEFAULT_CUTOFF, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """``x`` [..., H, W] with every frequency outside the centred 2t×2t low-frequency box multiplied by ``scale``.

    float64 in and out (a float32 input is promoted): FFT, fftshift, mask, ifftshift, inverse FFT, real part,
    as FreMIA's ``Fourier_filter``, channel by channel (every leading axis is independent).
    """
    x = x.to(torch.float64)
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full((height, width), float(scale), dtype=torch.float64, device=x.device)
    mask[low_frequency_box(height, width, cutoff, x.device)] = 1.0
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real


@dataclasses.dataclass
class FrequencyFiltered(Attack):
    """An attack whose compared quantities may be filtered (FreMIA): three keyword-only knobs, checked here."""

    # none (the attack as published) | high (FreMIA: attenuate the frequencies outside the low box)
    frequency_filter: str = dataclasses.field(default="none", kw_only=True)
    filter_cutoff: int = dataclasses.field(default=DEFAULT_CUTOFF, kw_only=True)  # t: the kept box is 2t × 2t
    filter_scale: float = dataclasses.field(default=DEFAULT_SCALE, kw_only=True)  # s: factor on the other frequencies

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.frequency_filter in FREQUENCY_FILTERS,
                f"attack.frequency_filter must be one of {', '.join(FREQUENCY_FILTERS)}, got {self.frequency_filter!r}")
        if self.frequency_filter == "none":
            # A cutoff or scale given without the filter would change nothing: refused, not ignored.
            require(self.filter_cutoff == DEFAULT_CUTOFF and self.filter_scale == DEFAULT_SCALE,
                    "attack.filter_cutoff and attack.filter_scale apply with attack.frequency_filter=high; "
                    "set it, or leave them at their defaults (5, 0.2)")
        require(self.filter_cutoff >= 1, f"attack.filter_cutoff must be ≥ 1, got {self.filter_cutoff!r}")
        require(0 <= self.filter_scale < 1,
                f"attack.filter_scale must be in [0, 1) (1 would keep every frequency), got {self.filter_scale!r}")

    def check(self, target: DiffusionTarget) -> None:
        """Refuse a box that covers the whole sample: the filter would change nothing."""
        if self.frequency_filter == "none":
            return
        _, height, width = target.sample_shape
        require(not bool(low_frequency_box(height, width, self.filter_cutoff).all()),
                f"attack.filter_cutoff={self.filter_cutoff} keeps a box that covers the whole {height}x{width} "
                "sample, so the filter would change nothing; lower attack.filter_cutoff")

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, H, W] through the filter (float64), or unchanged with frequency_filter=none."""
        if self.frequency_filter == "none":
            return x
        return frequency_filter(x, self.filter_cutoff, self.filter_scale)
