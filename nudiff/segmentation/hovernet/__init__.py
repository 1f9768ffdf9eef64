"""Hover-Net (Graham et al., Medical Image Analysis 58:101563, 2019).

:class:`HoVerNet` built from a :class:`HoVerNetConfig` (the paper's network by default,
smaller variants through the same config), its encoder weights (:func:`load_encoder_weights`),
its losses (:func:`hovernet_loss`), tiled inference (:mod:`.inference`) and training
(:mod:`.train`).
"""

from nudiff.segmentation.hovernet.config import HoVerNetConfig
from nudiff.segmentation.hovernet.encoder_weights import load_encoder_weights, state_dict_from_torchvision_resnet
from nudiff.segmentation.hovernet.losses import (
    center_crop,
    crop_targets,
    hovernet_loss,
    hv_gradients,
    msge_loss,
    sobel_kernels,
    soft_dice_loss,
    structure_to_targets,
)
from nudiff.segmentation.hovernet.network import HoVerNet, PreActResNetEncoder

__all__ = [
    "HoVerNet",
    "HoVerNetConfig",
    "PreActResNetEncoder",
    "center_crop",
    "crop_targets",
    "hovernet_loss",
    "hv_gradients",
    "load_encoder_weights",
    "msge_loss",
    "sobel_kernels",
    "soft_dice_loss",
    "state_dict_from_torchvision_resnet",
    "structure_to_targets",
]
