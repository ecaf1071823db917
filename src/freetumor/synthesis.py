"""Tumour synthesis: the blend equation (METHOD §4.3) and the :class:`Synthesizer`.

For a tumour mask M (from :mod:`freetumor.shapes`), a soft mask
B = Gaussian(M, sigma ~ U(1, 2) shape voxels, :meth:`~freetumor.organs.Organ.voxel_mm`), the organ indicator O (organ
voxels only: real tumour voxels are excluded, so they never change), the
texture T (:mod:`freetumor.texture`) and a difference map D, the new image is

    x' = x + sign * W * O * B * D * T

in Hounsfield units, where W is the organ's HU window width (the paper works on
the window scaled to [0, 1]; multiplying by W is the same change in HU and
leaves voxels outside the window unclipped) and sign is -1 for the abdomen
(hypodense tumours) and +1 for the chest (hyperdense lesions). Without a
generator, D is the rule-based scalar 0.2 + 0.5 U(0, 1). New tumour voxels get
the organ's tumour id in the input's own label convention.

Build once, run per case: :class:`SynthesisOptions` holds what configures synthesis
independently of the case, :func:`build_synthesizer` loads its networks (generator, QC
segmentor) once, and :func:`synthesize_case` loads, synthesises and writes one case with it.

Example:
    >>> from freetumor.phantom import make_case
    >>> image, label = make_case("abdomen", seed=1, shape=(96, 80, 48))
    >>> result = Synthesizer("liver", size="small")(image, label, count=1, seed=7)
    >>> rec = result.lesions[0]
    >>> rec["size_class"], rec["mean_hu_after"] < rec["mean_hu_before"]
    ('small', True)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from . import __version__
from .lesions.render import draw_lesion
from .config import Config
from .errors import ConfigError, FreeTumorError, InputError
from .grids import Grid, inner_slices
from .io import (Volume, case_name, check_ct_intensity, check_same_grid, load_volume, save_volume, staged_output,
                 write_bytes_atomic)
from .labels import LabelMap, check_integer_labels, get_label_map, label_values
from .organs import DEFAULT_SHAPE_CONVENTION, SIZE_CHOICES, Organ, check_shape_convention, get_organ
from .shapes import LesionMask, OrganTooSmallError, nominal_volume_ml, sample_shape
from .lesions.profile import LesionProfile, load_profile
from .texture import SIGMA_A, SIGMA_B, procedural_texture

# The online synthesis modes of Stage 2 (train-seg --synthesis; transforms.RandTumorSynthesisd), "none" first.
SYNTHESIS_MODES = ("none", "procedural", "generator", "profile", "copy_paste")

# Lesions per case: each is drawn, placed where no other lesion is, rendered and (with QC) judged in
# turn, about 0.1-1 s each on a CPU, and all must fit side by side in one organ; 1000 is a quarter of
# an hour or more per case, far beyond any real tumour burden. Past it, --count is refused up front
# (10**12 would have asked for 4 TB of per-lesion seeds).
MAX_LESIONS_PER_CASE = 1000
BLUR_SIGMA_RANGE = (1.0, 2.0)
_BLUR_TRUNCATE = 3.0

# A generator-backed difference map: called with the HU crop around the lesion, the lesion
# mask embedded in that crop and the organ; returns D for the crop (same shape, float).
DifferenceFn = Callable[[np.ndarray, np.ndarray, Organ], np.ndarray]


class QCRejectedError(FreeTumorError):
    """No synthetic tumour passed quality control within the allowed tries."""


def rule_based_difference(rng: np.random.Generator) -> float:
    """The SynTumor fallback difference map: a scalar 0.2 + 0.5 U(0, 1)."""
    return 0.2 + 0.5 * float(rng.random())


def blend(
    image_crop: np.ndarray,
    organ_crop: np.ndarray,
    soft_mask: np.ndarray,
    difference: float | np.ndarray,
    texture: np.ndarray,
    organ: Organ,
) -> np.ndarray:
    """The blend equation on one crop, in HU (float32).

    Example:
        >>> import numpy as np
        >>> from freetumor.organs import get_organ
        >>> x = np.full((3, 3, 3), 100.0, np.float32); o = np.ones_like(x, bool)
        >>> b = np.zeros_like(x); b[1, 1, 1] = 1.0
        >>> out = blend(x, o, b, 0.5, np.full_like(x, 0.5), get_organ("liver"))
        >>> float(out[1, 1, 1]), float(out[0, 0, 0])
        (-6.25, 100.0)
    """
    delta = soft_mask * np.asarray(difference, np.float32) * texture
    delta *= np.float32(organ.sign * organ.window_width)
    delta *= organ_crop
    return image_crop.astype(np.float32) + delta


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def place_lesion(
    free: np.ndarray,
    grid: Grid,
    organ: Organ,
    size: str,
    rng: np.random.Generator,
    min_inside: float = 0.5,
    max_tries: int = 30,
    *,
    label_name: str = "label",
    organ_ml: float | None = None,
    convention: str = DEFAULT_SHAPE_CONVENTION,
):
    """Draw a tumour shape in ``free`` (organ voxels that may become tumour).

    Tries up to ``max_tries`` placements until one has at least 4 voxels and at
    least ``min_inside`` of its deformed ellipsoid inside the organ.

    Returns:
        (params, lesion_mask, tries)

    Raises:
        OrganTooSmallError: no placement qualified.
    """
    best = 0.0
    for tries in range(1, max_tries + 1):
        params = sample_shape(free, grid, organ, size, rng, convention)
        if params is None:
            continue
        lm = params.mask(grid, free)
        best = max(best, lm.inside_fraction)
        if lm.voxels >= 4 and lm.inside_fraction >= min_inside:
            return params, lm, tries
    what = f"a {size} tumour" if size != "mix" else "any tumour"
    if organ_ml is None:
        organ_ml = float(free.sum()) * grid.voxel_volume_ml
    raise OrganTooSmallError(
        f"{label_name}: {organ.name} ({organ_ml:.1f} mL) is too small for {what}: "
        f"best of {max_tries} placements had {best:.0%} inside the organ (need {min_inside:.0%})"
    )


def lesion_soft_mask(lm: LesionMask, grid: Grid, organ: Organ, rng: np.random.Generator,
                     convention: str = DEFAULT_SHAPE_CONVENTION):
    """The blurred mask B of one lesion on its box grown by the blur's reach.

    The blur sigma is drawn from U(1, 2) shape voxels (``organ.voxel_mm(convention)``).

    Returns:
        (box, inner, mask_in_box, soft, blur_sigma): ``box`` the slices of the
        grown box in the volume, ``inner`` the lesion box inside it, the float32
        binary mask and its blurred version on the grown box.
    """
    native = grid.voxels_per(organ.voxel_mm(convention))
    blur = float(rng.uniform(*BLUR_SIGMA_RANGE))
    sig = blur * native
    grow = np.ceil(_BLUR_TRUNCATE * sig).astype(int)
    box = tuple(
        slice(max(0, s.start - g), min(n, s.stop + g)) for s, g, n in zip(lm.slices, grow, grid.shape)
    )
    inner = inner_slices(lm.slices, box)
    m = np.zeros([b.stop - b.start for b in box], np.float32)
    m[inner] = lm.mask
    soft = gaussian_filter(m, sig, truncate=_BLUR_TRUNCATE, mode="constant")
    return box, inner, m, soft, blur


def lesion_texture(shape, grid: Grid, organ: Organ, rng: np.random.Generator,
                   convention: str = DEFAULT_SHAPE_CONVENTION) -> np.ndarray:
    """The texture T on a lesion's box: :func:`~freetumor.texture.procedural_texture` with its
    smoothing scales in shape voxels (``organ.voxel_mm(convention)``)."""
    native = grid.voxels_per(organ.voxel_mm(convention))
    return procedural_texture(shape, rng, SIGMA_A * native, SIGMA_B * native)


@dataclass
class SynthesisResult:
    """Output of one synthesis call.

    Attributes:
        image: the CT with synthetic tumours (input dtype and grid).
        label: the label with new tumour voxels set to the organ's tumour id.
        lesions: one record (JSON-able dict) per lesion.
        masks: each lesion's mask in its bounding box.
    """

    image: Volume
    label: Volume
    lesions: list[dict]
    masks: list[LesionMask] = field(default_factory=list)


class Synthesizer:
    """Put synthetic tumours into one organ of a CT.

    Args:
        organ: ``liver``, ``pancreas``, ``kidney``, ``lung`` or ``covid``.
        label_map: the label convention of the input (preset name, JSON path or
            :class:`LabelMap`); default ``abdomen7`` / ``chest3`` by organ.
        size: ``tiny``, ``small``, ``medium``, ``large`` or ``mix`` (the organ's
            FreeTumor class probabilities, drawn per lesion).
        difference: ``None`` for the rule-based scalar, a fixed float, or a
            callable returning a difference map for a crop (a trained generator).
        min_inside: fraction of the deformed ellipsoid that must lie in the organ.
        max_tries: placements tried per lesion before giving up.
        qc: a :class:`~freetumor.quality.QualityControl`; a rejected tumour is
            undone and drawn again (new shape, place and texture).
        qc_max_tries: tumours drawn per lesion under QC before giving up
            (:class:`QCRejectedError`).
        profile: a lesion profile (:mod:`freetumor.lesions.profile`: a JSON path, ``builtin:<name>`` or a
            :class:`~freetumor.lesions.profile.LesionProfile`): each lesion's size, shape, contrast,
            edge and texture are drawn from it and rendered in mm and HU
            (:mod:`freetumor.lesions.render`) instead of the rule-based shape and difference map.
        shape_convention: ``physical`` (default: sizes, deformation and blur isotropic in mm) or
            ``released`` (the released code's target voxels per axis, for replication only).

    Example:
        >>> from freetumor.phantom import make_case
        >>> image, label = make_case("abdomen", seed=2, shape=(96, 80, 48))
        >>> out = Synthesizer("kidney", size="tiny")(image, label, count=2, seed=0)
        >>> len(out.lesions), int((out.label.array == 6).sum()) > int((label.array == 6).sum())
        (2, True)
    """

    def __init__(
        self,
        organ: str | Organ,
        *,
        label_map: str | os.PathLike | LabelMap | None = None,
        size: str = "mix",
        difference: float | DifferenceFn | None = None,
        min_inside: float = 0.5,
        max_tries: int = 30,
        qc=None,
        qc_max_tries: int = 10,
        profile: str | os.PathLike | LesionProfile | None = None,
        shape_convention: str = DEFAULT_SHAPE_CONVENTION,
        exclude_calcified: bool = False,
    ):
        self.organ = get_organ(organ)
        self.shape_convention = check_shape_convention(shape_convention)
        self.label_map = get_label_map(label_map, self.organ.name)
        self.label_map.organ_ids(self.organ.name)  # raises if the map lacks this organ
        if size not in SIZE_CHOICES:
            raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZE_CHOICES)}")
        if not 0.0 < min_inside <= 1.0:
            raise ConfigError(f"min_inside must be in (0, 1], got {min_inside}")
        if max_tries < 1:
            raise ConfigError(f"max_tries must be at least 1, got {max_tries}")
        self.size = size
        self.difference = difference
        self.min_inside = float(min_inside)
        self.max_tries = int(max_tries)
        if qc_max_tries < 1:
            raise ConfigError(f"qc_max_tries must be at least 1, got {qc_max_tries}")
        self.qc = qc
        self.qc_max_tries = int(qc_max_tries)
        if hasattr(difference, "check_organ"):
            difference.check_organ(self.organ)
        self.profile = None if profile is None else load_profile(profile, self.organ.name)
        if exclude_calcified:
            if self.profile is None:
                raise ConfigError("--exclude-calcified leaves out a lesion profile's calcified lesions: "
                                  "give the profile too (--profile)")
            self.profile = self.profile.without_calcified()
        residual = bool(getattr(difference, "residual", False))
        if self.profile is not None and difference is not None and not residual:
            raise ConfigError("a lesion profile renders the whole lesion; it does not combine with a difference map "
                              "(--generator) unless the generator was trained on the profile's lesions "
                              "(train-synth --profile)")
        if residual and self.profile is None:
            raise ConfigError("this generator learned a residual on a lesion profile's renders (train-synth "
                              "--profile): give the lesion profile too (--profile)")

    def provenance(self) -> dict:
        """Where the difference map and quality control come from, as a case record stores them."""
        learned = hasattr(self.difference, "for_volume")
        return {
            "generator": self.difference.path if learned else None,
            "generator_context": self.difference.context if learned else None,
            "quality_control": None if self.qc is None else self.qc.describe(),
            **({"profile": self.profile.name or "profile", "profile_source": self.profile.source}
               if self.profile is not None else {}),
        }

    # ------------------------------------------------------------------ checks
    def validate(self, image: Volume, label: Volume) -> np.ndarray:
        """Check the pair; return the organ mask. Raises one-line :class:`InputError` s."""
        check_same_grid(image, label)
        check_ct_intensity(image)
        lab = label.array
        check_integer_labels(lab, label.name)
        unknown = self.label_map.unknown_values(label_values(lab))
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            raise InputError(label.name, f"label values {shown} are not in label map {self.label_map.name!r}")
        organ_mask = self.label_map.organ_mask(lab, self.organ.name)
        n = int(organ_mask.sum())
        if n == 0:
            ids = ", ".join(str(i) for i in self.label_map.organ_ids(self.organ.name))
            raise InputError(label.name, f"no {self.organ.name} in this label (ids {ids} of {self.label_map.name!r})")
        mean_hu = float(image.array[organ_mask].mean())
        lo, hi = self.organ.organ_hu
        if not lo <= mean_hu <= hi:
            raise InputError(
                image.name,
                f"mean {self.organ.name} intensity {mean_hu:.0f} is outside the plausible CT range "
                f"{lo:g}..{hi:g} HU (not HU, or wrong label map?)",
            )
        return organ_mask

    # -------------------------------------------------------------- synthesis
    def __call__(self, image: Volume, label: Volume, *, count: int = 1, seed: int = 0) -> SynthesisResult:
        check_count(count)
        organ_mask = self.validate(image, label)
        grid = Grid.of(image)
        organ_ml = float(organ_mask.sum()) * grid.voxel_volume_ml
        smallest_ml = 0.0 if self.size == "mix" else nominal_volume_ml(self.organ, self.size, self.shape_convention)
        if organ_ml < self.min_inside * smallest_ml:
            raise OrganTooSmallError(
                f"{label.name}: {self.organ.name} ({organ_ml:.1f} mL) is too small for a {self.size} tumour"
            )
        tumour_id = self.label_map.tumour_id(self.organ.name)
        out_img = image.array.copy()
        lab_dtype = label.array.dtype
        if np.issubdtype(lab_dtype, np.integer) and tumour_id > np.iinfo(lab_dtype).max:
            lab_dtype = np.dtype(np.uint16)
        out_lab = label.array.astype(lab_dtype, copy=True)
        host = organ_mask | (label.array == tumour_id) if self.qc is not None else None
        free = organ_mask  # organ voxels not (yet) tumour; updated as lesions are added
        seeds = np.random.SeedSequence(int(seed)).generate_state(count, dtype=np.uint32)
        lesions: list[dict] = []
        masks: list[LesionMask] = []
        attempts = [1] * count

        def draw(k: int) -> tuple:
            # The first draw uses the lesion's own seed, so QC does not change accepted first draws.
            s = int(seeds[k]) if attempts[k] == 1 else int(
                np.random.SeedSequence([int(seeds[k]), attempts[k]]).generate_state(1)[0])
            rec, lm, box, before, mbox = self._one_lesion(out_img, free, grid, s, label.name, organ_ml)
            undo = (box, before, lm, free[lm.slices].copy(), out_lab[lm.slices].copy())
            out_lab[lm.slices][lm.mask] = tumour_id
            free[lm.slices][lm.mask] = False
            pending = None if self.qc is None else self.qc.prepare_lesion(before, out_img, box, mbox, host, grid,
                                                                          self.organ)
            return rec, lm, undo, pending

        # Lesion k is drawn on the image holding lesions 1..k-1 and judged on it, as one by one. Under
        # QC the remaining lesions are drawn in a row (each as if the ones before it were accepted)
        # and judged in batched forwards; from the first rejected one on, they are undone (last
        # first) and drawn again: the same lesions and decisions as judging each before the next.
        k = 0
        width = self.qc.settings.batch_size if self.qc is not None else 1
        while k < count:
            drawn: list = []
            for j in range(k, min(count, k + width)):
                try:
                    drawn.append(draw(j))
                except OrganTooSmallError:
                    if not drawn:  # drawn on the state one by one would see: a real failure
                        raise
                    break  # the room may depend on a lesion not yet judged: draw it again next round
            decisions = self.qc.judge([p for *_r, p in drawn]) if self.qc is not None else [None] * len(drawn)
            for j, ((rec, lm, _undo, _p), decision) in enumerate(zip(drawn, decisions)):
                if decision is not None:
                    rec["qc"] = decision.as_record()
                    rec["qc_tries"] = attempts[k]
                    if not decision.accepted:
                        for _rec, _lm, (box, before, m, free_box, lab_box), _pp in reversed(drawn[j:]):
                            out_img[box] = before
                            free[m.slices] = free_box
                            out_lab[m.slices] = lab_box
                        if attempts[k] == self.qc_max_tries:
                            raise QCRejectedError(
                                f"{label.name}: no synthetic {self.organ.name} tumour passed quality control in "
                                f"{self.qc_max_tries} tries (last: {'; '.join(decision.reasons)})")
                        attempts[k] += 1
                        break
                rec.update(index=k + 1, case_seed=int(seed))
                centre = np.asarray(rec["centre_voxel"], float)
                rec["centre_mm"] = [round(float(v), 2) for v in image.voxel_to_mm(centre)]
                lesions.append(rec)
                masks.append(lm)
                k += 1
        return SynthesisResult(image.with_array(out_img), label.with_array(out_lab), lesions, masks)

    def _one_lesion(self, img: np.ndarray, free: np.ndarray, grid: Grid, seed: int, label_name: str, organ_ml: float):
        rng = np.random.default_rng(seed)
        if self.profile is not None:
            return self._profile_lesion(img, free, grid, rng, seed, label_name, organ_ml)
        conv = self.shape_convention
        params, lm, tries = place_lesion(free, grid, self.organ, self.size, rng, self.min_inside, self.max_tries,
                                         label_name=label_name, organ_ml=organ_ml, convention=conv)
        box, inner, m, soft, blur = lesion_soft_mask(lm, grid, self.organ, rng, conv)
        crop = img[box]
        organ_crop = free[box]
        if self.difference is None:
            diff: float | np.ndarray = rule_based_difference(rng)
        elif hasattr(self.difference, "for_volume"):
            # A learned generator: it chooses its own context around the box.
            diff = np.asarray(self.difference.for_volume(img, box, grid, self.organ), np.float32)
        elif callable(self.difference):
            diff = np.asarray(self.difference(crop.astype(np.float32), m > 0, self.organ), np.float32)
        else:
            diff = float(self.difference)
        texture = lesion_texture(m.shape, grid, self.organ, rng, conv)
        new = blend(crop, organ_crop, soft, diff, texture, self.organ)
        before_box = crop.copy()
        before = float(crop[inner][lm.mask].mean())
        img[box] = _to_dtype(new, img.dtype)
        after = float(img[box][inner][lm.mask].mean())
        rec = {
            "organ": self.organ.name,
            "size_class": params.size_class,
            "shape_convention": conv,
            "centre_voxel": [int(v) for v in params.centre],
            "semi_axes_mm": [round(v, 2) for v in params.semi_axes_mm],
            "volume_ml": round(lm.voxels * grid.voxel_volume_ml, 4),
            "voxels": lm.voxels,
            "inside_fraction": round(lm.inside_fraction, 4),
            "deformation_sigma": params.sigma,
            "blur_sigma": round(blur, 4),
            "difference": round(float(np.mean(diff)), 4) if np.ndim(diff) else round(float(diff), 4),
            "difference_source": "rule-based" if self.difference is None else (
                "generator" if callable(self.difference) else "fixed"),
            "mean_hu_before": round(before, 2),
            "mean_hu_after": round(after, 2),
            "bbox_voxel": [[s.start, s.stop] for s in lm.slices],
            "seed": seed,
            "tries": tries,
            "version": __version__,
        }
        return rec, lm, box, before_box, m > 0


    def _profile_lesion(self, img: np.ndarray, free: np.ndarray, grid: Grid, rng: np.random.Generator, seed: int,
                        label_name: str, organ_ml: float):
        """One lesion drawn from the profile and rendered (:func:`freetumor.lesions.render.draw_lesion`)."""
        r, params, tries = draw_lesion(self.profile, img, free, grid, rng, tries=self.max_tries)
        if r is None:
            raise OrganTooSmallError(
                f"{label_name}: {self.organ.name} ({organ_ml:.1f} mL) has no room for a lesion of the profile "
                f"in {self.max_tries} draws (last: {params['diameter_mm']:.1f} mm)")
        box = r.box
        before_box = np.asarray(img[box]).copy()
        values = r.values
        if self.difference is not None:  # a residual generator (train-synth --profile): x' = x_profile + f * G
            work = np.asarray(img, np.float32).copy()
            work[box] = values
            values = values + r.occupancy * self.difference.for_volume(work, box, grid, self.organ)
        label = r.label
        if not label.any():  # a lesion thinner than the label threshold: keep its densest voxel
            label = np.zeros_like(label)
            label[np.unravel_index(int(np.argmax(r.occupancy)), label.shape)] = True
        before = float(before_box[label].mean())
        img[box] = _to_dtype(values, img.dtype)
        after = float(np.asarray(img[box], np.float64)[label].mean())
        lm = LesionMask(box, label, int(label.sum()))
        rec = {
            "organ": self.organ.name,
            "size_class": "profile",
            "centre_voxel": list(r.centre),
            "semi_axes_mm": r.record["semi_axes_mm"],
            "diameter_mm": round(float(params["diameter_mm"]), 2),
            "volume_ml": round(lm.voxels * grid.voxel_volume_ml, 4),
            "voxels": lm.voxels,
            "inside_fraction": 1.0,
            "difference_source": "profile" if self.difference is None else "profile+generator",
            "profile": self.profile.name or "profile",
            "rendering": {k: v for k, v in r.record.items() if k != "semi_axes_mm"},
            "mean_hu_before": round(before, 2),
            "mean_hu_after": round(after, 2),
            "bbox_voxel": [[s.start, s.stop] for s in box],
            "seed": seed,
            "tries": tries,
            "version": __version__,
        }
        return rec, lm, box, before_box, label


def synthesize(
    image: Volume,
    label: Volume,
    organ: str,
    *,
    count: int = 1,
    size: str = "mix",
    seed: int = 0,
    label_map: str | os.PathLike | LabelMap | None = None,
) -> SynthesisResult:
    """One-call rule-based synthesis (see :class:`Synthesizer`)."""
    return Synthesizer(organ, label_map=label_map, size=size)(image, label, count=count, seed=seed)


def check_count(count: int, option: str = "--count") -> int:
    """Lesions per case within 1..:data:`MAX_LESIONS_PER_CASE` (one-line :class:`ConfigError`, naming the
    option, the limit and why; checked before any work).

    Example:
        >>> try:
        ...     check_count(10**12)
        ... except ConfigError as exc:
        ...     print(str(exc)[:65])
        --count 1000000000000 is above the limit of 1000 lesions per case
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise ConfigError(f"{option} must be a whole number of lesions, got {count!r}")
    if count < 1:
        raise ConfigError(f"{option} must be at least 1, got {count}")
    if count > MAX_LESIONS_PER_CASE:
        raise ConfigError(f"{option} {count} is above the limit of {MAX_LESIONS_PER_CASE} lesions per case "
                          "(each lesion is drawn, placed apart from the others and checked in turn, up to about "
                          "a second each, and all must fit in one organ)")
    return int(count)


@dataclass(frozen=True)
class SynthesisOptions:
    """Everything that configures synthesis independently of the case (the options of ``synthesize``).

    Attributes:
        organ: the host organ (tumour type).
        label_map: the input's label convention; default ``abdomen7`` / ``chest3`` by organ.
        size: tumour size class, or ``mix``.
        count: tumours per case.
        generator: a Stage-1 ``generator.pt`` (or ``(model, cfg)``): learned difference maps
            instead of the rule-based scalar.
        qc_segmentor: a segmentation checkpoint (or ``(model, cfg)``) for quality control.
        qc_threshold: the segmentor recall a tumour needs (default: the generator config's
            ``qc.threshold``, or the default config's). Given alone, quality control runs the
            cheap checks only.
        qc_max_tries: tumours drawn per lesion under quality control before giving up.
        context: what the generator sees (``bbox`` or ``patch``; default from its config).
        qc_context: what the QC segmentor sees (``patch``, as the paper, ``fit`` or ``bbox``; default the
            config's ``qc.context``, see :class:`~freetumor.quality.QualityControl`).
        device: torch device for the networks (default CPU).
        qc_device: torch device for the QC segmentor alone (default: ``device``); sets ``qc.device``.
        png: write the before/after figure.
        profile: a lesion profile (JSON path or ``builtin:<name>``): lesions drawn from it and
            rendered in mm and HU (see :class:`Synthesizer`); with ``generator`` only one trained on
            the profile's renders (``train-synth --profile``), whose residual is added to each lesion.
        shape_convention: ``physical`` (default) or ``released`` (see :class:`Synthesizer`).
        exclude_calcified: leave out the profile's calcified lesions (contrast above
            :data:`~freetumor.lesions.profile.CALCIFIED_HU`; 8.5 % of ``builtin:lung``).
    """

    organ: str
    label_map: str | os.PathLike | None = None
    size: str = "mix"
    count: int = 1
    generator: object = None
    qc_segmentor: object = None
    qc_threshold: float | None = None
    qc_max_tries: int = 10
    context: str | None = None
    qc_context: str | None = None
    device: str | None = None
    qc_device: str | None = None
    png: bool = True
    profile: object = None
    shape_convention: str = DEFAULT_SHAPE_CONVENTION
    exclude_calcified: bool = False

    def __post_init__(self):
        check_count(self.count)  # before any work: --count 2**70 is one line, not a ValueError


# Networks loaded by build_synthesizer in this process, by kind (see networks_loaded()).
_NETWORK_LOADS: Counter = Counter()


def networks_loaded() -> dict[str, int]:
    """How many networks :func:`build_synthesizer` loaded in this process: ``{"generator": n, "segmentor": m}``."""
    return {"generator": _NETWORK_LOADS["generator"], "segmentor": _NETWORK_LOADS["segmentor"]}


def check_synthesis_options(options: SynthesisOptions) -> None:
    """Refuse, before any output exists, the run-level options :func:`build_synthesizer` would refuse
    in every worker: a generator or QC segmentor file that is missing, unreadable or another kind
    of checkpoint, a lesion profile that is unreadable or for another organ, a label map without
    the organ, ``--qc-device`` without ``--qc-segmentor``, a threshold out of range. The networks
    are not built (``synthesize-batch`` checks once in the driver; each worker builds its own).
    The devices are :func:`check_devices`' (``synthesize-batch`` calls it first).

    Example:
        >>> check_synthesis_options(SynthesisOptions("liver", profile="builtin:lung"))
        Traceback (most recent call last):
        ...
        freetumor.errors.InputError: builtin:lung: lesion profile is for lung, not liver
    """
    if options.qc_device is not None and options.qc_segmentor is None:
        raise ConfigError("--qc-device needs --qc-segmentor (the network it places)")
    for source, kind, option in ((options.generator, "generator", "--generator"),
                                 (options.qc_segmentor, "segmentor", "--qc-segmentor")):
        if isinstance(source, (str, os.PathLike)):
            from .checkpoints import check_kind, load_checkpoint  # deferred: torch loads only with a network

            check_kind(load_checkpoint(source), source, kind)
    settings = Config().qc
    if options.qc_threshold is not None:
        settings = dataclasses.replace(settings, threshold=options.qc_threshold).checked("option --qc-threshold")
    Synthesizer(options.organ, label_map=options.label_map, size=options.size, qc_max_tries=options.qc_max_tries,
                profile=options.profile, shape_convention=options.shape_convention,
                exclude_calcified=options.exclude_calcified)


def check_devices(options: SynthesisOptions) -> None:
    """``--device`` and ``--qc-device`` before any work: the QC device spelled as the ``qc.device``
    setting allows, then each one present on this machine (one-line :class:`ConfigError`)."""
    if options.qc_device is not None:
        dataclasses.replace(Config().qc, device=options.qc_device).checked("option --qc-device")
    if options.device is not None or options.qc_device is not None:
        from .checkpoints import check_device  # deferred: torch loads only when a device is named

        check_device(options.device, "--device")
        check_device(options.qc_device, "--qc-device")


def build_synthesizer(options: SynthesisOptions) -> Synthesizer:
    """A :class:`Synthesizer` for ``options``, its networks loaded once (reuse it for every case).

    The generator (if any) gives the learned difference maps and the quality-control settings
    (its config's ``qc`` section; the default config's without a generator); ``qc_threshold``
    overrides the threshold. The QC segmentor's margin (``bbox`` context) is half the
    generator config's ``synth.context_margin``.

    Example:
        >>> s = build_synthesizer(SynthesisOptions("liver", size="small", qc_threshold=0.5))
        >>> s.size, s.qc.settings.threshold, s.qc.model is None
        ('small', 0.5, True)
    """
    difference = None
    cfg = Config()
    if options.qc_device is not None and options.qc_segmentor is None:
        raise ConfigError("--qc-device needs --qc-segmentor (the network it places)")
    check_devices(options)
    if options.generator is not None:
        from .generator import LearnedDifference  # deferred: torch and MONAI load only when a network is used

        difference = LearnedDifference(options.generator, device=options.device, context=options.context)
        _NETWORK_LOADS["generator"] += 1
        cfg = difference.cfg
    qc = None
    if options.qc_segmentor is not None or options.qc_threshold is not None:
        from .quality import QualityControl  # deferred: torch and MONAI load only when a network is used

        settings = cfg.qc
        if options.qc_threshold is not None:
            settings = dataclasses.replace(settings, threshold=options.qc_threshold).checked("option --qc-threshold")
        if options.qc_device is not None:
            settings = dataclasses.replace(settings, device=options.qc_device).checked("option --qc-device")
        # What the segmentor sees around a lesion: qc.context / qc.margin (benchmarks/qc_context_agreement.py)
        qc = QualityControl(options.qc_segmentor, settings, device=options.device, context=options.qc_context)
        if options.qc_segmentor is not None:
            _NETWORK_LOADS["segmentor"] += 1
    return Synthesizer(options.organ, label_map=options.label_map, size=options.size, difference=difference, qc=qc,
                       qc_max_tries=options.qc_max_tries, profile=options.profile,
                       shape_convention=options.shape_convention, exclude_calcified=options.exclude_calcified)


def case_outputs(case: str, png: bool = True) -> dict[str, str]:
    """The file names :func:`synthesize_case` writes for ``case``, by kind.

    Example:
        >>> case_outputs("ct1", png=False)
        {'image': 'ct1_image.nii.gz', 'label': 'ct1_label.nii.gz', 'record': 'ct1.json'}
    """
    names = {"image": f"{case}_image.nii.gz", "label": f"{case}_label.nii.gz", "record": f"{case}.json"}
    return {**names, "figure": f"{case}.png"} if png else names


def check_case_outputs(out_dir: str | os.PathLike, case: str, inputs, overwrite: bool) -> None:
    """Refuse (one line) outputs that would replace an input, or, without ``overwrite``, an earlier run's."""
    out_dir = Path(out_dir)
    targets = [out_dir / name for name in case_outputs(case).values()]
    for given in inputs:
        for target in targets:
            if target.exists() and Path(given).exists() and os.path.samefile(target, given):
                raise InputError(given, f"is also the output {target.name} of case {case!r}; choose another --out")
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        raise InputError(out_dir, f"already holds case {case!r} ({', '.join(existing)}); "
                                  f"use --overwrite to replace it, or another --out")


def synthesize_case(
    synthesizer: Synthesizer,
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seed: int,
    count: int = 1,
    case: str | None = None,
    png: bool = True,
    overwrite: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Load one case, synthesise ``count`` tumours and write ``<case>_image.nii.gz``,
    ``<case>_label.nii.gz``, ``<case>.json`` and ``<case>.png`` (with ``png``) into ``out_dir``,
    all or nothing. Returns the case record written as JSON.

    ``case`` defaults to the image's file name without its extension. Outputs that would replace
    the input image or label are refused. An earlier run's outputs of the case are replaced, and
    any of them this run does not write (its figure, with ``png=False``) removed; with
    ``overwrite=False`` they are refused instead (one-line :class:`InputError`, nothing written).
    ``progress`` (e.g. a :class:`~freetumor.progress.Progress`) is called with each phase's text.
    """
    case = case or case_name(image_path)
    check_case_outputs(out_dir, case, (image_path, label_path), overwrite)
    progress = progress or (lambda text: None)
    progress(f"reading {case}")
    # Reading and gzip-compressing release the GIL: image and label travel in parallel.
    with ThreadPoolExecutor(1) as pool:
        pending_label = pool.submit(load_volume, label_path)
        image = load_volume(image_path)
        label = pending_label.result()
    progress(f"placing {count} {synthesizer.organ.name} tumour(s) in {'x'.join(map(str, image.shape))} voxels")
    result = synthesizer(image, label, count=count, seed=seed)
    for rec in result.lesions:
        rec["case"] = case
    organ = synthesizer.organ
    record = {
        "case": case,
        "image": str(image_path),
        "label": str(label_path),
        "organ": organ.name,
        "label_map": synthesizer.label_map.name,
        "tumour_id": synthesizer.label_map.tumour_id(organ.name),
        "size": synthesizer.size,
        "shape_convention": synthesizer.shape_convention,
        "count": count,
        "seed": seed,
        "shape": list(image.shape),
        "spacing_mm": list(image.spacing),
        "orientation": "".join(image.orientation),
        "freetumor_version": __version__,
        **synthesizer.provenance(),
        "lesions": result.lesions,
        "outputs": case_outputs(case, png),
    }
    names = record["outputs"]
    progress("writing " + ", ".join(names.values()))
    with staged_output(out_dir) as stage, ThreadPoolExecutor(1) as pool:
        saving_image = pool.submit(save_volume, result.image, stage / names["image"])
        save_volume(result.label, stage / names["label"])
        if png:
            from .render import render_lesions_png  # deferred: matplotlib loads only when a figure is drawn

            masks = [m.full(image.shape) for m in result.masks]
            render_lesions_png(
                image, result.image, masks, result.lesions, organ.hu_window, stage / names["figure"],
                title=f"{case} · {organ.name} · seed {seed}",
            )
        write_bytes_atomic(stage / names["record"], (json.dumps(record, indent=2) + "\n").encode())
        saving_image.result()
    for stale in set(case_outputs(case).values()) - set(names.values()):
        (Path(out_dir) / stale).unlink(missing_ok=True)  # an earlier run's figure must not sit beside this record
    return record
