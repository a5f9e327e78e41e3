"""SwinIR (Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCV-W 2021).

Written from the paper and the behaviour of the official ``models/network_swinir.py``; module and
argument names follow the official code so its released checkpoints (``params`` key) and BasicSR's
load strictly: ``conv_first``, ``patch_embed.norm``, ``layers.{i}.residual_group.blocks.{j}.{norm1,
attn.relative_position_bias_table, attn.relative_position_index, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}``, ``layers.{i}.conv``, ``norm``, ``conv_after_body`` and the reconstruction
heads (``upsample.0`` for ``pixelshuffledirect``; ``conv_before_upsample.0``, ``upsample.{0,2,..}``,
``conv_last`` for ``pixelshuffle``; ``conv_up1/2``, ``conv_hr``, ``conv_last`` for
``nearest+conv``; ``conv_last`` for ``""``, denoising/JPEG).

Buffers. ``relative_position_index`` is persistent, as officially. Each shifted block also keeps
the official persistent ``attn_mask`` buffer (the mask for ``img_size``) *only* so official state
dicts load strictly both ways; forward never reads it but computes the mask for the actual padded
input size, once per forward, shared by all shifted blocks. ``persistent_attn_mask=False`` drops
the buffer for state dicts saved without it (detection in :mod:`perceptsr.archs.swinir_support` sets it).
The RGB mean is a non-persistent buffer (officially a plain attribute, not in state dicts).

Not implemented: absolute position embedding (``ape``, unused by every released model) and patch
sizes other than 1 (the official patch embedding is a reshape, so only 1 works there either).
Stochastic depth (``drop_path_rate``, official default 0.1) is implemented and inactive in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils import checkpoint as torch_checkpoint

from perceptsr.errors import ConfigError

__all__ = [
    "DropPath", "Mlp", "WindowAttention", "SwinTransformerBlock", "BasicLayer", "RSTB", "PatchEmbed", "SwinIR",
    "window_partition", "window_reverse", "relative_position_index", "shifted_window_mask",
]

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, subtracted from 3-channel inputs
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
MASK_VALUE = -100.0  # the official additive mask value between different shift regions


# --------------------------------------------------------------------------------------------
# window helpers


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, window_size**2, C)``, windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window_size**2, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """``(N, N)`` int64 index into the ``(2 * ws - 1) ** 2`` bias table, ``N = ws * ws``.

    Entry ``[i, j]`` encodes the offset of query ``i`` from key ``j`` as
    ``(dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)`` (tokens in row-major order).
    """
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window_size - 1
    dx = xs[:, None] - xs[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def shifted_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Additive attention mask ``(nW, N, N)`` for shifted-window attention on a ``height x width`` map.

    After the cyclic shift by ``-shift_size`` the last window row/column holds pixels from both
    image borders; tokens from different regions (label 0, 1, 2 per axis) get ``-100`` so they do
    not attend to each other. Matches the official ``calculate_mask`` for any size that is a
    multiple of ``window_size``.
    """
    if height % window_size or width % window_size:
        raise ConfigError(
            f"swinir: the feature map {height}x{width} must be a multiple of window_size {window_size} "
            "(img_size must be a multiple of window_size)"
        )

    def labels(n: int) -> torch.Tensor:
        lab = torch.zeros(n, dtype=torch.long, device=device)
        lab[n - window_size:] = 1
        lab[n - shift_size:] = 2
        return lab

    region = labels(height)[:, None] * 3 + labels(width)[None, :]
    windows = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # nW, N
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, MASK_VALUE)


# --------------------------------------------------------------------------------------------
# building blocks


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability ``p`` while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``fc2(drop(gelu(fc1(x))))`` followed by dropout (the transformer feed-forward)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window_size x window_size`` windows with a learned
    relative position bias (one table entry per offset and head)."""

    def __init__(
        self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
        attn_drop: float = 0.0, proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """``(num_heads, N, N)`` bias added to the attention logits."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B * nW, N, C)``; ``mask``: ``(nW, N, N)`` additive (0 / -100) or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """Pre-norm transformer block on a token map: (shifted) window attention, then the MLP.

    As officially, when the training resolution ``input_resolution`` is not larger than the
    window, the window shrinks to it and the shift is dropped.
    """

    def __init__(
        self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 8, shift_size: int = 0,
        mlp_ratio: float = 2.0, qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
        attn_drop: float = 0.0, drop_path: float = 0.0, persistent_attn_mask: bool = True,
    ) -> None:
        super().__init__()
        self.dim, self.input_resolution, self.num_heads = dim, tuple(input_resolution), num_heads
        self.window_size, self.shift_size, self.mlp_ratio = window_size, shift_size, mlp_ratio
        if min(self.input_resolution) <= window_size:
            self.window_size, self.shift_size = min(self.input_resolution), 0
        if not 0 <= self.shift_size < self.window_size:
            raise ConfigError(f"swinir: shift_size {shift_size} must lie in [0, window_size {self.window_size})")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if self.shift_size > 0 and persistent_attn_mask:
            # kept for state-dict compatibility with the official code only; forward computes its own
            self.register_buffer("attn_mask", shifted_window_mask(*self.input_resolution, self.window_size, self.shift_size))

    def attention_mask(
        self, x_size: tuple[int, int], device: torch.device, cache: dict[Any, torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """The shifted-window mask for a feature map of size ``x_size`` (None for unshifted blocks)."""
        if self.shift_size == 0:
            return None
        key = (x_size[0], x_size[1], self.window_size, self.shift_size, device)
        if cache is None or key not in cache:
            mask = shifted_window_mask(x_size[0], x_size[1], self.window_size, self.shift_size, device)
            if cache is None:
                return mask
            cache[key] = mask
        return cache[key]

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], mask_cache: dict[Any, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``x``: ``(B, H * W, C)`` tokens of an ``x_size = (H, W)`` map (multiples of the window)."""
        h, w = x_size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        y = self.attn(window_partition(y, self.window_size), mask=self.attention_mask(x_size, x.device, mask_cache))
        y = window_reverse(y, self.window_size, h, w)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}"


