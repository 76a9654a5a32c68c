r"""A gated PixelCNN (van den Oord et al. 2016): an autoregressive network over the pixels of grey
images in raster order, optionally conditioned on a map computed from a latent code. No Pyro here.

.. math::

    \log p(x \mid c) = \sum_i \log p(x_i \mid x_{<i}, c)

Masked convolutions make output i read only pixels before i: the first layer (mask A, 7x7) hides
the centre pixel, the others (mask B, 3x3) show it, since their input at i already excludes x_i.
Each block is a gated unit, :math:`h + W_o(\tanh(a) \odot \sigma(b))` with
:math:`(a, b) = \mathrm{conv}_B(h) + V c` (V a 1x1 convolution of the conditioning map c). One stack
of masked convolutions keeps the original PixelCNN's blind spot (a few pixels up and to the right are
never seen); the likelihood is still exact and normalised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FIRST_KERNEL = 7
BLOCK_KERNEL = 3


class MaskedConv2d(nn.Conv2d):
    """A 'same' convolution whose output at (r, c) reads only rows above r and, in row r, columns
    before c (mask A) or up to c (mask B)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, mask: str):
        if mask not in ("A", "B"):
            raise ValueError(f"mask must be 'A' or 'B', got {mask!r}")
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        centre = kernel // 2
        keep = torch.ones_like(self.weight)
        keep[:, :, centre, centre + (mask == "B") :] = 0
        keep[:, :, centre + 1 :, :] = 0
        self.register_buffer("mask", keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedBlock(nn.Module):
    """``h + W_o(tanh(a) * sigmoid(b))``, ``(a, b)`` from a mask-B convolution of h plus the
    conditioning map's 1x1 convolution."""

    def __init__(self, channels: int, cond_channels: int):
        super().__init__()
        self.conv = MaskedConv2d(channels, 2 * channels, BLOCK_KERNEL, "B")
        self.cond = nn.Conv2d(cond_channels, 2 * channels, 1, bias=False) if cond_channels else None
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        pre = self.conv(h)
        if self.cond is not None:
            pre = pre + self.cond(cond)
        a, b = pre.chunk(2, dim=1)
        return h + self.out(torch.tanh(a) * torch.sigmoid(b))


class PixelCNN(nn.Module):
    """Logits of each pixel given the pixels before it: ``(N, out, H, W)`` for images ``(N, 1, H, W)``.

    ``levels``: 2 (binary pixels, one logit each) or 256 (grey levels k/255, 256 logits each).
    ``cond_channels``: channels of the conditioning map (0: unconditional).
    """

    def __init__(self, levels: int = 2, channels: int = 32, layers: int = 5, cond_channels: int = 0):
        super().__init__()
        if levels not in (2, 256):
            raise ValueError(f"levels must be 2 (binary) or 256 (grey levels), got {levels}")
        if channels < 1 or layers < 0:
            raise ValueError(f"a PixelCNN needs channels >= 1 and layers >= 0, got {channels} and {layers}")
        self.levels, self.cond_channels = levels, cond_channels
        self.first = MaskedConv2d(1, channels, FIRST_KERNEL, "A")
        self.first_cond = nn.Conv2d(cond_channels, channels, 1, bias=False) if cond_channels else None
        self.blocks = nn.ModuleList(GatedBlock(channels, cond_channels) for _ in range(layers))
        outputs = 1 if levels == 2 else levels
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, outputs, 1))

    @property
    def reach(self) -> int:
        """How many rows up (and columns either side) an output reads: what a sampling crop needs."""
        return FIRST_KERNEL // 2 + len(self.blocks) * (BLOCK_KERNEL // 2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if (cond is None) != (self.cond_channels == 0):
            raise ValueError("give a conditioning map exactly when the PixelCNN was built with cond_channels > 0")
        h = self.first(x)
        if self.first_cond is not None:
            h = h + self.first_cond(cond)
        for block in self.blocks:
            h = block(h, cond)
        return self.head(h)

    @torch.no_grad()
    def sample(self, shape: tuple[int, int], n: int, cond: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """``n`` images ``(n, 1, H, W)`` drawn pixel by pixel in raster order (values 0/1, or k/255).

        Pixel (r, c) reads only rows r - reach..r and columns c - reach..c + reach, so each step
        runs the network on that crop, not the whole image (zero padding at a crop's edge is the
        image's own wherever the crop is cut short by the border)."""
        height, width = shape
        ref = self.first.weight
        x = torch.zeros(n, 1, height, width, dtype=ref.dtype, device=ref.device)
        reach = self.reach
        for r in range(height):
            r0 = max(0, r - reach)
            for c in range(width):
                c0, c1 = max(0, c - reach), min(width, c + reach + 1)
                crop = None if cond is None else cond[:, :, r0 : r + 1, c0:c1]
                logits = self(x[:, :, r0 : r + 1, c0:c1], crop)[:, :, r - r0, c - c0]
                x[:, 0, r, c] = self._draw(logits, generator)
        return x

    def _draw(self, logits: torch.Tensor, generator) -> torch.Tensor:
        u = torch.rand(logits.shape[0], 1, generator=generator, dtype=logits.dtype, device=logits.device)
        if self.levels == 2:
            return (u < torch.sigmoid(logits)).to(logits.dtype).squeeze(1)
        cdf = torch.softmax(logits, dim=-1).cumsum(-1)
        level = (cdf < u).sum(-1).clamp(max=self.levels - 1)
        return level.to(logits.dtype) / (self.levels - 1)

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i log p(x_i | x_<i, c)`` per image ``(N,)``, x ``(N, 1, H, W)`` with values 0/1 or k/255."""
        logits = self(x, cond)
        if self.levels == 2:
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        level = (x * (self.levels - 1)).round().long()
        return torch.log_softmax(logits, dim=1).gather(1, level).flatten(1).sum(1)
