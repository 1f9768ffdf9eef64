"""Hover-Net (Graham et al. 2019, Medical Image Analysis 58:101563), configurable in width and depth.

Encoder: a 7x7 stem conv (stride 1) and a pre-activation ResNet50 (bottleneck units, stride 2 in the
3x3 conv of the first unit of stages 2-4, TF "same" padding as in vqdang/hover_net), then a 1x1
conv to ``encoder_widths[2]`` (1024) channels. One decoder per output (``np``, ``hv``, optional
``tp``), each: nearest 2x upsampling + skip sum, conv, dense block (units BN-ReLU-conv1x1-BN-ReLU-
convKxK with 4 groups; K = 5 "original", 3 "fast"), 1x1 conv, twice; then a KxK conv and
BN-ReLU-conv1x1 to the logits. With ``same_padding=False`` the decoder convs are valid, so
"fast" maps 256 -> 164 and "original" 270 -> 80 (the original mode also has a valid stem);
``same_padding=True`` pads every conv, so the output has the input size (as hover_net's CoNIC branch).

Input: ``(B, C, H, W)`` float images scaled to [0, 1]. The model applies no normalisation itself
(hover_net divides uint8 pixels by 255 inside its forward; in nudiff the data pipeline does that),
also with ImageNet encoder weights, as hover_net and MONAI's Hover-Net bundle do.

Hyper-parameters: :class:`nudiff.segmentation.hovernet.config.HoVerNetConfig`; encoder weights:
:func:`nudiff.segmentation.hovernet.encoder_weights.load_encoder_weights`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nudiff.segmentation.hovernet.config import HoVerNetConfig
from nudiff.segmentation.hovernet.losses import center_crop

_STAGE_STRIDES = (1, 2, 2, 2)


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(channels), relu=nn.ReLU(inplace=True)))


class _BottleneckUnit(nn.Module):
    """[BN-ReLU] conv1x1 - BN-ReLU - conv3x3 (stride) - BN-ReLU - conv1x1; no pre-activation on a
    stage's first unit, whose input already ends in BN-ReLU (hover_net ``ResidualBlock``)."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, preact: bool) -> None:
        super().__init__()
        self.preact_bn = nn.BatchNorm2d(in_ch) if preact else None
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # TF "same": for an even input and stride 2 the extra padding row/column goes at the end.
        self.pad2 = nn.ZeroPad2d((0, 1, 0, 1) if stride == 2 else 1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.preact_bn is not None:
            x = F.relu(self.preact_bn(x))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(self.pad2(x))))
        return self.conv3(x)


