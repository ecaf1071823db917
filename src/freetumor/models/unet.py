"""The one 3D residual U-Net builder (MONAI ``UNet``) behind the segmentor, generator and discriminator.

Example:
    >>> import torch
    >>> net = residual_unet(2, [4, 8], [2], num_res_units=1)
    >>> net(torch.zeros(1, 1, 8, 8, 8)).shape
    torch.Size([1, 2, 8, 8, 8])
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import UNet


def residual_unet(out_channels: int, channels: Sequence[int], strides: Sequence[int], *, num_res_units: int = 2,
                  norm="instance", dropout: float = 0.0) -> torch.nn.Module:
    """A 1-channel-in 3D U-Net with residual units (MONAI's ``UNet``; ``norm`` as MONAI takes it)."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=tuple(int(c) for c in channels),
        strides=tuple(int(s) for s in strides),
        num_res_units=int(num_res_units),
        norm=norm,
        dropout=float(dropout),
    )
