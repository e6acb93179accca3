"""Unimodal encoders (paper §4.2). Each returns an `EncoderOutput`: the pooled feature `[B, D]` that
the unimodal head and most fusion heads read, plus the unpooled token sequence `[B, L, D]` and its
validity mask `[B, L]` (None when every token is valid) that the TF fusion reads.

- `ResNetSpectrogram`: ResNet-18 from scratch on a 1-channel spectrogram `[B, 1, F, T]`.
- `ResNetFrames`: the same 2-D ResNet-18 on every frame of a `[B, N, 3, H, W]` stack (N = 3 frames
  at 1 fps), feature maps averaged over frames and space.
- `ConformerEncoder`: cached frozen features `[B, T, D_in]` + mask → Linear (the 1x1 projection) →
  torchaudio Conformer → mean over valid steps.

Named sizes (`encoder_sizes`): "tiny" for unit tests, "small" for CPU benchmarks, "paper" for real runs
(ResNet-18 widths 64-128-256-512; Conformer d_model 512, 5 layers, dropout 0.1 as in the authors'
CREMA-D config; the paper does not give the Conformer's heads, feed-forward size or kernel: we use
8 heads, 1024, 31).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torchaudio
from torch import nn

SIZES: dict[str, dict] = {
    "tiny": {
        "resnet_widths": (4, 8, 8, 16),
        "dim": 16,
        "conformer_layers": 2,
        "heads": 2,
        "ffn_dim": 32,
        "conv_kernel": 3,
        "dropout": 0.0,
        "fusion_hidden": 8,
        "tf_layers": 2,
    },
    "small": {
        "resnet_widths": (16, 32, 64, 128),
        "dim": 128,
        "conformer_layers": 5,
        "heads": 4,
        "ffn_dim": 256,
        "conv_kernel": 15,
        "dropout": 0.1,
        "fusion_hidden": 64,
        "tf_layers": 2,
    },
    "paper": {
        "resnet_widths": (64, 128, 256, 512),
        "dim": 512,
        "conformer_layers": 5,
        "heads": 8,
        "ffn_dim": 1024,
        "conv_kernel": 31,
        "dropout": 0.1,
        "fusion_hidden": 64,
        "tf_layers": 2,
    },
}


def encoder_sizes(size: str) -> dict:
    """The hyper-parameters of a named size (a copy)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    return dict(SIZES[size])


class EncoderOutput(NamedTuple):
    pooled: torch.Tensor  # [B, D]
    sequence: torch.Tensor  # [B, L, D]
    mask: torch.Tensor | None  # [B, L] bool, True on valid tokens; None = all valid


# ---- ResNet-18 ---------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18's block)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier: `[N, in_channels, H, W]` → feature map `[N, widths[-1], h, w]`
    (h, w = H/32, W/32 rounded up). Randomly initialised (the paper trains it from scratch)."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int] = (64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, in_ch = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_ch, w, stride), BasicBlock(w, w, 1)))
            in_ch = w
        self.stages = nn.Sequential(*stages)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class ResNetSpectrogram(nn.Module):
    """Audio: `[B, 1, F, T]` spectrogram → ResNet-18 → mean over space → `[B, D]`."""

    def __init__(self, widths: tuple[int, int, int, int] = (64, 128, 256, 512)):
        super().__init__()
        self.trunk = ResNet18Trunk(1, widths)
        self.dim = widths[-1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"spectrogram input must be [B, 1, F, T], got {tuple(x.shape)}")
        fmap = self.trunk(x)  # [B, D, f, t]
        sequence = fmap.flatten(2).transpose(1, 2)  # [B, f*t, D]
        return EncoderOutput(sequence.mean(1), sequence, None)


class ResNetFrames(nn.Module):
    """Video: `[B, N, 3, H, W]` frames → the same 2-D ResNet-18 on every frame → mean over frames and
    space → `[B, D]` (the 3-D average pooling of the OGM-GE/MLB code)."""

    def __init__(self, widths: tuple[int, int, int, int] = (64, 128, 256, 512)):
        super().__init__()
        self.trunk = ResNet18Trunk(3, widths)
        self.dim = widths[-1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"frame input must be [B, N, 3, H, W], got {tuple(x.shape)}")
        b = x.shape[0]
        fmap = self.trunk(x.flatten(0, 1))  # [B*N, D, h, w]
        sequence = fmap.flatten(2).transpose(1, 2).reshape(b, -1, fmap.shape[1])  # [B, N*h*w, D]
        return EncoderOutput(sequence.mean(1), sequence, None)


