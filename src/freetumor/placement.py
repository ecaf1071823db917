"""Where training patches come from: labelled cases without a position prior, host patches in the
organ, and the mask of voxels that belong to the scan.

Three problems of small labelled cases (VOIs, nodule crops) and of unlabelled hosts, each with a
transform used by :func:`freetumor.transforms.train_transforms`:

* **The centring shortcut.** A labelled case smaller than the training patch used to be padded
  symmetrically (``SpatialPadd``), so its lesion always sat in the middle of a constant-padded
  window and a model could learn "the blob in the centre of a padded box".
  :class:`RandPlaceCased` puts each such case at a fresh random offset inside a larger canvas
  (``data.crop_placement: random``, the default ``auto`` when the case is smaller than the patch).
* **Host patches that teach the wrong thing.** Patches of unlabelled hosts sampled like labelled
  ones (half of them on any body voxel) mostly show non-organ tissue labelled background.
  :class:`HostFocusd` centres every host patch on a voxel of the task's organs
  (``data.host_patches: organ``).
* **Air around the crop.** With ``data.crop_placement: host`` a small labelled case is pasted, with its
  label, into a region of a healthy host centred in the organ (:func:`paste_into_host`, called by
  :class:`~freetumor.training.data.StepDataset`), so that it is surrounded by real tissue, not air.
* **Lesions cut by padding.** :class:`AddValidMaskd` adds a ``valid`` mask (1 on voxels of the scan,
  0 on padding), carried through crops, flips and rotations, so that online synthesis can keep
  lesions ``data.synth_margin`` voxels away from padding and the scan's edge (:func:`usable_region`).

Each sample dict may carry ``role``: ``"labelled"`` (the default) or ``"host"`` (an unlabelled case
with organ masks, Stage 1 and 2).

Example:
    >>> import numpy as np, torch
    >>> place = RandPlaceCased(roi_size=(8, 8, 4), mode="random", canvas_scale=1.5)
    >>> _ = place.set_random_state(seed=0)
    >>> d = {"image": torch.ones(1, 4, 4, 2), "label": torch.ones(1, 4, 4, 2), "valid": torch.ones(1, 4, 4, 2)}
    >>> out = place(d)
    >>> tuple(out["image"].shape), int(out["valid"].sum()) == 32
    ((1, 12, 12, 6), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.transforms.utils import map_binary_to_indices
from scipy import ndimage

VALID = "valid"
ROLE = "role"
LABELLED, HOST = "labelled", "host"
FG, BG = "label_fg_idx", "label_bg_idx"

__all__ = ["AddValidMaskd", "HostFocusd", "RandPlaceCased", "usable_region", "within_scan", "placement_of",
           "paste_into_host", "canvas_width", "VALID", "ROLE", "LABELLED", "HOST"]


def canvas_width(roi: int, canvas_scale: float) -> int:
    """Voxels of a placement canvas along an axis whose patch is ``roi``: ``ceil(roi * scale)``, at least ``roi``.

    >>> canvas_width(32, 1.5), canvas_width(8, 1.0)
    (48, 8)
    """
    return max(int(roi), int(math.ceil(roi * canvas_scale)))


def placement_of(mode: str, shape: Sequence[int], roi: Sequence[int]) -> str:
    """How a labelled case of ``shape`` is placed: ``none`` (no axis smaller than ``roi``),
    ``centre`` or ``random``.

    >>> placement_of("auto", (40, 40, 6), (32, 32, 8)), placement_of("auto", (64, 64, 8), (32, 32, 8))
    ('random', 'none')
    >>> placement_of("centre", (10, 10, 2), (32, 32, 8))
    'centre'
    """
    if all(int(s) >= int(r) for s, r in zip(shape, roi)):
        return "none"
    return "centre" if mode == "centre" else "random"  # host: random where no host context was pasted


class AddValidMaskd(MapTransform):
    """Adds ``valid``: a uint8 tensor shaped like ``image``, 1 on every voxel (of the scan). Padding
    added later (``SpatialPadd``, :class:`RandPlaceCased`) is 0 there."""

    def __init__(self, image_key: str = "image"):
        MapTransform.__init__(self, keys=(image_key,))
        self.image_key = image_key

    def __call__(self, data):
        d = dict(data)
        img = d[self.image_key]
        d[VALID] = torch.ones(tuple(img.shape), dtype=torch.uint8)
        return d


class HostFocusd(MapTransform):
    """For a ``role: host`` sample, makes the background crop centres those of the foreground (the
    task's organ voxels), so that ``RandCropByPosNegLabeld`` centres every patch in the organ.
    Labelled samples, and hosts without organ voxels, are left as they are."""

    def __init__(self, enabled: bool = True):
        MapTransform.__init__(self, keys=(FG, BG))
        self.enabled = bool(enabled)

    def __call__(self, data):
        d = dict(data)
        if self.enabled and d.get(ROLE) == HOST and FG in d and len(d[FG]) > 0:
            d[BG] = d[FG]
        return d


class RandPlaceCased(Randomizable, MapTransform):
    """Places a case smaller than the patch inside a canvas, as the training chain's first random step.

    * A labelled case (``role`` absent or ``labelled``) smaller than ``roi_size`` along some axis, with
      ``mode`` ``random`` or ``auto``: along each such axis the canvas is
      ``ceil(roi * canvas_scale)`` voxels and the case goes at a uniformly random offset in it; image,
      label and ``valid`` are padded with 0 (air after windowing, background, not scan).
    * With ``mode="centre"``, and for hosts: padded symmetrically to ``roi_size`` (``SpatialPadd``'s
      rule), as before.

    A case as large as the patch is returned unchanged. The crop centres (``label_fg_idx`` /
    ``label_bg_idx``, as ``FgBgToIndicesd`` made them with ``image_threshold=0``) are recomputed
    on the canvas, and :class:`HostFocusd`'s rule applied again when ``host_focus``.
    """

    def __init__(self, roi_size: Sequence[int], mode: str = "auto", canvas_scale: float = 1.5,
                 host_focus: bool = True):
        MapTransform.__init__(self, keys=("image", "label"))
        self.roi = tuple(int(r) for r in roi_size)
        self.mode = mode
        self.scale = float(canvas_scale)
        self.focus = HostFocusd(host_focus)

    def randomize(self, data=None) -> None:
        pass

    def canvas(self, shape: Sequence[int], how: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(canvas shape, offset of the case) for a case of ``shape`` placed ``how``."""
        size, offset = [], []
        for s, r in zip(shape, self.roi):
            s = int(s)
            if s >= r:
                size.append(s)
                offset.append(0)
            elif how == "random":
                c = canvas_width(r, self.scale)
                size.append(c)
                offset.append(int(self.R.randint(0, c - s + 1)))
            else:
                size.append(r)
                offset.append((r - s) // 2)
        return tuple(size), tuple(offset)

    def __call__(self, data):
        d = dict(data)
        shape = tuple(d["image"].shape[1:])
        role = d.get(ROLE, LABELLED)
        how = placement_of("centre" if role == HOST else self.mode, shape, self.roi)
        if how == "none":
            return d
        size, offset = self.canvas(shape, how)
        region = (slice(None),) + tuple(slice(o, o + s) for o, s in zip(offset, shape))
        for key in ("image", "label", VALID):
            if key not in d:
                continue
            v = d[key]
            t = torch.as_tensor(v)
            out = torch.zeros((t.shape[0], *size), dtype=t.dtype)
            out[region] = t
            if hasattr(v, "affine"):  # a MetaTensor: its affine moves by the offset
                aff = torch.as_tensor(v.affine, dtype=torch.float64).clone()
                aff[:3, 3] -= aff[:3, :3] @ torch.as_tensor(offset, dtype=torch.float64)
                out = MetaTensor(out, meta=dict(getattr(v, "meta", {}), affine=aff))
            d[key] = out
        if FG in d or BG in d:
            fg, bg = map_binary_to_indices(torch.as_tensor(d["label"]), torch.as_tensor(d["image"]), 0)
            d[FG], d[BG] = fg, bg
            d = self.focus(d)
        return d


def usable_region(data: dict, shape: Sequence[int], margin: int) -> np.ndarray | None:
    """Voxels of a patch at least ``margin`` voxels from padding or the scan's edge (its ``valid``
    mask eroded; the patch's own border does not count as an edge); ``None`` without a mask."""
    v = data.get(VALID)
    if v is None:
        return None
    valid = np.asarray(v)[0] > 0
    if tuple(valid.shape) != tuple(shape):
        return None
    if margin <= 0 or valid.all():
        return valid
    return ndimage.binary_erosion(valid, structure=np.ones((3, 3, 3), bool), iterations=int(margin), border_value=1)


def within_scan(mask: np.ndarray, data: dict, margin: int) -> np.ndarray:
    """``mask`` limited to the patch's :func:`usable_region` (``mask`` itself without a ``valid`` mask)."""
    usable = usable_region(data, mask.shape, margin)
    return mask if usable is None else mask & usable


def paste_into_host(case: dict, host: dict, roi: Sequence[int], canvas_scale: float, rng: np.random.Generator,
                    feather: int = 2) -> dict | None:
    """A labelled ``case`` (prepared: ``image``, ``label``, ``valid`` of shape (1, X, Y, Z)) smaller than
    ``roi`` pasted at a random offset into a canvas cut from a prepared ``host`` around a random organ
    voxel (its ``label > 0``). The canvas is ``ceil(roi * canvas_scale)`` per axis (at least the case,
    at most the host). The image is blended over ``feather`` voxels inside the case's box border (a
    linear ramp, so no hard box edge); the label is the case's inside its box and the host's outside;
    ``valid`` likewise. Returns a new dict (plain tensors, the case's other keys kept), or ``None`` when
    the case is not smaller than ``roi`` or the host has no organ voxel or is smaller than the case.

    >>> import torch
    >>> case = {"image": torch.full((1, 4, 4, 2), 0.9), "label": torch.full((1, 4, 4, 2), 2)}
    >>> host = {"image": torch.full((1, 20, 20, 10), 0.1), "label": torch.ones(1, 20, 20, 10, dtype=torch.int64)}
    >>> out = paste_into_host(case, host, (8, 8, 4), 1.5, np.random.default_rng(0))
    >>> tuple(out["image"].shape), int((out["label"] == 2).sum()), round(float(out["image"].min()), 3)
    ((1, 12, 12, 6), 32, 0.1)
    """
    shape = tuple(int(n) for n in case["image"].shape[1:])
    hshape = tuple(int(n) for n in host["image"].shape[1:])
    if all(s >= r for s, r in zip(shape, roi)) or any(s > h for s, h in zip(shape, hshape)):
        return None
    organ = np.argwhere(np.asarray(host["label"])[0] > 0)
    if not len(organ):
        return None
    size = [min(h, max(s, canvas_width(r, canvas_scale))) for s, r, h in zip(shape, roi, hshape)]
    centre = organ[int(rng.integers(len(organ)))]
    lo = [int(np.clip(c - z // 2, 0, h - z)) for c, z, h in zip(centre, size, hshape)]
    region = (slice(None),) + tuple(slice(a, a + z) for a, z in zip(lo, size))
    off = [int(rng.integers(0, z - s + 1)) for z, s in zip(size, shape)]
    inner = (slice(None),) + tuple(slice(o, o + s) for o, s in zip(off, shape))
    # alpha: 1 inside the case's box, ramping to 0 over `feather` voxels at its border (edge distance)
    ramps = [np.minimum(np.arange(s) + 1, np.arange(s)[::-1] + 1) / float(feather + 1) for s in shape]
    alpha = np.clip(np.minimum.reduce(np.meshgrid(*ramps, indexing="ij")), 0.0, 1.0).astype(np.float32)
    out = dict(case)
    img = torch.as_tensor(host["image"])[region].clone().float()
    img[inner] = img[inner] * torch.from_numpy(1.0 - alpha) + torch.as_tensor(case["image"]).float() * torch.from_numpy(alpha)
    lab = torch.as_tensor(host["label"])[region].clone()
    lab[inner] = torch.as_tensor(case["label"]).to(lab.dtype)
    out["image"], out["label"] = img, lab
    if VALID in case or VALID in host:
        valid = (torch.as_tensor(host[VALID])[region].clone() if VALID in host
                 else torch.ones(img.shape, dtype=torch.uint8))
        valid[inner] = torch.as_tensor(case[VALID]).to(valid.dtype) if VALID in case else 1
        out[VALID] = valid
    if FG in case or BG in case:
        fg, bg = map_binary_to_indices(out["label"], out["image"], 0)
        out[FG], out[BG] = fg, bg
    return out
