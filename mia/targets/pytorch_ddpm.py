"""The DDPM UNet of Ho et al. as the ``pytorch-ddpm`` code defines it, so that its checkpoints load as targets.

SecMI, PIA, SimA and the NA paper attack DDPMs trained with ``w86763777/pytorch-ddpm`` (CIFAR-10: ch 128,
ch_mult (1, 2, 2, 2), attention at level 1 = 16x16, 2 residual blocks, dropout 0.1, T = 1000; 35.7 M
parameters). Its ``ckpt.pt`` holds ``net_model`` and ``ema_model`` state dicts; this module has the same
parameter names and shapes (the names are the checkpoint format: nn.Sequential positions included), so those
state dicts load unchanged. Conventions of that code: ``forward(x_t, t)`` with ``t`` the integer timestep
0..T-1, images in [-1, 1], RGB, ε-prediction. Use it as ``target=pytorch_ddpm target.weights=<ckpt.pt>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from mia.errors import MiaError


def _xavier(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> None:
    # The reference initialises every conv and linear layer this way, with zero biases (used when training).
    init.xavier_uniform_(layer.weight, gain=gain)
    init.zeros_(layer.bias)


def sinusoid_table(num_timesteps: int, dim: int) -> torch.Tensor:
    """[T, dim] positional embedding: (sin, cos) pairs interleaved, frequencies 10000^(-2i/dim)."""
    frequencies = torch.exp(-math.log(10000) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(num_timesteps, dtype=torch.float64)[:, None] * frequencies[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(num_timesteps, dim).float()


class TimeEmbedding(nn.Module):
    """t -> a fixed sinusoid (a frozen embedding table, stored in the checkpoint), then an MLP."""

    def __init__(self, num_timesteps: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(sinusoid_table(num_timesteps, dim)),
            nn.Linear(dim, out_dim),
            nn.SiLU(),
            nn.Linear(out_dim, out_dim),
        )
        for layer in (self.timembedding[1], self.timembedding[3]):
            _xavier(layer)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.timembedding(t)


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels)
        self.proj_q, self.proj_k, self.proj_v, self.proj = (nn.Conv2d(channels, channels, 1) for _ in range(4))
        for layer in (self.proj_q, self.proj_k, self.proj_v):
            _xavier(layer)
        _xavier(self.proj, gain=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x)
        # [B, 1, HW, C] each: one head, scaled by C^-1/2 as in the reference.
        q, k, v = (p(h).flatten(2).transpose(1, 2).unsqueeze(1) for p in (self.proj_q, self.proj_k, self.proj_v))
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj(h)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected time embedding, GroupNorm-SiLU-dropout-conv; skip; attention."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, attn: bool, groups: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(groups, out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch, groups) if attn else nn.Identity()
        for layer in (self.block1[2], self.temb_proj[1], self.shortcut):
            if isinstance(layer, nn.Conv2d | nn.Linear):
                _xavier(layer)
        _xavier(self.block2[3], gain=1e-5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.attn(self.block2(h) + self.shortcut(x))


class DownSample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        _xavier(self.main)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class UpSample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Conv2d(channels, channels, 3, padding=1)
        _xavier(self.main)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(F.interpolate(x, scale_factor=2, mode="nearest"))


class DDPMUNet(nn.Module):
    """pytorch-ddpm's ``UNet(T, ch, ch_mult, attn, num_res_blocks, dropout)``; ``forward(x, t)`` returns ε.

    ``attn`` lists the levels (indices into ``ch_mult``) with self-attention; ``num_groups`` is the GroupNorm
    group count (32 in the reference, which fixes it; smaller values allow narrower test models).
    """

    def __init__(
        self,
        T: int = 1000,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        attn: Sequence[int] = (1,),
        num_res_blocks: int = 2,
        dropout: float = 0.1,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        ch_mult, attn = [int(m) for m in ch_mult], [int(a) for a in attn]
        if any(not 0 <= level < len(ch_mult) for level in attn):
            raise MiaError(f"target.module.attn={attn} names levels outside ch_mult's 0..{len(ch_mult) - 1}")
        if any((ch * m) % num_groups for m in ch_mult):
            raise MiaError(f"target.module.num_groups={num_groups} must divide every channel count ch * ch_mult "
                           f"({[ch * m for m in ch_mult]})")
        temb_dim = ch * 4
        self.time_embedding = TimeEmbedding(T, ch, temb_dim)
        self.head = nn.Conv2d(3, ch, 3, padding=1)

        def res(in_ch: int, out_ch: int, with_attn: bool) -> ResBlock:
            return ResBlock(in_ch, out_ch, temb_dim, dropout, with_attn, num_groups)

        # Down: each level's residual blocks, then a downsampling (all levels but the last). Every output
        # is kept as a skip connection; `skips` records their channel counts for the up path.
        self.downblocks = nn.ModuleList()
        skips, channels = [ch], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(res(channels, ch * mult, level in attn))
                channels = ch * mult
                skips.append(channels)
            if level < len(ch_mult) - 1:
                self.downblocks.append(DownSample(channels))
                skips.append(channels)
        self.middleblocks = nn.ModuleList([res(channels, channels, True), res(channels, channels, False)])
        # Up: one more residual block per level than down, each taking one skip connection (last in, first out).
        self.upblocks = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(res(skips.pop() + channels, ch * ch_mult[level], level in attn))
                channels = ch * ch_mult[level]
            if level > 0:
                self.upblocks.append(UpSample(channels))
        self.tail = nn.Sequential(nn.GroupNorm(num_groups, channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1))
        _xavier(self.head)
        _xavier(self.tail[2], gain=1e-5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_embedding(t)
        h = self.head(x)
        skips = [h]
        for block in self.downblocks:
            h = block(h, temb)
            skips.append(h)
        for block in self.middleblocks:
            h = block(h, temb)
        for block in self.upblocks:
            h = block(torch.cat([h, skips.pop()], dim=1), temb) if isinstance(block, ResBlock) else block(h, temb)
        return self.tail(h)
