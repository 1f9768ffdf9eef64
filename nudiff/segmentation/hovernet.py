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

Encoder weights (:func:`load_encoder_weights`): ``"none"``, a file saved from ``model.encoder``,
or ``"imagenet"``: torchvision's ResNet50 ImageNet weights read from torchvision's cache only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nudiff.errors import InputDataError
from nudiff.segmentation.losses import center_crop

logger = logging.getLogger(__name__)

Mode = Literal["fast", "original"]
_RESNET50 = {"encoder_blocks": (3, 4, 6, 3), "stem_channels": 64, "encoder_widths": (256, 512, 1024, 2048)}
_STAGE_STRIDES = (1, 2, 2, 2)


@dataclass(frozen=True)
class HoVerNetConfig:
    """Hover-Net hyper-parameters; the defaults are the paper's network in "fast" mode.

    Attributes:
        mode: ``"fast"`` (decoder kernels 3x3, padded stem: 256 -> 164) or ``"original"`` (5x5,
            valid stem: 270 -> 80), as hover_net's two modes.
        same_padding: pad every conv so the output has the input size (any mode).
        in_channels: image channels.
        n_types: nucleus types of the ``tp`` branch; 0 = no type branch (1 is not allowed).
        encoder_blocks: bottleneck units per stage (ResNet50: 3, 4, 6, 3).
        stem_channels: channels of the 7x7 stem conv (64).
        encoder_widths: output channels of the four stages (256, 512, 1024, 2048); each unit's
            inner width is a quarter of it. The bottleneck conv maps the last to ``encoder_widths[2]``.
        decoder_units: dense units in the two dense blocks of each decoder (8, 4).
        dense_growth: channels each dense unit adds (32).
        dense_bottleneck: channels of each dense unit's 1x1 conv (128).
        dense_groups: groups of each dense unit's KxK conv (4).
        head_channels: channels before the 1x1 output conv (64).
    """

    mode: Mode = "fast"
    same_padding: bool = False
    in_channels: int = 3
    n_types: int = 0
    encoder_blocks: tuple[int, ...] = _RESNET50["encoder_blocks"]
    stem_channels: int = 64
    encoder_widths: tuple[int, ...] = _RESNET50["encoder_widths"]
    decoder_units: tuple[int, ...] = (8, 4)
    dense_growth: int = 32
    dense_bottleneck: int = 128
    dense_groups: int = 4
    head_channels: int = 64

    def __post_init__(self) -> None:
        for name in ("encoder_blocks", "encoder_widths", "decoder_units"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(_is_int(v) and v > 0 for v in value):
                raise ValueError(f"HoVerNetConfig.{name} must be a sequence of positive ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))  # lists from JSON become tuples
        if self.mode not in ("fast", "original"):
            raise ValueError(f"HoVerNetConfig.mode must be 'fast' or 'original', got {self.mode!r}")
        if not isinstance(self.same_padding, bool):
            raise ValueError(f"HoVerNetConfig.same_padding must be a bool, got {self.same_padding!r}")
        for name in ("in_channels", "stem_channels", "dense_growth", "dense_bottleneck", "dense_groups",
                     "head_channels"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"HoVerNetConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not _is_int(self.n_types) or self.n_types < 0 or self.n_types == 1:
            raise ValueError(f"HoVerNetConfig.n_types must be 0 (no type branch) or >= 2, got {self.n_types!r}")
        if len(self.encoder_blocks) != 4 or len(self.encoder_widths) != 4:
            raise ValueError("HoVerNetConfig.encoder_blocks and encoder_widths need 4 entries (4 stages), got "
                             f"{self.encoder_blocks} and {self.encoder_widths}")
        if any(w % 4 for w in self.encoder_widths):
            raise ValueError(f"HoVerNetConfig.encoder_widths must be multiples of 4, got {self.encoder_widths}")
        if len(self.decoder_units) != 2:
            raise ValueError(f"HoVerNetConfig.decoder_units needs 2 entries, got {self.decoder_units}")
        for name in ("dense_growth", "dense_bottleneck"):
            if getattr(self, name) % self.dense_groups:
                raise ValueError(f"HoVerNetConfig.{name}={getattr(self, name)} is not divisible by "
                                 f"dense_groups={self.dense_groups}")
        for width, units in zip(self.encoder_widths[1::-1], self.decoder_units):
            # a dense block must end with the channels of the skip it is added to
            if width - units * self.dense_growth < 1:
                raise ValueError(f"HoVerNetConfig.decoder_units={self.decoder_units} x dense_growth="
                                 f"{self.dense_growth} leaves no channels below encoder width {width}")

    @property
    def kernel_size(self) -> int:
        """Decoder conv kernel size: 3 in "fast" mode, 5 in "original"."""
        return 3 if self.mode == "fast" else 5

    @property
    def padded_stem(self) -> bool:
        return self.mode == "fast" or self.same_padding

    @property
    def decoder_padding(self) -> int:
        return self.kernel_size // 2 if self.same_padding else 0

    @property
    def is_resnet50_encoder(self) -> bool:
        """True when the encoder is ResNet50-shaped (the only one that takes ImageNet weights)."""
        return self.in_channels == 3 and all(getattr(self, k) == v for k, v in _RESNET50.items())

    def output_size(self, input_size: int) -> int:
        """Output height (or width) for an input of ``input_size`` pixels (256 -> 164 fast, 270 -> 80
        original, unchanged with ``same_padding``); raises ValueError for sizes the network cannot take."""
        stem = input_size if self.padded_stem else input_size - 6
        if not _is_int(input_size) or stem < 8 or stem % 8:
            need = "a multiple of 8" if self.padded_stem else "6 more than a multiple of 8"
            raise ValueError(f"input size {input_size!r} for Hover-Net ({self.mode} mode): must be {need}")
        if self.same_padding:
            return input_size
        shrink = self.kernel_size - 1
        u3 = stem // 4 - shrink * (1 + self.decoder_units[0])
        u2 = 2 * u3 - shrink * (1 + self.decoder_units[1])
        if u3 < 1 or u2 < 1:
            raise ValueError(f"input size {input_size} is too small for Hover-Net's valid convolutions "
                             f"({self.mode} mode); use a larger input or same_padding=True")
        return 2 * u2

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict for checkpoints; :meth:`from_dict` rebuilds the config."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoVerNetConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown HoVerNetConfig fields: {unknown}")
        return cls(**data)

    @classmethod
    def scaled(cls, width: float, **changes: Any) -> HoVerNetConfig:
        """The paper's network with every channel count multiplied by ``width`` (rounded), then
        ``changes`` applied; e.g. ``scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), same_padding=True)``
        is the small demo network."""
        if not width > 0:
            raise ValueError(f"width multiplier must be > 0, got {width!r}")
        base = cls()
        scale = {
            name: max(1, round(getattr(base, name) * width))
            for name in ("stem_channels", "dense_growth", "dense_bottleneck", "head_channels")
        }
        scale["encoder_widths"] = tuple(max(4, 4 * round(w * width / 4)) for w in base.encoder_widths)
        return cls(**{**scale, **changes})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
            _DenseUnit(ch + i * config.dense_growth, config.dense_bottleneck, config.dense_growth,
                       config.dense_groups, k, pad)
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


def state_dict_from_torchvision_resnet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a torchvision ResNet50 state dict onto :class:`PreActResNetEncoder` keys.

    Transferred (same tensor, same role): every conv (stem ``conv1``; ``conv1/2/3`` of each unit;
    ``downsample.0`` -> the stage's projection ``shortcut``), the stem BN ``bn1`` and each unit's
    ``bn1``/``bn2`` (they follow the same conv in both networks). Not transferred, left at their
    initial values: ``bn3`` and ``downsample.1`` (in ResNet50 they normalise the residual branch /
    the projection before the sum; a pre-activation net has no BN there), ``fc``; and the
    pre-activation BNs and the stage-closing BN, which normalise the sum and have no counterpart.
    MONAI's ``adapt_standard_resnet`` copies bn3 into the next unit's pre-activation BN and
    downsample.1 into the stage-closing BN; we do not, because those BNs see different tensors.

    Args:
        state_dict: keys as ``torchvision.models.resnet50().state_dict()``.

    Returns:
        ``{encoder key: tensor}`` for the transferred tensors only.
    """
    mapped: dict[str, Tensor] = {}
    missing: list[str] = []

    def take(src: str, dst: str) -> None:
        if src in state_dict:
            mapped[dst] = state_dict[src]
        else:
            missing.append(src)

    bn_fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    take("conv1.weight", "stem.conv.weight")
    for f in bn_fields:
        take(f"bn1.{f}", f"stem.bn.{f}")
    for s, n_units in enumerate(HoVerNetConfig().encoder_blocks):
        take(f"layer{s + 1}.0.downsample.0.weight", f"stages.{s}.shortcut.weight")
        for u in range(n_units):
            src, dst = f"layer{s + 1}.{u}", f"stages.{s}.units.{u}"
            for c in ("conv1", "conv2", "conv3"):
                take(f"{src}.{c}.weight", f"{dst}.{c}.weight")
            for b in ("bn1", "bn2"):
                for f in bn_fields:
                    take(f"{src}.{b}.{f}", f"{dst}.{b}.{f}")
    if missing:
        raise ValueError(f"not a torchvision ResNet50 state dict: missing {len(missing)} keys, e.g. {missing[:3]}")
    return mapped


def load_encoder_weights(model: HoVerNet, weights: str | Path | None) -> tuple[str, ...]:
    """Set ``model.encoder``'s weights and return the encoder keys that were loaded.

    Args:
        model: the network to change in place.
        weights: ``"none"`` / ``None`` (keep the random init, seeded by the caller), ``"imagenet"``
            (torchvision's ResNet50 ``IMAGENET1K_V1`` file from torchvision's cache, never
            downloaded, mapped by :func:`state_dict_from_torchvision_resnet`; only for the ResNet50
            encoder configuration), or a path to a ``model.encoder.state_dict()`` saved by torch.

    Raises:
        ValueError: ``"imagenet"`` with another encoder configuration, or a bad state dict.
        InputDataError: the weights file is missing or unreadable (the message names it).
    """
    if weights is None or weights == "none":
        logger.info("Hover-Net encoder: random initialisation")
        return ()
    encoder = model.encoder
    if weights == "imagenet":
        if not model.config.is_resnet50_encoder:
            c = model.config
            raise ValueError(
                "imagenet encoder weights need encoder_blocks=(3, 4, 6, 3), stem_channels=64, "
                f"encoder_widths=(256, 512, 1024, 2048), in_channels=3; this config has encoder_blocks="
                f"{c.encoder_blocks}, stem_channels={c.stem_channels}, encoder_widths={c.encoder_widths}, "
                f"in_channels={c.in_channels}"
            )
        from nudiff.features import imagenet_weights_file  # one place knows torchvision's cache layout

        path = imagenet_weights_file()
        if not path.is_file():
            raise InputDataError(
                f"ImageNet ResNet50 weights not found in torchvision's cache: {path}. nudiff never "
                "downloads; run once with internet: python -c \"import torchvision; "
                "torchvision.models.resnet50(weights='IMAGENET1K_V1')\", or copy resnet50-0676ba61.pth "
                "to that path (the cache folder follows $TORCH_HOME), or use encoder weights 'none'."
            )
        state = _load_file(path)
        mapped = state_dict_from_torchvision_resnet(state)
        _check_shapes(encoder, mapped, path)
        encoder.load_state_dict(mapped, strict=False)
        logger.info("Hover-Net encoder: %d of %d tensors from %s", len(mapped), len(encoder.state_dict()), path)
        return tuple(mapped)
    path = Path(weights)
    if not path.is_file():
        raise InputDataError(f"encoder weights file not found: {path} (expected 'none', 'imagenet' or a file)")
    state = _load_file(path)
    _check_shapes(encoder, state, path)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputDataError(f"{path} is not a state dict of this Hover-Net encoder: {err}") from err
    logger.info("Hover-Net encoder: all %d tensors from %s", len(state), path)
    return tuple(state)


def _load_file(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise InputDataError(f"cannot read encoder weights from {path}: {err}") from err
    if not isinstance(state, Mapping):
        raise InputDataError(f"{path} does not hold a state dict")
    return dict(state)


def _check_shapes(encoder: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    own = encoder.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise InputDataError(f"{path}: tensor shapes differ from this encoder for {len(bad)} keys, e.g. {bad[:3]}")