class BasicLayer(nn.Module):
    """``depth`` blocks alternating regular and shifted (by ``window_size // 2``) windows."""

    def __init__(
        self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
        mlp_ratio: float = 2.0, qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
        attn_drop: float = 0.0, drop_path: Sequence[float] = (), use_checkpoint: bool = False,
        persistent_attn_mask: bool = True,
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                qkv_bias, qk_scale, drop, attn_drop, rates[i], persistent_attn_mask,
            )
            for i in range(depth)
        )

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], mask_cache: dict[Any, torch.Tensor] | None = None
    ) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = torch_checkpoint.checkpoint(blk, x, x_size, mask_cache, use_reentrant=False)
            else:
                x = blk(x, x_size, mask_cache)
        return x


def _conv_block(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing a residual group: one 3x3 conv, or the parameter-saving 3-conv bottleneck."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """Patch embedding with patch size 1: ``(B, C, H, W)`` -> ``(B, H * W, C)``."""
    return x.flatten(2).transpose(1, 2)


def _image(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """Patch un-embedding: ``(B, H * W, C)`` -> ``(B, C, H, W)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


class RSTB(nn.Module):
    """Residual Swin Transformer Block: ``x + embed(conv(unembed(residual_group(x))))``."""

    def __init__(self, dim: int, resi_connection: str = "1conv", **layer_kwargs: Any) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim=dim, **layer_kwargs)
        self.conv = _conv_block(dim, resi_connection)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], mask_cache: dict[Any, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return _tokens(self.conv(_image(self.residual_group(x, x_size, mask_cache), x_size))) + x


class PatchEmbed(nn.Module):
    """Flatten a feature map to tokens (patch size 1), then the optional LayerNorm ``norm``."""

    def __init__(self, dim: int, patch_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _tokens(x)
        return self.norm(x) if self.norm is not None else x


# --------------------------------------------------------------------------------------------
# SwinIR


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ConfigError(f"swinir: {name} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


class SwinIR(nn.Module):
    """SwinIR: conv_first -> residual Swin Transformer groups (RSTBs) -> norm -> conv_after_body
    (+ shallow features) -> reconstruction head chosen by ``upsampler``.

    Defaults are the lightweight x4 model (SwinIR-S, the EA-Adam backbone): ``img_size`` 64,
    ``window_size`` 8, ``depths``/``num_heads`` [6] * 4, ``embed_dim`` 60, ``mlp_ratio`` 2,
    ``pixelshuffledirect``; 929,628 parameters (the paper's "897K" leaves out the 24 x 225 x 6 =
    32,400 relative-position-bias entries). The official class defaults (embed_dim 96, window 7,
    mlp_ratio 4, upscale 2, no upsampler) are *not* these; pass every argument when porting configs.

    ``upsampler``: ``"pixelshuffle"`` (classical SR; x2^n or x3), ``"pixelshuffledirect"``
    (lightweight; one conv + pixel shuffle, any scale), ``"nearest+conv"`` (real-world SR; x4) or
    ``""`` (denoising / JPEG: same size, global residual; ``upscale`` 1). Inputs of any size are
    reflect-padded (bottom/right) to a multiple of ``window_size`` and the output cropped back.
    ``img_size`` is the training patch size: it only shapes the stored ``attn_mask`` buffers.
    Inputs are ``(N, C, H, W)`` in [0, ``1``] (``img_range`` scales the normalised input, as officially).
    """

    arch_kind = "generator"

    def __init__(
        self,
        upscale: int = 4,
        in_chans: int = 3,
        img_size: int | Sequence[int] = 64,
        patch_size: int = 1,
        window_size: int = 8,
        img_range: float = 1.0,
        depths: Sequence[int] = (6, 6, 6, 6),
        embed_dim: int = 60,
        num_heads: Sequence[int] = (6, 6, 6, 6),
        mlp_ratio: float = 2.0,
        upsampler: str | None = "pixelshuffledirect",
        resi_connection: str = "1conv",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        persistent_attn_mask: bool = True,
    ) -> None:
        super().__init__()
        upsampler = upsampler or ""
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        img = _pair(img_size, "img_size")
        self._check(upscale, in_chans, patch_size, window_size, depths, embed_dim, num_heads, upsampler, resi_connection)
        self.upscale = self.scale = int(upscale)
        self.in_chans, self.window_size, self.img_range = in_chans, window_size, float(img_range)
        self.upsampler, self.embed_dim = upsampler, embed_dim
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

        # shallow features
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        # deep features
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth decay
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(RSTB(
                embed_dim, resi_connection, input_resolution=img, depth=depth, num_heads=heads,
                window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=rates[start:start + depth], use_checkpoint=use_checkpoint,
                persistent_attn_mask=persistent_attn_mask,
            ))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _conv_block(embed_dim, resi_connection)

        # reconstruction
        num_feat = 64
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            steps: list[nn.Module] = []
            if upscale == 3:
                steps += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
            else:
                for _ in range(int(math.log2(upscale))):
                    steps += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
            self.upsample = nn.Sequential(*steps)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale * upscale * in_chans, 3, 1, 1),
                                          nn.PixelShuffle(upscale))
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _check(
        upscale: int, in_chans: int, patch_size: int, window_size: int, depths: list[int], embed_dim: int,
        num_heads: list[int], upsampler: str, resi_connection: str,
    ) -> None:
        if not isinstance(upscale, int) or isinstance(upscale, bool) or upscale < 1:
            raise ConfigError(f"swinir: upscale must be a positive int, got {upscale!r}")
        if upsampler not in UPSAMPLERS:
            raise ConfigError(f"swinir: upsampler must be one of {list(UPSAMPLERS)}, got {upsampler!r}")
        if upsampler == "pixelshuffle" and not (upscale == 3 or (upscale >= 2 and upscale & (upscale - 1) == 0)):
            raise ConfigError(f"swinir: upsampler 'pixelshuffle' supports upscale 2^n or 3, got {upscale}")
        if upsampler == "nearest+conv" and upscale != 4:
            raise ConfigError(f"swinir: upsampler 'nearest+conv' supports upscale 4 only, got {upscale}")
        if upsampler == "" and upscale != 1:
            raise ConfigError(f"swinir: upsampler '' (denoising / JPEG) keeps the size; upscale must be 1, got {upscale}")
        if resi_connection not in ("1conv", "3conv"):
            raise ConfigError(f"swinir: resi_connection must be '1conv' or '3conv', got {resi_connection!r}")
        if patch_size != 1:
            raise ConfigError(f"swinir: only patch_size 1 is supported (as in every SwinIR model), got {patch_size!r}")
        if in_chans < 1 or embed_dim < 1 or window_size < 1:
            raise ConfigError(f"swinir: in_chans, embed_dim and window_size must be positive "
                              f"(got {in_chans}, {embed_dim}, {window_size})")
        if not depths or len(depths) != len(num_heads) or min(depths) < 1:
            raise ConfigError(f"swinir: depths and num_heads need one positive entry per group, "
                              f"got depths={depths}, num_heads={num_heads}")
        bad = [h for h in num_heads if h < 1 or embed_dim % h]
        if bad:
            raise ConfigError(f"swinir: embed_dim {embed_dim} must be divisible by every num_heads entry, got {num_heads}")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def pad_to_window(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad bottom/right to a multiple of ``window_size`` (official ``check_image_size``).

        Maps too small for one reflection are reflected repeatedly (replicated when 1 pixel wide).
        """
        for dim in (-1, -2):
            need = -x.shape[dim] % self.window_size
            while need:
                size = x.shape[dim]
                step = min(need, size - 1) if size > 1 else need
                pad = (0, step, 0, 0) if dim == -1 else (0, 0, 0, step)
                x = F.pad(x, pad, mode="reflect" if size > 1 else "replicate")
                need -= step
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        tokens = self.pos_drop(self.patch_embed(x))
        masks: dict[Any, torch.Tensor] = {}  # one mask per window geometry, shared by the shifted blocks
        for layer in self.layers:
            tokens = layer(tokens, x_size, masks)
        return _image(self.norm(tokens), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.pad_to_window(x)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        else:
            feat = self.conv_first(x)
            feat = self.conv_after_body(self.forward_features(feat)) + feat
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(feat)
            else:  # nearest+conv
                feat = self.conv_before_upsample(feat)
                feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
                feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
                x = self.conv_last(self.lrelu(self.conv_hr(feat)))
        x = x / self.img_range + mean
        return x[:, :, : h * self.upscale, : w * self.upscale]
