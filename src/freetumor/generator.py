"""Learned difference maps: FreeTumor's generator applied to patches and to native-grid CT.

* :func:`difference_map`: D~ = blur(G(x)[organ channel]) — the map of the
  tumour's *own* organ (:func:`select_channel`; the released code always read
  channel 0), blurred by a 3D Gaussian (kernel 7, sigma 1; :func:`blur3d`).
* :func:`apply_difference`: the blend in patch units, x' = x + sign * W * D with
  W = O * B * T prepared per patch (organ, soft mask, texture).
* :class:`LearnedDifference`: runs a trained generator on a native-grid CT
  around one lesion (its box plus a context margin, or the whole training
  patch) and hands the map to :class:`freetumor.synthesis.Synthesizer`; for a generator trained
  on a lesion profile's renders (``train-synth --profile``) the map is the residual in HU that the
  Synthesizer adds, weighted by the occupancy, to the profile's lesion.

The networks themselves live in :mod:`freetumor.models.generator`.

Example:
    >>> import torch
    >>> from freetumor.config import load_config
    >>> from freetumor.models import build_generator
    >>> cfg = load_config("liver-cpu-tiny", ["data.roi_size=[32,32,32]"])
    >>> d = build_generator(cfg)(torch.rand(2, 1, 32, 32, 32))
    >>> select_channel(d, torch.tensor([0, 2])).shape
    torch.Size([2, 1, 32, 32, 32])
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import load_network
from .config import CONTEXTS
from .errors import ConfigError
from .grids import context_region, from_ras, inner_slices, network_input, resample_to
from .organs import Organ


# ----------------------------------------------------------------------------- map operations
def gaussian_kernel1d(sigma: float, size: int, dtype=torch.float32) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def blur3d(x: torch.Tensor, sigma: float = 1.0, kernel: int = 7) -> torch.Tensor:
    """Separable 3D Gaussian blur of ``(B, C, X, Y, Z)`` (zero padding, as the released code)."""
    k = gaussian_kernel1d(sigma, kernel, x.dtype).to(x.device)
    c = x.shape[1]
    pad = kernel // 2
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel
        w = k.view(shape).repeat(c, 1, 1, 1, 1)
        padding = [0, 0, 0]
        padding[axis] = pad
        x = F.conv3d(x, w, padding=tuple(padding), groups=c)
    return x


def select_channel(dmap: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """Per sample b, the map of channel ``channel[b]``: ``(B, C, ...) -> (B, 1, ...)``."""
    idx = channel.to(dmap.device).long().view(-1, 1, 1, 1, 1).expand(-1, 1, *dmap.shape[2:])
    return torch.gather(dmap, 1, idx)


def difference_map(generator, x: torch.Tensor, channel: torch.Tensor, sigma: float = 1.0,
                   kernel: int = 7) -> torch.Tensor:
    """D~ = blur(select_channel(G(x), organ channel))."""
    return blur3d(select_channel(generator(x), channel), sigma, kernel)


def apply_difference(x: torch.Tensor, weight: torch.Tensor, dmap: torch.Tensor, sign: int) -> torch.Tensor:
    """x' = x + sign * weight * D~ with ``weight`` = O * B * T (zero outside the organ and the soft mask)."""
    return x + float(sign) * weight * dmap


class LearnedDifference:
    """A trained generator as the ``difference`` of :class:`~freetumor.synthesis.Synthesizer`.

    For each lesion the generator sees the CT around the lesion box (``context``
    ``bbox``: the box plus ``margin`` target voxels each side; ``patch``: the
    whole training patch, as the paper), reoriented to RAS, resampled to the
    training spacing and windowed as in Stage 1. Its organ channel is blurred
    and resampled back onto the box. The returned D is scaled so that the HU
    change equals Stage 1's (the training window's width over the organ's).

    Args:
        generator: a path to ``generator.pt``, or ``(model, cfg)``.
        device: torch device (default CPU).
        context: ``bbox`` or ``patch``; default from the generator's config.
        margin: context margin in target voxels; default from the config.
    """

    def __init__(self, generator, device: str | None = None, context: str | None = None,
                 margin: int | None = None):
        self.device = torch.device(device or "cpu")
        self.model, self.cfg = load_network(generator, "generator", self.device)
        self.path = str(generator) if isinstance(generator, (str, os.PathLike)) else None
        s = self.cfg.synth
        self.context = context or s.context
        if self.context not in CONTEXTS:
            raise ConfigError(f"context must be bbox or patch, got {self.context!r}")
        self.margin = int(s.context_margin if margin is None else margin)
        self.spacing = tuple(self.cfg.data.spacing)
        self.window = tuple(self.cfg.data.hu_window)
        self.roi = tuple(self.cfg.data.roi_size)
        self.multiple = int(np.prod(s.generator.strides))
        self.region = self.model.region
        # a ResidualGenerator (train-synth --profile): an unblurred residual in HU on a profile's render
        self.residual = s.lesions == "profile"
        self.calls = 0

    def check_organ(self, organ: Organ) -> None:
        if organ.region != self.region:
            raise ConfigError(f"generator {self.path or ''} was trained for the {self.region}, not for "
                              f"{organ.name} ({organ.region})".replace("  ", " "))

    @torch.no_grad()
    def run(self, ct01: torch.Tensor, channel) -> torch.Tensor:
        """D~ on windowed RAS patches ``(B, 1, X, Y, Z)`` at training spacing (padded to the net's multiple);
        ``channel``: the organ channel, one for all or one per patch."""
        shape = ct01.shape[2:]
        m = self.multiple
        pads = [(-s) % m for s in shape]
        x = F.pad(ct01, (0, pads[2], 0, pads[1], 0, pads[0])) if any(pads) else ct01
        s = self.cfg.synth
        if self.residual:
            d = self.model(x)
        else:
            ch = torch.as_tensor(channel).reshape(-1).expand(x.shape[0])
            d = difference_map(self.model, x, ch, s.blur_sigma, s.blur_kernel)
        return d[:, :, : shape[0], : shape[1], : shape[2]]

    def for_volume(self, image: np.ndarray, box, grid, organ: Organ) -> np.ndarray:
        """D for ``image[box]`` (native grid, HU); for a residual generator, the residual in HU."""
        self.check_organ(organ)
        region = context_region(box, grid, self.spacing, image.shape, self.context, self.margin, self.roi)
        t, _, ras_shape = network_input(image, region, grid, self.spacing, self.window, self.device)
        d = self.run(t, organ.generator_channel)
        d = resample_to(d, ras_shape)[0, 0].cpu().numpy()
        d = from_ras(d, grid)
        inner = inner_slices(box, region)
        self.calls += 1
        lo, hi = self.window
        scale = (hi - lo) if self.residual else (hi - lo) / organ.window_width
        return np.ascontiguousarray(d[inner], dtype=np.float32) * np.float32(scale)

    def __call__(self, crop, mask, organ):  # pragma: no cover - Synthesizer uses for_volume
        raise TypeError("LearnedDifference needs the whole volume; use Synthesizer(difference=...)")
