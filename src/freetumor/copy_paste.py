"""Copy-paste lesion synthesis: a baseline that pastes real lesions into training patches.

The method follows the copy-paste family of tumour augmentations (TumorCP, CarveMix): real
lesions are cut out of labelled training volumes once (:class:`LesionBank`) and, during training,
one of them is pasted into a patch at a random place where a lesion may lie
(:func:`paste_lesion`), with random flips, and blended into the host with a short feather.

* **Bank.** Every connected component (26-connectivity) of ``label == tumour_class`` in a
  volume already on the training grid (same spacing and HU window as the patches) is one lesion,
  unless it has fewer than ``min_voxels`` voxels. It is stored as its bounding box grown by
  ``margin_vox`` voxels (clipped to the volume): the donor's image there, the lesion's mask there,
  and the mask of the *other* real lesion voxels that fall in the box (never pasted).
* **Placement.** A lesion that fits in the patch is drawn at random, flipped along each axis
  with probability 1/2, and one of its mask voxels (the one nearest its bounding-box centre) is put
  on a random voxel of ``allowed``; the placement is kept when the whole lesion mask lies in the
  patch and in ``allowed``, else it is drawn again (``max_tries`` times in all).
* **Blend.** ``alpha = clip(1 - d / (feather_vox + 1), 0, 1)`` where ``d`` is the Euclidean
  distance (in voxels) to the lesion mask: 1 on the mask itself (every labelled voxel shows the
  donor's lesion exactly), a linear ramp outside it, 0 from ``feather_vox + 1`` voxels on (those
  host voxels keep their exact values). ``alpha`` is 0 on the other real lesions of the donor box
  and the voxels next to them, and outside the stored box. The new image is
  ``(1 - alpha) * host + alpha * donor``; the new label is ``tumour_class`` on the lesion mask and
  unchanged elsewhere.

Limits. This is a baseline, not a realistic synthesis: inside the feather it copies the donor's
*surrounding tissue* along with the lesion (a thin rim of another patient's organ), intensities are
not matched to the host (a lesion from a brighter or contrast-enhanced donor stays as it was), the
lesion keeps its donor's size and shape (only flips, no rotation, scaling or deformation), and it
is pasted on the grid of the patch as it is, so donor and host must share the spacing and HU
window. Lesions cut by the donor volume's edge keep their cut face (``drop_cut`` skips them).

Example:
    >>> import numpy as np
    >>> img = np.full((24, 24, 24), 0.3, np.float32); lab = np.zeros(img.shape, np.int64)
    >>> lab[8:13, 8:12, 8:11] = 2; img[lab == 2] = 0.7
    >>> bank = LesionBank.from_arrays([(img, lab)], tumour_class=2, min_voxels=8)
    >>> len(bank), bank[0].voxels
    (1, 60)
    >>> host = np.full((32, 32, 32), 0.5, np.float32); host_label = np.ones(host.shape, np.int64)
    >>> out = paste_lesion(host, host_label, host_label == 1, bank, np.random.default_rng(0), 2)
    >>> int((out[1] == 2).sum()), out[2]["voxels"]
    (60, 60)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Lesion", "LesionBank", "paste_lesion", "host_region"]

_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity


@dataclass(frozen=True)
class Lesion:
    """One real lesion of a :class:`LesionBank`, as plain numpy arrays (picklable).

    Attributes:
        image: the donor's image in the lesion's box, float32 ``(a, b, c)`` in [0, 1].
        mask: the lesion's voxels in the box, bool ``(a, b, c)``.
        other: the donor's other real lesion voxels in the box (never pasted), bool ``(a, b, c)``.
        anchor: the mask voxel nearest the mask's bounding-box centre (box coordinates): the
            voxel put on the sampled centre.
        lo: the mask's bounding box in box coordinates, first voxel per axis.
        hi: the mask's bounding box in box coordinates, one past the last voxel per axis.
        source: index of the donor pair in the list the bank was built from.
        origin: the box's first voxel in the donor volume.
        cut: the mask touches the donor volume's edge (the lesion may be cut by the field of view).
    """

    image: np.ndarray
    mask: np.ndarray
    other: np.ndarray
    anchor: tuple[int, int, int]
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    source: int
    origin: tuple[int, int, int]
    cut: bool

    @property
    def voxels(self) -> int:
        """The lesion's voxel count."""
        return int(np.count_nonzero(self.mask))

    @property
    def extent(self) -> tuple[int, int, int]:
        """The mask's bounding-box size per axis (voxels)."""
        return tuple(h - lo for lo, h in zip(self.lo, self.hi))


