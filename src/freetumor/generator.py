"""The learned part of FreeTumor: generator, discriminator and generator-backed synthesis.

* :class:`DifferenceGenerator` (METHOD §4.2): a 3D U-Net on the windowed CT
  patch ([0, 1]) with one output channel per abdominal organ (liver 0,
  pancreas 1, kidney 2) through ``tanh``, or one chest channel through
  ``sigmoid``. The map D used for a tumour is the channel of *its* organ
  (:func:`select_channel`; the released code always read channel 0), blurred
  by a 3D Gaussian (kernel 7, sigma 1; :func:`blur3d`).
* :func:`build_discriminator`: a 3D U-Net with 3 classes (background, real
  tumour, fake tumour).
* :func:`apply_difference`: the blend in patch units, x' = x + sign * W * D with
  W = O * B * T prepared per patch (organ, soft mask, texture).
* :class:`LearnedDifference`: runs a trained generator on a native-grid CT
  around one lesion (its box plus a context margin, or the whole training
  patch) and hands the map to :class:`freetumor.synthesis.Synthesizer`.

Networks use instance normalisation by default, so a tumour's map does not
depend on the other patches of a batch (the released UNet3D always used batch
statistics, even at generation).

Example:
    >>> import torch
    >>> from freetumor.config import load_config
    >>> cfg = load_config("liver-cpu-tiny", ["data.roi_size=[32,32,32]"])
    >>> g = build_generator(cfg)
    >>> d = g(torch.rand(2, 1, 32, 32, 32))
    >>> d.shape, bool(d.abs().max() <= 1)
    (torch.Size([2, 3, 32, 32, 32]), True)
    >>> select_channel(d, torch.tensor([0, 2])).shape
    torch.Size([2, 1, 32, 32, 32])
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError
from .organs import Organ, get_organ

GENERATOR_CHANNELS = {"abdomen": 3, "chest": 1}
DISCRIMINATOR_CLASSES = 3  # 0 background, 1 real tumour, 2 fake tumour
REAL, FAKE = 1, 2


def _unet(spec: dict, out_channels: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=tuple(int(c) for c in spec["channels"]),
        strides=tuple(int(s) for s in spec["strides"]),
        num_res_units=int(spec.get("num_res_units", 2)),
        norm=("instance", {"affine": True}) if spec.get("norm", "instance") == "instance" else "batch",
    )


class DifferenceGenerator(torch.nn.Module):
    """G: CT patch in [0, 1] -> per-organ difference maps (tanh abdomen, sigmoid chest)."""

    def __init__(self, region: str, spec: dict):
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


def build_generator(cfg: dict) -> DifferenceGenerator:
    """The generator ``cfg["synth"]["generator"]`` describes, for the config's organ region."""
    return DifferenceGenerator(get_organ(cfg["organ"]).region, cfg["synth"]["generator"])


def build_discriminator(cfg: dict) -> torch.nn.Module:
    """The voxel-wise 3-class discriminator (background / real tumour / fake tumour)."""
    return _unet(cfg["synth"]["discriminator"], DISCRIMINATOR_CLASSES)


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


# ----------------------------------------------------------------------------- loading
def load_generator(path: str | os.PathLike, map_location="cpu") -> tuple[DifferenceGenerator, dict]:
    """A trained generator (``RUNDIR/generator.pt``) in eval mode, and its config.

    Raises:
        InputError: unreadable file, not a generator checkpoint, weights that do not fit.
    """
    from .checkpoints import _load_fitting, check_kind, load_checkpoint

    p = str(path)
    ck = load_checkpoint(p, map_location=map_location)
    check_kind(ck, p, "generator")
    cfg = ck["config"]
    try:
        from .config import resolve_config

        cfg = resolve_config(cfg, source=p)
        gen = build_generator(cfg)
    except ConfigError as exc:
        raise InputError(p, f"stored config: {exc}") from None
    _load_fitting(gen, ck["model"], p, "generator")
    gen.to(map_location).eval()
    return gen, cfg


# ----------------------------------------------------------------------------- native grids
def to_ras(arr: np.ndarray, grid) -> np.ndarray:
    """View of ``arr`` with voxel axes along R, A, S (transposes and flips only)."""
    perm = [grid.phys_axis.index(j) for j in range(3)]
    out = np.transpose(arr, perm)
    flips = tuple(j for j in range(3) if grid.phys_sign[perm[j]] < 0)
    return np.flip(out, flips) if flips else out


def from_ras(arr: np.ndarray, grid) -> np.ndarray:
    """Inverse of :func:`to_ras`."""
    perm = [grid.phys_axis.index(j) for j in range(3)]
    flips = tuple(j for j in range(3) if grid.phys_sign[perm[j]] < 0)
    if flips:
        arr = np.flip(arr, flips)
    return np.transpose(arr, np.argsort(perm))


def ras_spacing(grid) -> tuple[float, float, float]:
    perm = [grid.phys_axis.index(j) for j in range(3)]
    return tuple(float(grid.spacing[k]) for k in perm)  # type: ignore[return-value]


def resample_to(t: torch.Tensor, size, mode: str = "trilinear") -> torch.Tensor:
    """Resize ``(B, C, X, Y, Z)`` to ``size`` (trilinear, or nearest for masks)."""
    size = tuple(int(s) for s in size)
    if tuple(t.shape[2:]) == size:
        return t
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)


