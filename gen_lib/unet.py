"""A small U-Net for ε-prediction on 28×28 images (Ho et al., 2020, Appendix B; Ronneberger et al., 2015).

    x (B, C, 28, 28) --pad--> (B, C, 32, 32)
      conv_in                                   32×32, c0
      down level i = 0..3: ResBlock, keep skip, stride-2 conv
                                                32 → 16 → 8 → 4 → 2
      middle: ResBlock, self-attention, ResBlock at 2×2
      up level i = 3..0: nearest ×2 + conv, concat skip, ResBlock
                                                2 → 4 → 8 → 16 → 32
      GroupNorm, SiLU, conv_out --crop--> (B, C, 28, 28)

Four down- and four up-scaling levels need a side divisible by 2⁴ = 16, so 28×28 is
zero-padded to 32×32 (2 pixels a side) and the output is cropped back. Padding keeps
every real pixel at full resolution (resizing 28 → 32 and back would blur the data
the loss is computed on), and the loss only ever sees the central 28×28: the border
is a constant the network learns to ignore.

Every ResBlock is GroupNorm → SiLU → conv → (+ time embedding) → GroupNorm → SiLU →
dropout → conv, plus a residual (1×1 conv when the width changes). The step t (an
integer) enters through the Transformer sinusoidal embedding and a two-layer MLP.
Self-attention runs only at the lowest resolution (2×2, 4 tokens), where it costs
almost nothing and gives every position a global view.

Width: `base_channels` c0 and `channel_mults` give the widths of the four levels
(c0 · mult). The `paper` profile uses c0 = 32 (3.8 M parameters with mults 1, 2, 2, 4 and two
residual blocks per level); the CPU `default` profile a narrower, shallower one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps t (B,) → (B, dim) (Vaswani et al., 2017; Ho et al., 2020).

    emb[:, i] = sin(t · ω_i), emb[:, dim/2 + i] = cos(t · ω_i), ω_i = max_period^(−i / (dim/2)).
    """
    if dim % 2:
        raise ValueError(f"embedding dim={dim} must be even")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """h = conv(act(norm(x))) + W t_emb; out = skip(x) + conv(dropout(act(norm(h))))."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.t_proj(F.silu(t_emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H·W positions, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # 3 × (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """ε-network ε_θ(x_t, t) for DDPM: (B, C, H, W), (B,) int64 → (B, C, H, W).

    Four levels of widths `base_channels * channel_mults[i]` at 32, 16, 8 and 4 pixels a
    side, `n_res` residual blocks per level on each side (every block on the way up reads
    the matching block's output on the way down), a stride-2 conv after each level on the
    way down and nearest ×2 + conv before each on the way up, self-attention in the 2×2 middle. H and W are zero-padded to a
    multiple of 16 and the output cropped back (28 → 32 → 28).
    References: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020;
    Ronneberger et al., "U-Net", MICCAI 2015.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 2, 2),
                 n_res: int = 1, groups: int = 8, dropout: float = 0.0, attention: bool = True):
        super().__init__()
        if len(channel_mults) != 4:
            raise ValueError(f"channel_mults={channel_mults} must have 4 entries (four down/up levels)")
        if base_channels < 1 or n_res < 1:
            raise ValueError(f"base_channels={base_channels} and n_res={n_res} must be >= 1")
        self.in_channels = in_channels
        self.multiple = 2 ** len(channel_mults)  # input side must divide by this after padding
        c0, t_dim = base_channels, 4 * base_channels
        widths = [c0 * m for m in channel_mults]
        self.t_mlp = nn.Sequential(nn.Linear(c0, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = c0
        for w in widths:  # 32×32, 16×16, 8×8, 4×4
            self.down.append(nn.ModuleList(ResBlock(c if i == 0 else w, w, t_dim, groups, dropout)
                                           for i in range(n_res)))
            self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            c = w

        self.mid1 = ResBlock(c, c, t_dim, groups, dropout)
        self.mid_attn = SelfAttention(c, groups) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, t_dim, groups, dropout)

        self.upsample, self.up = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths):  # 4×4, 8×8, 16×16, 32×32
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1))  # after nearest ×2
            # each block reads the previous output concatenated with the matching skip (width w)
            self.up.append(nn.ModuleList(ResBlock((c if i == 0 else w) + w, w, t_dim, groups, dropout)
                                         for i in range(n_res)))
            c = w
        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start by predicting ε = 0: a calm first loss of ≈ 1
        nn.init.zeros_(self.conv_out.bias)
        self.base_channels = c0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.in_channels}, H, W)")
        if t.shape != (x.shape[0],) or t.dtype != torch.long:
            raise ValueError(f"t has shape {tuple(t.shape)} and dtype {t.dtype}; expected int64 of shape "
                             f"({x.shape[0]},)")
        height, width = x.shape[-2:]
        ph, pw = (-height) % self.multiple, (-width) % self.multiple
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))  # (B, C, 32, 32) for 28×28
        t_emb = self.t_mlp(timestep_embedding(t, self.base_channels).to(x.dtype))  # (B, 4 c0)

        h = self.conv_in(x)  # (B, c0, 32, 32)
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, t_emb)
                skips.append(h)  # (B, w_i, 32 / 2^i, 32 / 2^i)
            h = down(h)  # halve H and W
        h = self.mid2(self.mid_attn(self.mid1(h, t_emb)), t_emb)  # (B, w_3, 2, 2)
        for up, blocks in zip(self.upsample, self.up):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # double H and W
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), t_emb)
        # conv_out's weights are zero at init; the crop undoes the padding
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[..., ph // 2:ph // 2 + height, pw // 2:pw // 2 + width]
