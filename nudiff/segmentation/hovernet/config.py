"""Hover-Net hyper-parameters (Graham et al. 2019, Medical Image Analysis 58:101563).

:class:`HoVerNetConfig` holds the width and depth of the network built by
:class:`nudiff.segmentation.hovernet.HoVerNet` and knows its geometry: output size per input
size in "fast" (256 -> 164) and "original" (270 -> 80) mode, or unchanged with ``same_padding``.
It is stored in checkpoints as a plain dict (:meth:`HoVerNetConfig.to_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from nudiff.config import from_mapping

Mode = Literal["fast", "original"]
_RESNET50 = {"encoder_blocks": (3, 4, 6, 3), "stem_channels": 64, "encoder_widths": (256, 512, 1024, 2048)}


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
        for name in (
            "in_channels",
            "stem_channels",
            "dense_growth",
            "dense_bottleneck",
            "dense_groups",
            "head_channels",
        ):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"HoVerNetConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not _is_int(self.n_types) or self.n_types < 0 or self.n_types == 1:
            raise ValueError(f"HoVerNetConfig.n_types must be 0 (no type branch) or >= 2, got {self.n_types!r}")
        if len(self.encoder_blocks) != 4 or len(self.encoder_widths) != 4:
            raise ValueError(
                "HoVerNetConfig.encoder_blocks and encoder_widths need 4 entries (4 stages), got "
                f"{self.encoder_blocks} and {self.encoder_widths}"
            )
        if any(w % 4 for w in self.encoder_widths):
            raise ValueError(f"HoVerNetConfig.encoder_widths must be multiples of 4, got {self.encoder_widths}")
        if len(self.decoder_units) != 2:
            raise ValueError(f"HoVerNetConfig.decoder_units needs 2 entries, got {self.decoder_units}")
        for name in ("dense_growth", "dense_bottleneck"):
            if getattr(self, name) % self.dense_groups:
                raise ValueError(
                    f"HoVerNetConfig.{name}={getattr(self, name)} is not divisible by dense_groups={self.dense_groups}"
                )
        for width, units in zip(self.encoder_widths[1::-1], self.decoder_units):
            # a dense block must end with the channels of the skip it is added to
            if width - units * self.dense_growth < 1:
                raise ValueError(
                    f"HoVerNetConfig.decoder_units={self.decoder_units} x dense_growth="
                    f"{self.dense_growth} leaves no channels below encoder width {width}"
                )

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
            raise ValueError(
                f"input size {input_size} is too small for Hover-Net's valid convolutions "
                f"({self.mode} mode); use a larger input or same_padding=True"
            )
        return 2 * u2

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict for checkpoints; :meth:`from_dict` rebuilds the config."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoVerNetConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ConfigError`` naming them."""
        return from_mapping(cls, data, "HoVerNetConfig")

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
