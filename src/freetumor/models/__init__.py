"""Segmentation networks built from a config (MONAI implementations).

``model.name`` picks the network; all take one CT channel and give
``num_classes(cfg)`` logits at the input resolution:

* ``swinunetr`` — SwinUNETR as in FreeTumor (feature size 48, v2, gradient
  checkpointing); the ROI must be divisible by 32;
* ``unet`` — MONAI's residual 3D U-Net (``channels``, ``strides``, ``num_res_units``);
* ``dynunet`` — an nnU-Net style DynUNet, one level per entry of ``filters``,
  strides planned from the ROI (:func:`freetumor.config.dynunet_plan`), no deep supervision.

This module imports torch; ``import freetumor`` does not import it.

Example:
    >>> import torch
    >>> from freetumor.config import load_config
    >>> cfg = load_config("liver-cpu-tiny", ["data.roi_size=[32,32,32]"])
    >>> build_model(cfg)(torch.zeros(1, 1, 32, 32, 32)).shape
    torch.Size([1, 3, 32, 32, 32])
"""

from __future__ import annotations

import torch

from ..config import MODEL_NAMES, dynunet_plan, num_classes
from ..errors import ConfigError

__all__ = ["MODEL_NAMES", "build_model", "dynunet_plan"]


def _need_einops() -> None:
    """MONAI's SwinUNETR calls ``einops.rearrange`` in every forward pass; fail early without it."""
    import importlib.util

    if importlib.util.find_spec("einops") is None:
        raise ConfigError("model 'swinunetr' needs the einops package (pip install einops); "
                          "or choose model.name=unet or dynunet")


def build_model(cfg: dict) -> torch.nn.Module:
    """The network ``cfg["model"]`` describes: in 1 channel, out ``num_classes(cfg)``.

    Raises:
        ConfigError: unknown ``model.name``; ``swinunetr`` without the einops package.
    """
    m = cfg["model"]
    name = m.get("name")
    out = num_classes(cfg)
    if name == "swinunetr":
        _need_einops()
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(
            in_channels=1,
            out_channels=out,
            feature_size=int(m["feature_size"]),
            use_v2=bool(m["use_v2"]),
            use_checkpoint=bool(m["use_checkpoint"]),
            drop_rate=float(m.get("dropout", 0.0)),
            spatial_dims=3,
        )
    if name == "unet":
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=out,
            channels=tuple(int(c) for c in m["channels"]),
            strides=tuple(int(s) for s in m["strides"]),
            num_res_units=int(m["num_res_units"]),
            dropout=float(m.get("dropout", 0.0)),
        )
    if name == "dynunet":
        from monai.networks.nets import DynUNet

        filters = [int(f) for f in m["filters"]]
        kernels, strides = dynunet_plan(cfg["data"]["roi_size"], len(filters))
        dropout = float(m.get("dropout", 0.0))
        return DynUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=out,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            dropout=dropout or None,
            res_block=True,
            deep_supervision=False,
        )
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