class _ResidualStage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_units: int, stride: int) -> None:
        super().__init__()
        needs_projection = in_ch != out_ch or stride != 1
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if needs_projection else None
        self.units = nn.ModuleList(
            _BottleneckUnit(in_ch if i == 0 else out_ch, out_ch // 4, out_ch, stride if i == 0 else 1, i > 0)
            for i in range(n_units)
        )
        self.out = _bn_relu(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        for unit in self.units:
            x = unit(x) + skip
            skip = x
        return self.out(x)


class PreActResNetEncoder(nn.Module):
    """Stem + four pre-activation stages; returns the four stage outputs (strides 1, 2, 4, 8)."""

    def __init__(self, config: HoVerNetConfig) -> None:
        super().__init__()
        stem_pad = 3 if config.padded_stem else 0
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(config.in_channels, config.stem_channels, 7, padding=stem_pad, bias=False),
                bn=nn.BatchNorm2d(config.stem_channels),
                relu=nn.ReLU(inplace=True),
            )
        )
        in_chs = (config.stem_channels, *config.encoder_widths[:-1])
        self.stages = nn.ModuleList(
            _ResidualStage(i, o, n, s)
            for i, o, n, s in zip(in_chs, config.encoder_widths, config.encoder_blocks, _STAGE_STRIDES)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class _DenseUnit(nn.Module):
    def __init__(self, in_ch: int, bottleneck: int, growth: int, groups: int, kernel: int, pad: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict(
                preact=_bn_relu(in_ch),
                conv1=nn.Conv2d(in_ch, bottleneck, 1, bias=False),
                act1=_bn_relu(bottleneck),
                conv2=nn.Conv2d(bottleneck, growth, kernel, padding=pad, groups=groups, bias=False),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        new = self.body(x)
        return torch.cat([center_crop(x, new.shape[-2:]), new], dim=1)


def _decoder_level(config: HoVerNetConfig, in_ch: int, out_ch: int, n_units: int) -> nn.Sequential:
    """conva (in -> out - n_units * growth) - dense block - BN-ReLU - convf 1x1 (out -> out)."""
    k, pad = config.kernel_size, config.decoder_padding
    ch = out_ch - n_units * config.dense_growth
    units: list[nn.Module] = [nn.Conv2d(in_ch, ch, k, padding=pad, bias=False)]
    for i in range(n_units):
        units.append(
            _DenseUnit(
                ch + i * config.dense_growth, config.dense_bottleneck, config.dense_growth, config.dense_groups, k, pad
            )
        )
    units += [_bn_relu(out_ch), nn.Conv2d(out_ch, out_ch, 1, bias=False)]
    return nn.Sequential(*units)


class _DecoderBranch(nn.Module):
    def __init__(self, config: HoVerNetConfig, out_channels: int) -> None:
        super().__init__()
        w, k = config.encoder_widths, config.kernel_size
        self.u3 = _decoder_level(config, w[2], w[1], config.decoder_units[0])
        self.u2 = _decoder_level(config, w[1], w[0], config.decoder_units[1])
        # hover_net pads this conv in both modes (its "conva/pad" layer).
        self.u1 = nn.Conv2d(w[0], config.head_channels, k, padding=k // 2, bias=False)
        self.u0 = nn.Sequential(
            OrderedDict(act=_bn_relu(config.head_channels), conv=nn.Conv2d(config.head_channels, out_channels, 1))
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        d0, d1, d2, d3 = features
        x = self.u3(_upsample(d3) + d2)
        x = _upsample(x)
        x = self.u2(x + center_crop(d1, x.shape[-2:]))
        x = _upsample(x)
        return self.u0(self.u1(x + center_crop(d0, x.shape[-2:])))


def _upsample(x: Tensor) -> Tensor:
    # hover_net's UpSample2x (fixed unpooling with a 2x2 ones matrix) is nearest-neighbour upsampling.
    return F.interpolate(x, scale_factor=2, mode="nearest")


class HoVerNet(nn.Module):
    """Hover-Net; ``forward(x (B, C, H, W) in [0, 1])`` returns a dict of logits / maps:
    ``"np"`` ``(B, 2, H', W')`` nuclei-pixel logits (channel 1 = nucleus), ``"hv"`` ``(B, 2, H', W')``
    (channel 0 horizontal, 1 vertical), and ``"tp"`` ``(B, n_types, H', W')`` when ``n_types > 0``;
    ``H' = config.output_size(H)``.

    Args:
        config: the hyper-parameters (stored in checkpoints through ``config.to_dict()``).
        generator: draws the initial weights (Kaiming normal, fan-out, as hover_net), so the same
            seed builds the same network; ``None`` uses torch's global generator.
    """

    def __init__(self, config: HoVerNetConfig | None = None, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else HoVerNetConfig()
        self.encoder = PreActResNetEncoder(config)
        self.bottleneck = nn.Conv2d(config.encoder_widths[3], config.encoder_widths[2], 1, bias=False)
        branches = {"np": 2, "hv": 2}
        if config.n_types > 0:
            branches["tp"] = config.n_types
        self.decoders = nn.ModuleDict({name: _DecoderBranch(config, ch) for name, ch in branches.items()})
        self._init_weights(generator)

    def _init_weights(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                if module.bias is not None:  # torch's default bias init, but from ``generator``
                    bound = 1.0 / (module.weight[0].numel() ** 0.5)
                    with torch.no_grad():
                        module.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"HoVerNet expects (B, {self.config.in_channels}, H, W) input, got {tuple(x.shape)}")
        for size in x.shape[-2:]:
            self.config.output_size(int(size))  # raises ValueError naming the bad size
        features = self.encoder(x)
        features[3] = self.bottleneck(features[3])
        return {name: branch(features) for name, branch in self.decoders.items()}