def context_region(box, grid, spacing, shape, mode: str, margin_vox: int, roi_size) -> tuple[slice, ...]:
    """The native-grid region a network sees around a lesion box.

    ``spacing`` is the network's voxel size (mm, R-L / A-P / S-I). ``bbox``: the
    box grown by ``margin_vox`` network voxels, unless that is larger than the
    training patch along some axis; ``patch`` (and that case): a ``roi_size``
    window (network voxels) centred on the box, grown to hold the box.
    """
    native = grid.per_voxel_axis(spacing) / np.asarray(grid.spacing)  # native voxels per network voxel
    if mode == "bbox":
        out = []
        for a, s in enumerate(box):
            g = int(math.ceil(margin_vox * native[a]))
            out.append(slice(max(0, s.start - g), min(int(shape[a]), s.stop + g)))
        fits = all((r.stop - r.start) / native[a] <= roi_size[grid.phys_axis[a]] for a, r in enumerate(out))
        if fits:
            return tuple(out)
    out = []
    for a, s in enumerate(box):
        roi_axis = roi_size[grid.phys_axis[a]]
        half = int(math.ceil(roi_axis * native[a] / 2))
        c = (s.start + s.stop) // 2
        lo, hi = min(s.start, c - half), max(s.stop, c + half)
        out.append(slice(max(0, lo), min(int(shape[a]), hi)))
    return tuple(out)


def network_input(image: np.ndarray, region, grid, spacing, window, device=None):
    """The CT of ``image[region]`` as a network sees it: RAS, resampled to ``spacing``, windowed to [0, 1].

    Returns ``(tensor (1, 1, X, Y, Z), size, ras_shape)``: ``size`` is the resampled shape (to
    bring masks of the region onto that grid), ``ras_shape`` the region's shape in RAS axis order
    before resampling (to bring network outputs back).
    """
    crop = to_ras(np.asarray(image[region], np.float32), grid)
    sp = np.asarray(ras_spacing(grid))
    size = np.maximum(1, np.rint(np.asarray(crop.shape) * sp / np.asarray(spacing, float))).astype(int)
    t = resample_to(torch.from_numpy(np.ascontiguousarray(crop))[None, None].to(device), size)
    lo, hi = (float(v) for v in window)
    return ((t - lo) / (hi - lo)).clamp_(0.0, 1.0), size, crop.shape


def network_multiple(cfg: dict) -> int:
    """Input sizes a segmentation network accepts are multiples of this."""
    m = cfg["model"]
    if m["name"] == "swinunetr":
        return 32
    if m["name"] == "unet":
        return int(np.prod(m["strides"]))
    return 2 ** (len(m["filters"]) - 1)


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
        if isinstance(generator, (str, os.PathLike)):
            self.model, self.cfg = load_generator(generator, map_location=self.device)
            self.path = str(generator)
        else:
            self.model, self.cfg = generator
            self.path = None
        self.model.to(self.device).eval()
        s = self.cfg["synth"]
        self.context = context or s["context"]
        if self.context not in ("bbox", "patch"):
            raise ConfigError(f"context must be bbox or patch, got {self.context!r}")
        self.margin = int(s["context_margin"] if margin is None else margin)
        self.spacing = tuple(float(v) for v in self.cfg["data"]["spacing"])
        self.window = tuple(float(v) for v in self.cfg["data"]["hu_window"])
        self.roi = tuple(int(v) for v in self.cfg["data"]["roi_size"])
        self.multiple = int(np.prod(s["generator"]["strides"]))
        self.region = self.model.region
        self.calls = 0

    def check_organ(self, organ: Organ) -> None:
        if organ.region != self.region:
            raise ConfigError(f"generator {self.path or ''} was trained for the {self.region}, not for "
                              f"{organ.name} ({organ.region})".replace("  ", " "))

    @torch.no_grad()
    def run(self, ct01: torch.Tensor, channel: int) -> torch.Tensor:
        """D~ on a windowed RAS patch ``(1, 1, X, Y, Z)`` at training spacing (padded to the net's multiple)."""
        shape = ct01.shape[2:]
        m = self.multiple
        pads = [(-s) % m for s in shape]
        x = F.pad(ct01, (0, pads[2], 0, pads[1], 0, pads[0])) if any(pads) else ct01
        s = self.cfg["synth"]
        d = difference_map(self.model, x, torch.tensor([channel]), s["blur_sigma"], s["blur_kernel"])
        return d[:, :, : shape[0], : shape[1], : shape[2]]

    def for_volume(self, image: np.ndarray, box, grid, organ: Organ) -> np.ndarray:
        """D for ``image[box]`` (native grid, HU)."""
        self.check_organ(organ)
        region = context_region(box, grid, self.spacing, image.shape, self.context, self.margin, self.roi)
        t, _, ras_shape = network_input(image, region, grid, self.spacing, self.window, self.device)
        d = self.run(t, organ.generator_channel)
        d = resample_to(d, ras_shape)[0, 0].cpu().numpy()
        d = from_ras(d, grid)
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))
        self.calls += 1
        lo, hi = self.window
        scale = (hi - lo) / organ.window_width
        return np.ascontiguousarray(d[inner], dtype=np.float32) * np.float32(scale)

    def __call__(self, crop, mask, organ):  # pragma: no cover - Synthesizer uses for_volume
        raise TypeError("LearnedDifference needs the whole volume; use Synthesizer(difference=...)")
