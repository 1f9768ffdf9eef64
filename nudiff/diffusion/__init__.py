"""Diffusion core of the paper: noise schedule, L_simple, guidance, samplers and the U-Net.

The schedule and samplers (``schedule``, ``loss``, ``guidance``, ``samplers``) know nothing
about the network; the networks (``blocks``, ``unet``) know nothing about the schedule.
They meet in the training loop (``l_simple``) and in sampling (``sample`` with an
``eps_fn``, e.g. a ``guided_eps`` closure).
"""

from nudiff.diffusion.guidance import guided_eps
from nudiff.diffusion.loss import EpsModel, l_simple
from nudiff.diffusion.samplers import SampleResult, SamplerName, sample
from nudiff.diffusion.schedule import NoiseSchedule, VarianceType, linear_schedule
from nudiff.diffusion.unet import UNet, UNetConfig, count_parameters

__all__ = [
    "EpsModel",
    "NoiseSchedule",
    "SampleResult",
    "SamplerName",
    "UNet",
    "UNetConfig",
    "VarianceType",
    "count_parameters",
    "guided_eps",
    "l_simple",
    "linear_schedule",
    "sample",
]
