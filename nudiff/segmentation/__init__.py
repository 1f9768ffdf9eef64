"""Nuclei segmentation networks trained on real and augmented subsets (spec section 6).

Hover-Net (Graham et al. 2019): :class:`HoVerNet` built from a :class:`HoVerNetConfig` (the
paper's network by default, smaller variants through the same config), its encoder weights
(:func:`load_encoder_weights`) and its losses (:func:`hovernet_loss`).
"""

from nudiff.segmentation.encoder_weights import (
    load_encoder_weights,
    state_dict_from_torchvision_resnet,
)
from nudiff.segmentation.hovernet import HoVerNet, PreActResNetEncoder
from nudiff.segmentation.hovernet_config import HoVerNetConfig
from nudiff.segmentation.losses import (
    center_crop,
    crop_targets,
    hovernet_loss,
    hv_gradients,
    msge_loss,
    sobel_kernels,
    soft_dice_loss,
    structure_to_targets,
)

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