# ---- Conformer ----------------------------------------------------------------------------------------
class _MaskedConvolution(nn.Module):
    """Wraps torchaudio's Conformer convolution module so padded steps enter its depthwise convolution
    as zeros. torchaudio masks padding only in self-attention; its convolution would otherwise mix
    padded values into the last valid steps. The zeroing happens right before the depthwise
    convolution (the pointwise convolution before it has a bias, so zeroing earlier is not enough),
    which makes a padded sequence behave like the same sequence alone with 'same' zero padding.
    The padding mask is set by `ConformerEncoder.forward` on the shared `state` dict, keyed by device
    (so nn.DataParallel replicas, which share the dict, do not read each other's masks)."""

    def __init__(self, conv_module: nn.Module, state: dict):
        super().__init__()
        seq = conv_module.sequential
        # torchaudio 2.x layout: pointwise conv, GLU, depthwise conv, norm, SiLU, pointwise, dropout
        if not (isinstance(seq[2], nn.Conv1d) and seq[2].groups == seq[2].in_channels > 1):
            raise RuntimeError(
                "unexpected torchaudio Conformer convolution layout; update _MaskedConvolution"
            )
        self.inner = conv_module
        self._state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, D]
        seq = self.inner.sequential
        h = seq[1](seq[0](self.inner.layer_norm(x).transpose(1, 2)))  # [B, C, T] after pointwise + GLU
        pad = self._state.get(x.device)  # [B, T] True on padded steps
        if pad is not None:
            h = h.masked_fill(pad[:, None, :], 0.0)
        return seq[2:](h).transpose(1, 2)  # [B, T, D]


class ConformerEncoder(nn.Module):
    """Cached features `[B, T, D_in]` + mask `[B, T]` → `[B, D]`.

    Linear projection (the "1x1" projection of the paper) → torchaudio Conformer → mean over valid
    steps. Input is given to torchaudio as (batch, time, dim) with the valid lengths, so padding is
    masked in attention (and, via `_MaskedConvolution`, zeroed before the depthwise convolution).
    The authors' code fed a (time, batch, dim) tensor where (batch, time, dim) was expected, mixing
    samples of a batch; this encoder does not reproduce that bug. Padding must be at the end of each
    sequence (right-padded), as `mlb.data` produces it.
    """

    def __init__(
        self,
        input_dim: int,
        *,
        dim: int = 512,
        num_layers: int = 5,
        heads: int = 8,
        ffn_dim: int = 1024,
        conv_kernel: int = 31,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.dim = dim
        self.project = nn.Linear(input_dim, dim)
        self.conformer = torchaudio.models.Conformer(
            input_dim=dim,
            num_heads=heads,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            depthwise_conv_kernel_size=conv_kernel,
            dropout=dropout,
        )
        self._state: dict = {}
        for layer in self.conformer.conformer_layers:
            layer.conv_module = _MaskedConvolution(layer.conv_module, self._state)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        if x.dim() != 3:
            raise ValueError(f"sequence input must be [B, T, D_in], got {tuple(x.shape)}")
        b, t, _ = x.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        lengths = mask.sum(1).clamp_min(1)  # [B]; an empty sequence would make attention NaN
        # torchaudio builds its padding mask from `lengths`, [B, max(lengths)]: drop the padding columns that
        # no row uses (a subset of a batch, e.g. G-Blending's held-out rows), or the shapes disagree.
        used = int(lengths.max())
        x, mask = x[:, :used], mask[:, :used]  # [B, T', D_in], [B, T']
        h = self.project(x.masked_fill(~mask[:, :, None], 0.0))  # [B, T, dim]
        self._state[x.device] = ~mask
        try:
            h, _ = self.conformer(h, lengths)  # [B, T, dim]
        finally:
            self._state.pop(x.device, None)
        return EncoderOutput(masked_mean(h, mask), h, mask)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x [B, T, D]` over the steps where `mask [B, T]` is True → `[B, D]`."""
    weights = mask.to(x.dtype)[:, :, None]  # [B, T, 1]
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def build_encoder(kind: str, *, sizes: dict, input_dim: int | None = None) -> nn.Module:
    """kind: "resnet-spectrogram", "resnet-frames" or "conformer" (needs input_dim)."""
    if kind == "resnet-spectrogram":
        return ResNetSpectrogram(tuple(sizes["resnet_widths"]))
    if kind == "resnet-frames":
        return ResNetFrames(tuple(sizes["resnet_widths"]))
    if kind == "conformer":
        if not input_dim:
            raise ValueError(f"conformer encoder needs input_dim, got {input_dim!r}")
        return ConformerEncoder(
            input_dim,
            dim=sizes["dim"],
            num_layers=sizes["conformer_layers"],
            heads=sizes["heads"],
            ffn_dim=sizes["ffn_dim"],
            conv_kernel=sizes["conv_kernel"],
            dropout=sizes["dropout"],
        )
    raise ValueError(f"unknown encoder kind {kind!r}")