def _mask_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    idx = np.nonzero(mask)
    return tuple(int(i.min()) for i in idx), tuple(int(i.max()) + 1 for i in idx)


def _anchor(mask: np.ndarray, lo, hi) -> tuple[int, int, int]:
    """The mask voxel nearest the centre of its bounding box (ties: the first in C order)."""
    idx = np.argwhere(mask)
    centre = (np.asarray(lo, np.float64) + np.asarray(hi, np.float64) - 1.0) / 2.0
    k = int(np.argmin(((idx - centre) ** 2).sum(axis=1)))
    return tuple(int(v) for v in idx[k])


def _volume(a, name: str, ndim: int = 3) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:  # a (1, X, Y, Z) channel-first array
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be an (X, Y, Z) array (or (1, X, Y, Z)), got shape {arr.shape}")
    return arr


class LesionBank:
    """Real lesions cut out of labelled volumes on the training grid, for :func:`paste_lesion`.

    Build it with :meth:`from_arrays`. It holds only numpy arrays and plain values, so it pickles
    (PyTorch data-loader workers get a copy). ``len(bank)`` is the number of lesions, ``bank[i]``
    the :class:`Lesion` ``i``.

    Attributes:
        lesions: the lesions, in the order of the donor pairs and, within one, of
            :func:`scipy.ndimage.label`.
        tumour_class: the label class the lesions were cut from.
        margin_vox: voxels of donor context kept around each lesion's bounding box (the largest
            usable ``feather_vox``).
        skipped_small: components dropped for having fewer than ``min_voxels`` voxels.
        skipped_cut: components dropped by ``drop_cut``.
    """

    def __init__(self, lesions: Sequence[Lesion], tumour_class: int, margin_vox: int,
                 skipped_small: int = 0, skipped_cut: int = 0):
        self.lesions = list(lesions)
        self.tumour_class = int(tumour_class)
        self.margin_vox = int(margin_vox)
        self.skipped_small = int(skipped_small)
        self.skipped_cut = int(skipped_cut)

    def __len__(self) -> int:
        return len(self.lesions)

    def __getitem__(self, i: int) -> Lesion:
        return self.lesions[i]

    def __repr__(self) -> str:
        return (f"LesionBank({len(self)} lesions of class {self.tumour_class}, margin {self.margin_vox} vox, "
                f"skipped {self.skipped_small} small, {self.skipped_cut} cut)")

    @classmethod
    def from_arrays(cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], tumour_class: int, margin_vox: int = 2,
                    min_voxels: int = 8, other_classes: Iterable[int] = (), drop_cut: bool = False) -> LesionBank:
        """A bank of every lesion in ``(image, label)`` pairs.

        Args:
            pairs: ``(image, label)`` numpy (or torch) arrays of one shape ``(X, Y, Z)`` (a leading
                channel axis of 1 is dropped), already on the training grid: image windowed to
                [0, 1], label in training classes.
            tumour_class: the label class whose connected components (26-connectivity) are lesions.
            margin_vox: voxels of context kept on every side of a lesion's bounding box (clipped
                to the volume); :func:`paste_lesion` needs ``feather_vox <= margin_vox``.
            min_voxels: components with fewer voxels are skipped (noise, partial-volume specks).
            other_classes: more label classes that are real lesions too (say, another organ's
                tumour): their voxels in a box are kept out of the paste like other components'.
            drop_cut: skip lesions whose mask touches the volume's edge.
        """
        if int(margin_vox) < 0:
            raise ValueError(f"margin_vox must be >= 0, got {margin_vox}")
        tumour_class, margin = int(tumour_class), int(margin_vox)
        extra = [int(c) for c in other_classes if int(c) != tumour_class]
        lesions: list[Lesion] = []
        small = cut_count = 0
        for source, (image, label) in enumerate(pairs):
            img = _volume(image, "image")
            lab = _volume(label, "label")
            if img.shape != lab.shape:
                raise ValueError(f"pair {source}: image {img.shape} and label {lab.shape} differ in shape")
            comps, n = ndimage.label(lab == tumour_class, structure=_FULL)
            if n == 0:
                continue
            sizes = np.bincount(comps.ravel(), minlength=n + 1)
            real = comps > 0
            if extra:
                real = real | np.isin(lab, extra)
            for k, sl in enumerate(ndimage.find_objects(comps), start=1):
                if sl is None:
                    continue
                if sizes[k] < int(min_voxels):
                    small += 1
                    continue
                cut = any(s.start == 0 or s.stop == dim for s, dim in zip(sl, lab.shape))
                if cut and drop_cut:
                    cut_count += 1
                    continue
                box = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, dim)) for s, dim in zip(sl, lab.shape))
                mask = comps[box] == k
                other = real[box] & ~mask
                lo, hi = _mask_box(mask)
                lesions.append(Lesion(
                    image=np.ascontiguousarray(img[box], np.float32), mask=np.ascontiguousarray(mask),
                    other=np.ascontiguousarray(other), anchor=_anchor(mask, lo, hi), lo=lo, hi=hi,
                    source=source, origin=tuple(int(s.start) for s in box), cut=bool(cut)))
        return cls(lesions, tumour_class, margin, skipped_small=small, skipped_cut=cut_count)


