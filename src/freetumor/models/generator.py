"""The networks of Stage 1: FreeTumor's difference-map generator and voxel-wise discriminator.

* :class:`DifferenceGenerator` (METHOD §4.2): a 3D U-Net on the windowed CT
  patch ([0, 1]) with one output channel per abdominal organ (liver 0,
  pancreas 1, kidney 2) through ``tanh``, or one chest channel through
  ``sigmoid``.
* :class:`ResidualGenerator` (``synth.lesions: profile``): a bounded residual added to a lesion
  rendered from a lesion profile, zero at initialisation (the profile's lesion unchanged).
* :func:`build_discriminator`: a 3D U-Net with 3 classes (background, real
  tumour, fake tumour).

Networks use instance normalisation by default, so a tumour's map does not
depend on the other patches of a batch (the released UNet3D always used batch
statistics, even at generation).

Example:
    >>> import torch
    >>> from freetumor.config import load_config
    >>> cfg = load_config("liver-cpu-tiny", ["data.roi_size=[32,32,32]"])
    >>> d = build_generator(cfg)(torch.rand(2, 1, 32, 32, 32))
    >>> d.shape, bool(d.abs().max() <= 1)
    (torch.Size([2, 3, 32, 32, 32]), True)
"""

from __future__ import annotations

import torch

from ..config import Config, NetSpec
from ..errors import ConfigError
from .unet import residual_unet

GENERATOR_CHANNELS = {"abdomen": 3, "chest": 1}
DISCRIMINATOR_CLASSES = 3  # 0 background, 1 real tumour, 2 fake tumour
REAL, FAKE = 1, 2


def _unet(spec: NetSpec, out_channels: int) -> torch.nn.Module:
    norm = ("instance", {"affine": True}) if spec.norm == "instance" else "batch"
    return residual_unet(out_channels, spec.channels, spec.strides, num_res_units=spec.num_res_units, norm=norm)


class DifferenceGenerator(torch.nn.Module):
    """G: CT patch in [0, 1] -> per-organ difference maps (tanh abdomen, sigmoid chest)."""

    def __init__(self, region: str, spec: NetSpec):
        super().__init__()
        if region not in GENERATOR_CHANNELS:
            raise ConfigError(f"unknown region {region!r}")
        self.region = region
        self.net = _unet(spec, GENERATOR_CHANNELS[region])

    @property
    def out_channels(self) -> int:
        return GENERATOR_CHANNELS[self.region]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.tanh(y) if self.region == "abdomen" else torch.sigmoid(y)


class ResidualGenerator(torch.nn.Module):
    """G for profile lesions: the windowed patch with a rendered profile lesion -> a bounded residual.

    ``bound * tanh(head(U-Net(x)))`` with one output channel, in the units of the windowed patch
    (``bound`` = ``synth.residual_hu`` over the window's width). The 1x1x1 head starts at zero, so
    an untrained generator returns exactly 0: x' = x_profile + W * G(x_profile) is then the
    profile's render itself, and training only learns how to move away from it.
    """

    out_channels = 1

    def __init__(self, region: str, spec: NetSpec, bound: float):
        super().__init__()
        if region not in GENERATOR_CHANNELS:
            raise ConfigError(f"unknown region {region!r}")
        self.region = region
        self.bound = float(bound)
        self.net = _unet(spec, spec.channels[0])
        self.head = torch.nn.Conv3d(spec.channels[0], 1, kernel_size=1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bound * torch.tanh(self.head(self.net(x)))


def build_generator(cfg: Config) -> torch.nn.Module:
    """The generator ``cfg.synth.generator`` describes, for the config's organ region: a
    :class:`DifferenceGenerator`, or a :class:`ResidualGenerator` when ``synth.lesions`` is ``profile``."""
    if cfg.synth.lesions == "profile":
        lo, hi = cfg.data.hu_window
        return ResidualGenerator(cfg.organ_info.region, cfg.synth.generator, cfg.synth.residual_hu / (hi - lo))
    return DifferenceGenerator(cfg.organ_info.region, cfg.synth.generator)


def build_discriminator(cfg: Config) -> torch.nn.Module:
    """The voxel-wise 3-class discriminator (background / real tumour / fake tumour)."""
    return _unet(cfg.synth.discriminator, DISCRIMINATOR_CLASSES)
