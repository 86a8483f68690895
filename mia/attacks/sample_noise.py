"""Gaussian noise seeded per sample, so a sample's noise does not depend on its batch, order or device."""

from __future__ import annotations

import numpy as np
import torch


class SampleNoise:
    """The noise of one batch: each row seeded by (attack seed, the sample's key, stream)."""

    def __init__(self, keys: torch.Tensor, seed: int) -> None:
        self.keys = [int(k) for k in keys.tolist()]  # one device-to-host copy, not one per sample
        self.seed = int(seed)

    def randn(self, shape: tuple[int, ...], stream: int = 0, device=None) -> torch.Tensor:
        """[B, *shape] standard normal; ``stream`` gives independent draws for the same sample."""
        out = torch.empty(len(self.keys), *shape)
        for row, key in enumerate(self.keys):
            state = np.random.SeedSequence([self.seed, key, stream]).generate_state(1, np.uint64)[0]
            out[row] = torch.randn(shape, generator=torch.Generator().manual_seed(int(state)))
        return out.to(device)