def _alpha(mask: np.ndarray, other: np.ndarray, feather_vox: float) -> np.ndarray:
    """The blend weight on a lesion's box: 1 on the mask, ``1 - d / (feather_vox + 1)`` at
    Euclidean distance ``d`` (voxels) outside it, 0 on (and next to) the other real lesions."""
    d = ndimage.distance_transform_edt(~mask)
    alpha = np.clip(1.0 - d / (float(feather_vox) + 1.0), 0.0, 1.0).astype(np.float32)
    if other.any():
        alpha[ndimage.binary_dilation(other, structure=_FULL) & ~mask] = 0.0
    alpha[mask] = 1.0
    return alpha


def paste_lesion(image: np.ndarray, label: np.ndarray, allowed: np.ndarray, bank: LesionBank,
                 rng: np.random.Generator, tumour_class: int, *, flip: bool = True, feather_vox: float = 1.0,
                 max_tries: int = 20) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """Paste one real lesion of ``bank`` into one patch (TumorCP / CarveMix-style copy-paste).

    Each try draws a lesion of the bank that fits in the patch (its mask's bounding box no larger
    than the patch on any axis), flips it along each axis with probability 1/2 (``flip``), and puts
    its anchor voxel (:attr:`Lesion.anchor`) on a random voxel of ``allowed``; the placement is kept
    when the whole lesion mask lies in the patch and in ``allowed``. Up to ``max_tries`` tries.

    Blend (see the module docstring): ``alpha`` is 1 on the lesion mask, falls linearly with the
    Euclidean distance ``d`` to the mask to 0 at ``d = feather_vox + 1`` voxels, and is 0 on the
    donor's other real lesions (and the voxels next to them) and outside the lesion's stored box;
    ``new = (1 - alpha) * host + alpha * donor``. Host voxels at ``d >= feather_vox + 1`` keep their
    exact values. The feather (up to ``feather_vox`` voxels outside the mask, so possibly a little
    outside ``allowed``) copies the donor's surrounding tissue; intensities are not matched to the
    host. Keep ``allowed`` clear of padding, outside-scan voxels and real lesions by more than the
    feather (:func:`host_region`).

    Args:
        image: the patch's image ``(X, Y, Z)``, windowed to [0, 1], same grid as the bank's donors.
        label: the patch's label ``(X, Y, Z)`` in training classes.
        allowed: bool ``(X, Y, Z)``: where the pasted lesion's voxels may lie.
        bank: the lesions to draw from.
        rng: the only source of randomness (same generator state, same result).
        tumour_class: the class written on the pasted lesion's voxels.
        flip: flip the lesion along each axis with probability 1/2.
        feather_vox: width of the feather outside the mask, in voxels (0: a hard paste); at most
            ``bank.margin_vox``.
        max_tries: placements drawn before giving up.

    Returns:
        ``(new_image, new_label, info)`` (new arrays of the inputs' dtypes; the inputs are not
        changed), ``info`` holding ``index`` (the lesion in the bank), ``centre`` (the patch voxel
        of its anchor), ``origin`` (its box's first voxel in the patch; may be negative where the
        box sticks out of the patch, whose voxels are not pasted), ``flips`` (per axis),
        ``voxels`` (labelled voxels) and ``tries``; or ``None`` when no try fitted, the bank has no
        lesion that fits in the patch, or ``allowed`` is empty.
    """
    image = np.asarray(image)
    label = np.asarray(label)
    allowed = np.asarray(allowed, bool)
    if image.ndim != 3 or image.shape != label.shape or image.shape != allowed.shape:
        raise ValueError(f"image, label and allowed must be (X, Y, Z) arrays of one shape, "
                         f"got {image.shape}, {label.shape}, {allowed.shape}")
    if not 0.0 <= float(feather_vox) <= bank.margin_vox:
        raise ValueError(f"feather_vox must be in [0, margin_vox={bank.margin_vox}] (the donor context kept "
                         f"around each lesion), got {feather_vox}")
    if int(max_tries) < 1:
        raise ValueError(f"max_tries must be at least 1, got {max_tries}")
    shape = np.asarray(image.shape)
    fits = [i for i, les in enumerate(bank.lesions) if np.all(np.asarray(les.extent) <= shape)]
    where = np.flatnonzero(allowed)
    if not fits or where.size == 0:
        return None
    for t in range(1, int(max_tries) + 1):
        index = fits[int(rng.integers(len(fits)))]
        les = bank.lesions[index]
        flips = tuple(bool(f) for f in rng.random(3) < 0.5) if flip else (False, False, False)
        centre = np.asarray(np.unravel_index(int(where[int(rng.integers(where.size))]), image.shape))
        box = np.asarray(les.mask.shape)
        axes = tuple(a for a in range(3) if flips[a])
        anchor = np.asarray(les.anchor)
        lo, hi = np.asarray(les.lo), np.asarray(les.hi)
        if axes:
            flipped = np.asarray(flips)
            anchor = np.where(flipped, box - 1 - anchor, anchor)
            lo, hi = np.where(flipped, box - hi, lo), np.where(flipped, box - lo, hi)
        origin = centre - anchor
        if np.any(origin + lo < 0) or np.any(origin + hi > shape):
            continue
        mask = np.flip(les.mask, axes) if axes else les.mask
        mask_sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        patch_sl = tuple(slice(int(o + a), int(o + b)) for o, a, b in zip(origin, lo, hi))
        if not np.all(allowed[patch_sl][mask[mask_sl]]):
            continue
        donor = np.flip(les.image, axes) if axes else les.image
        other = np.flip(les.other, axes) if axes else les.other
        alpha = _alpha(mask, other, feather_vox)
        # the box clipped to the patch
        a = np.maximum(origin, 0)
        b = np.minimum(origin + box, shape)
        dst = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
        src = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, origin))
        new_image = image.copy()
        host = new_image[dst].astype(np.float32)
        w = alpha[src]
        blended = (1.0 - w) * host + w * donor[src]
        reach = w > 0
        new_image[dst][reach] = blended[reach].astype(new_image.dtype, copy=False)
        new_label = label.copy()
        new_label[dst][mask[src]] = tumour_class
        info = {"index": index, "centre": tuple(int(c) for c in centre), "origin": tuple(int(o) for o in origin),
                "flips": flips, "voxels": les.voxels, "tries": t}
        return new_image, new_label, info
    return None


def host_region(label: np.ndarray, organ_class: int, lesion_classes: Iterable[int] = (), keep_away_vox: int = 2,
                valid: np.ndarray | None = None) -> np.ndarray:
    """Where a pasted lesion may lie in a patch: the organ's voxels that are more than
    ``keep_away_vox`` voxels (26-neighbourhood steps) from any voxel of ``lesion_classes`` and from
    any voxel outside ``valid`` (say, the scan's field of view without padding; ``None``: all).

    With ``keep_away_vox >= feather_vox + 1`` the feather of :func:`paste_lesion` never reaches real
    lesions or invalid voxels.
    """
    label = np.asarray(label)
    region = label == int(organ_class)
    avoid = np.isin(label, [int(c) for c in lesion_classes])
    if valid is not None:
        avoid |= ~np.asarray(valid, bool)
    if avoid.any() and int(keep_away_vox) > 0:
        avoid = ndimage.binary_dilation(avoid, structure=_FULL, iterations=int(keep_away_vox))
    return region & ~avoid
