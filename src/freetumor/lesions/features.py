"""Lesion crops and their hand-made radiomic features, the input of the realism scores.

Lesion crops (:func:`extract_crops`)
    Each lesion (a 26-connected component of ``label == tumour_id``, or the
    lesion inside a ``bbox_voxel`` of a synthesis record) is cropped with its
    bounding box plus ``margin_mm`` and resampled to a common isotropic grid
    (default 1 mm; image trilinear, mask nearest neighbour) so that features are
    comparable across scans. Other tumour voxels in the crop are kept out of the
    rim. The volume is kept in ``crop.meta["volume_ml"]`` (native voxels), and the
    lesion's native image and mask in ``crop.native_image`` / ``crop.native_mask``
    (shape is measured on them, and the CNN reader of ``freetumor realism`` crops them).

Features (:func:`lesion_features`; names as in :data:`FEATURE_NAMES`, IBSI
identifiers in brackets). Intensities are HU of the resampled crop inside the
lesion mask, N voxels:

* ``firstorder_mean`` [Q4LE], ``firstorder_std`` (population standard deviation,
  the square root of IBSI variance ECT3), ``firstorder_skewness`` [KE2A],
  ``firstorder_kurtosis`` (excess kurtosis) [IPH6], ``firstorder_p10`` [QG58],
  ``firstorder_median`` [Y12H], ``firstorder_p90`` [8DWT],
  ``firstorder_iqr`` [SALO], ``firstorder_range`` [2OJQ],
  ``firstorder_mad`` (mean absolute deviation) [4FUA],
  ``firstorder_energy`` (energy [N8CA] divided by N, i.e. mean HU^2);
  skewness and kurtosis are 0 for a constant lesion.
* ``firstorder_entropy`` (intensity histogram entropy, log2) [TLU2] and
  ``firstorder_uniformity`` [BJ5W] on a fixed-bin-width histogram of
  :data:`HIST_BIN_HU` = 25 HU bins with edges at multiples of 25 HU.
* ``rim_contrast``: mean HU of the shell within :data:`RIM_MM` = 3 mm outside
  the lesion (inside the crop, other tumours excluded) minus the lesion mean
  (positive for a hypodense lesion). When the crop has no such shell (a lesion
  filling its scan) the other non-lesion voxels are used, and 0 if none.
* ``edge_sharpness``: mean gradient magnitude (HU/mm, central differences) on
  the boundary band, the voxels with a 6-neighbour on the other side of the
  lesion edge (both sides of it).
* 3D grey-level co-occurrence matrix (GLCM): HU clipped to the organ's window
  and quantised to :data:`GLCM_LEVELS` = 32 grey levels (fixed bin number), the
  13 directions of a 3D neighbourhood at distance 1, pairs with both voxels in
  the lesion, symmetric, one matrix per direction, features averaged over
  directions (IBSI "3D:avg"): ``glcm_contrast`` [ACUI],
  ``glcm_dissimilarity`` [8S9J], ``glcm_homogeneity`` (inverse difference)
  [IB1Z], ``glcm_idm`` (inverse difference moment) [WF0Z], ``glcm_energy``
  (angular second moment) [8ZQL], ``glcm_correlation`` [NI2N] (1 for a
  constant lesion), ``glcm_joint_entropy`` (log2) [TU9B], ``glcm_cluster_shade``
  [7NFM] and ``glcm_cluster_prominence`` [AE86].
* Shape (:mod:`freetumor.lesions.shape`; their names prefixed ``shape_``):
  ``shape_sphericity``, ``shape_compactness``, ``shape_elongation``,
  ``shape_flatness``, ``shape_surface_roughness`` and ``shape_convexity``.
  They are measured on the lesion's **native** mask (not the 1 mm crop: a
  nearest-neighbour upsampled mask keeps the native staircase), at the native
  in-plane spacing and with slices thinner than :data:`SHAPE_SLICE_MM` = 2.5 mm
  re-sliced to 2.5 mm (mask linearly interpolated along the slice axis,
  thresholded at 0.5), so that lesions of thin-slice and 2.5 mm scans are
  compared at one slice thickness. A crop without a native mask (built by hand)
  is measured on its own grid. ``lesion_features(..., shape=False)`` leaves them out.

Example:
    >>> import numpy as np
    >>> img = np.full((9, 9, 9), 40.0, np.float32)
    >>> mask = np.zeros(img.shape, bool); mask[2:7, 2:7, 2:7] = True
    >>> f = lesion_features(LesionCrop("real", "demo", 1, img, mask, (1.0, 1.0, 1.0)), window=(-175, 250))
    >>> f["glcm_contrast"], f["glcm_homogeneity"], f["firstorder_mean"], f["rim_contrast"]
    (0.0, 1.0, 40.0, 0.0)
    >>> list(f) == list(FEATURE_NAMES)
    True
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..data import datalist_label_map, load_datalist
from ..errors import ConfigError, FreeTumorError, InputError
from ..io import Volume, case_name, load_volume
from ..labels import get_label_map
from ..structured import read_json
from .measure import edge_sharpness
from .shape import SHAPE_DEFINITIONS, SHAPE_FEATURES, shape_descriptors
from ..organs import get_organ

__all__ = [
    "DEFAULT_WINDOW",
    "FEATURE_DEFINITIONS",
    "FEATURE_NAMES",
    "GLCM_DIRECTIONS",
    "GLCM_LEVELS",
    "HIST_BIN_HU",
    "RIM_MM",
    "SHAPE_FEATURE_NAMES",
    "SHAPE_SLICE_MM",
    "LesionCrop",
    "crops_from_datalist",
    "crops_from_synthetic_dir",
    "extract_crops",
    "lesion_features",
    "shape_features",
]

HIST_BIN_HU = 25.0
GLCM_LEVELS = 32
RIM_MM = 3.0
SHAPE_SLICE_MM = 2.5  # shape is measured on the native mask with thinner slices re-sliced to this
DEFAULT_WINDOW = (-175.0, 250.0)

FEATURE_DEFINITIONS: dict[str, str] = {
    "firstorder_mean": "mean HU in the lesion (IBSI Q4LE)",
    "firstorder_std": "standard deviation of HU, population (sqrt of IBSI variance ECT3)",
    "firstorder_skewness": "skewness (IBSI KE2A); 0 for a constant lesion",
    "firstorder_kurtosis": "excess kurtosis (IBSI IPH6); 0 for a constant lesion",
    "firstorder_p10": "10th percentile HU (IBSI QG58)",
    "firstorder_median": "median HU (IBSI Y12H)",
    "firstorder_p90": "90th percentile HU (IBSI 8DWT)",
    "firstorder_iqr": "interquartile range HU (IBSI SALO)",
    "firstorder_range": "max - min HU (IBSI 2OJQ)",
    "firstorder_mad": "mean absolute deviation from the mean (IBSI 4FUA)",
    "firstorder_energy": "energy divided by voxel count = mean HU^2 (IBSI N8CA / N)",
    "firstorder_entropy": "intensity histogram entropy, log2, 25 HU bins (IBSI TLU2)",
    "firstorder_uniformity": "intensity histogram uniformity, 25 HU bins (IBSI BJ5W)",
    "rim_contrast": "mean HU in a 3 mm shell outside the lesion minus lesion mean HU",
    "edge_sharpness": "mean gradient magnitude (HU/mm) on the lesion boundary band",
    "glcm_contrast": "GLCM contrast (IBSI ACUI)",
    "glcm_dissimilarity": "GLCM dissimilarity (IBSI 8S9J)",
    "glcm_homogeneity": "GLCM inverse difference / homogeneity (IBSI IB1Z)",
    "glcm_idm": "GLCM inverse difference moment (IBSI WF0Z)",
    "glcm_energy": "GLCM angular second moment / energy (IBSI 8ZQL)",
    "glcm_correlation": "GLCM correlation (IBSI NI2N); 1 for a constant lesion",
    "glcm_joint_entropy": "GLCM joint entropy, log2 (IBSI TU9B)",
    "glcm_cluster_shade": "GLCM cluster shade (IBSI 7NFM)",
    "glcm_cluster_prominence": "GLCM cluster prominence (IBSI AE86)",
    **{f"shape_{k}": f"{v}; native mask, slices re-sliced to >= {SHAPE_SLICE_MM} mm"
       for k, v in SHAPE_DEFINITIONS.items()},
}
SHAPE_FEATURE_NAMES: tuple[str, ...] = tuple(f"shape_{k}" for k in SHAPE_FEATURES)
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_DEFINITIONS)

# The 13 unique directions of a 3D 26-neighbourhood (one of each +/- pair).
GLCM_DIRECTIONS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1), (0, 1, 0), (1, 0, 0),
    (0, 1, 1), (0, 1, -1), (1, 0, 1), (1, 0, -1), (1, 1, 0), (1, -1, 0),
    (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1),
)


@dataclass
class LesionCrop:
    """One lesion resampled to an isotropic grid.

    Attributes:
        source: ``"real"``, ``"synthetic"`` or ``"control"`` (a second real set).
        case: case id the lesion comes from.
        index: lesion number within the case (1-based).
        image: float32 HU crop on the isotropic grid.
        mask: bool lesion mask, same shape.
        spacing: voxel size of the crop in mm.
        meta: ``volume_ml`` and ``voxels`` (native grid), ``bbox_voxel`` (native,
            stop exclusive), ``native_spacing``, and ``hu_window`` when known.
        other: bool mask of other tumours' voxels in the crop (kept out of the rim), or ``None``.
        native_image: the same crop on the native grid (HU, spacing ``meta["native_spacing"]``), or ``None``.
        native_mask: the lesion on the native grid, or ``None``.
    """

    source: str
    case: str
    index: int
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    meta: dict = field(default_factory=dict)
    other: np.ndarray | None = None
    native_image: np.ndarray | None = None
    native_mask: np.ndarray | None = None


# ----------------------------------------------------------------------------- crops


def _triple_spacing(spacing) -> tuple[float, float, float]:
    if np.ndim(spacing) == 0:
        spacing = (spacing,) * 3
    out = tuple(float(s) for s in spacing)
    if len(out) != 3 or not all(math.isfinite(s) and s > 0 for s in out):
        raise ConfigError(f"crop spacing must be 3 positive numbers in mm, got {spacing!r}")
    return out  # type: ignore[return-value]


def _resample(arr: np.ndarray, native: np.ndarray, target: np.ndarray, order: int) -> np.ndarray:
    """Resample a crop onto a grid of ``target`` mm voxels covering the same extent (voxel centres)."""
    extent = np.asarray(arr.shape) * native
    shape = tuple(int(n) for n in np.maximum(1, np.rint(extent / target)))
    step = target / native  # output voxel o samples input coordinate (o + 0.5) * step - 0.5
    return ndimage.affine_transform(arr, step, offset=0.5 * step - 0.5, output_shape=shape, order=order,
                                    mode="nearest")


def _expand(sl: Sequence[slice], margin: np.ndarray, shape) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - int(m)), min(int(n), s.stop + int(m)))
                 for s, m, n in zip(sl, margin, shape))


def _box_slices(box, shape) -> tuple[slice, ...] | None:
    try:
        sl = tuple(slice(max(0, int(lo)), min(int(n), int(hi))) for (lo, hi), n in zip(box, shape))
    except (TypeError, ValueError):
        return None
    if len(sl) != 3 or any(s.stop <= s.start for s in sl):
        return None
    return sl


def extract_crops(
    image: Volume,
    label: Volume,
    tumour_id: int,
    source: str,
    case: str,
    spacing=(1.0, 1.0, 1.0),
    margin_mm: float = 5.0,
    min_voxels: int = 20,
    boxes: Iterable | None = None,
    instances: np.ndarray | None = None,
    own: np.ndarray | None = None,
) -> list[LesionCrop]:
    """Crop every lesion of ``label == tumour_id`` and resample it to ``spacing`` mm.

    Without ``boxes`` each 26-connected component with at least ``min_voxels``
    voxels is a lesion, numbered 1, 2, ... in scan order of the components. With
    ``boxes`` (a list of ``[[x0, x1], [y0, y1], [z0, z1]]`` voxel boxes, stop
    exclusive, or synthesis lesion records with ``bbox_voxel`` and ``index``),
    the lesion of each box is, in this order of preference:

    * with ``instances`` (an integer map on the image grid, 0 = none, k = the lesion
      whose ``index`` is k): the voxels ``instances == index`` (no box needed);
    * with ``own`` (a bool mask on the image grid of the voxels that belong to the
      boxed lesions, e.g. tumour after synthesis and not before): the ``own`` voxels
      inside the box, so a tumour the lesion touches is not merged into it;
    * else the tumour component overlapping the box most.

    The other tumour voxels of a crop (``crop.other``) are kept out of its rim.

    Raises:
        InputError: image and label grids differ.
        ConfigError: bad ``spacing`` / ``margin_mm``.
    """
    target = np.asarray(_triple_spacing(spacing))
    if not (isinstance(margin_mm, (int, float)) and math.isfinite(margin_mm) and margin_mm >= 0):
        raise ConfigError(f"margin_mm must be a non-negative number, got {margin_mm!r}")
    if image.shape != label.shape:
        raise InputError(label.name, f"label shape {label.shape} differs from image shape {image.shape}")
    native = np.asarray(image.spacing, dtype=np.float64)
    voxel_ml = float(np.prod(native)) / 1000.0
    shape = image.shape
    margin = np.ceil(margin_mm / native - 1e-9).astype(int)
    tumour = label.array == tumour_id
    struct = np.ones((3, 3, 3), bool)

    # (index, crop slices, lesion mask in crop, native voxel count)
    items: list[tuple[int, tuple[slice, ...], np.ndarray]] = []
    if boxes is None:
        comps, n = ndimage.label(tumour, structure=struct)
        if n:
            sizes = np.bincount(comps.ravel(), minlength=n + 1)
            for k, sl in enumerate(ndimage.find_objects(comps), start=1):
                if sl is None or sizes[k] < min_voxels:
                    continue
                crop_sl = _expand(sl, margin, shape)
                items.append((k, crop_sl, comps[crop_sl] == k))
    else:
        for shaped in (instances, own):
            if shaped is not None and np.shape(shaped) != shape:
                raise InputError(label.name, f"lesion map shape {np.shape(shaped)} differs from label shape {shape}")
        inst_boxes = ndimage.find_objects(instances) if instances is not None else []
        for pos, box in enumerate(boxes, start=1):
            index = pos
            if isinstance(box, dict):
                index = int(box.get("index", pos))
                box = box.get("bbox_voxel")
            if instances is not None:
                core = inst_boxes[index - 1] if 0 < index <= len(inst_boxes) else None
                if core is None:
                    continue
                crop_sl = _expand(core, margin, shape)
                m = instances[crop_sl] == index
                if int(m.sum()) >= min_voxels:
                    items.append((index, crop_sl, m))
                continue
            core = _box_slices(box, shape)
            if core is None:
                continue
            crop_sl = _expand(core, margin, shape)
            inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, crop_sl))
            if own is not None:
                m = np.zeros(tuple(s.stop - s.start for s in crop_sl), bool)
                m[inner] = own[core]
                if int(m.sum()) >= min_voxels:
                    items.append((index, crop_sl, m))
                continue
            sub = tumour[crop_sl]
            comps, n = ndimage.label(sub, structure=struct)
            if not n:
                continue
            overlap = np.bincount(comps[inner].ravel(), minlength=n + 1)
            overlap[0] = 0
            best = int(np.argmax(overlap))
            if overlap[best] == 0:
                continue
            m = comps == best
            if int(m.sum()) < min_voxels:
                continue
            items.append((index, crop_sl, m))

    crops: list[LesionCrop] = []
    for index, crop_sl, m in items:
        voxels = int(m.sum())
        img = np.asarray(image.array[crop_sl], dtype=np.float32)
        other = tumour[crop_sl] & ~m
        r_img = _resample(img, native, target, order=1).astype(np.float32)
        r_mask = _resample(m.astype(np.uint8), native, target, order=0).astype(bool)
        if not r_mask.any():
            # A lesion thinner than one target voxel: fall back to a thresholded linear mask.
            r_mask = _resample(m.astype(np.float32), native, target, order=1) >= 0.5
        if not r_mask.any():
            continue
        r_other = _resample(other.astype(np.uint8), native, target, order=0).astype(bool) & ~r_mask
        meta = {
            "volume_ml": voxels * voxel_ml,
            "voxels": voxels,
            "bbox_voxel": [[int(s.start), int(s.stop)] for s in crop_sl],
            "native_spacing": [float(s) for s in native],
            "image": image.name,
        }
        crops.append(LesionCrop(source, case, int(index), r_img, r_mask, tuple(float(t) for t in target),
                                meta, r_other if r_other.any() else None, img, m))
    return crops


def crops_from_datalist(datalist, organ: str, label_map=None, source: str = "real", *, progress=None,
                        **kw) -> list[LesionCrop]:
    """Labelled lesions of ``organ`` in every labelled case of a datalist (source ``source``).

    ``datalist`` is a datalist JSON path (all lists of entries are read; cases
    without a ``label`` are skipped) or a list of entries with ``image`` and
    ``label`` paths. ``label_map`` defaults to the datalist's ``label_map``, then
    the organ's default. ``kw`` goes to :func:`extract_crops`. ``progress`` (optional) is called
    with ``k/n <case>`` before each case is read.
    """
    org = get_organ(organ)
    if isinstance(datalist, (str, os.PathLike)):
        if label_map is None:
            label_map = datalist_label_map(datalist)
        entries = load_datalist(datalist)
    else:
        entries = list(datalist)
    lm = get_label_map(label_map, org.name)
    tid = lm.tumour_id(org.name)
    crops: list[LesionCrop] = []
    seen = set()
    labelled = [e for e in entries if e.get("label")]
    for k, entry in enumerate(labelled, 1):
        key = (str(entry["image"]), str(entry["label"]))
        if key in seen:
            continue
        seen.add(key)
        if progress is not None:
            progress(f"{k}/{len(labelled)} {case_name(entry['image'])}")
        image = load_volume(entry["image"])
        label = load_volume(entry["label"])
        for crop in extract_crops(image, label, tid, source, case_name(entry["image"]), **kw):
            crop.meta["hu_window"] = [float(v) for v in org.hu_window]
            crops.append(crop)
    return crops


def _numbers(value, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def read_synthesis_record(path: str | os.PathLike) -> dict | None:
    """A ``freetumor synthesize`` record (``<case>.json``), its fields checked; ``None`` for a JSON
    file that is no record (no ``"lesions"`` list beside ``"outputs"`` or ``"tumour_id"``).

    What is checked (each a one-line :class:`InputError` naming the file and the field):
    ``tumour_id`` an integer label id in 1..65535; ``organ`` text; ``outputs`` an object of file
    names; each lesion an object whose ``index`` is an integer, ``centre_voxel`` three finite numbers
    and ``bbox_voxel`` three ``[start, stop]`` integer pairs, where given.
    """
    p = Path(path)
    rec = read_json(p, "synthesis record")  # size and depth bounded before parsing
    if not isinstance(rec, dict) or not isinstance(rec.get("lesions"), list) or not (
            "tumour_id" in rec or "outputs" in rec):
        return None
    if "tumour_id" in rec:
        tid = rec["tumour_id"]
        if isinstance(tid, bool) or not isinstance(tid, int) or not 1 <= tid <= 65535:
            raise InputError(p, f'record field "tumour_id" must be an integer label id in 1..65535, got {tid!r}')
    if "organ" in rec and not isinstance(rec["organ"], str):
        raise InputError(p, f'record field "organ" must be an organ name, got {rec["organ"]!r}')
    outputs = rec.get("outputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(v, str) and v for v in outputs.values()):
        raise InputError(p, 'record field "outputs" must map kinds to file names, e.g. {"image": "c_image.nii.gz"}')
    for i, les in enumerate(rec["lesions"]):
        if not isinstance(les, dict):
            raise InputError(p, f"record lesion {i} must be an object, got {les!r}"[:200])
        if "index" in les and (isinstance(les["index"], bool) or not isinstance(les["index"], int)):
            raise InputError(p, f'record lesion {i}: "index" must be an integer, got {les["index"]!r}'[:200])
        if "centre_voxel" in les and not _numbers(les["centre_voxel"], 3):
            raise InputError(p, f'record lesion {i}: "centre_voxel" must be 3 finite numbers, '
                                f'got {les["centre_voxel"]!r}'[:200])
        box = les.get("bbox_voxel")
        if box is not None and not (isinstance(box, list) and len(box) == 3 and all(
                isinstance(b, list) and len(b) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in b)
                for b in box)):
            raise InputError(p, f'record lesion {i}: "bbox_voxel" must be 3 [start, stop] integer pairs, '
                                f'got {box!r}'[:200])
    return rec


def _read_record(path: Path) -> dict | None:
    rec = read_synthesis_record(path)
    return rec if rec is not None and "tumour_id" in rec else None


def _input_label(rec: dict, root: Path, shape) -> Volume | None:
    """The label a synthesis record was made from (its ``"label"``), if it is still there on the same grid.

    A relative path is tried from the working directory, then from the record's folder.
    """
    given = rec.get("label")
    if not isinstance(given, str) or not given:
        return None
    path = Path(given)
    candidates = [path] if path.is_absolute() else [path, root / path]
    for cand in candidates:
        if cand.is_file():
            try:
                before = load_volume(cand)
            except FreeTumorError:
                return None
            return before if before.shape == tuple(shape) else None
    return None


def _instance_map(path: Path, shape) -> np.ndarray:
    inst = load_volume(path)
    arr = np.asarray(inst.array)
    if inst.shape != tuple(shape):
        raise InputError(path, f"lesion instance map shape {inst.shape} differs from the label's {tuple(shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr)):
            raise InputError(path, "lesion instance map holds non-integer values")
    if arr.size and arr.min() < 0:
        raise InputError(path, "lesion instance map holds negative values")
    return arr.astype(np.int32, copy=False)


def crops_from_synthetic_dir(folder, organ: str | None = None, **kw) -> list[LesionCrop]:
    """Synthetic lesions of a ``freetumor synthesize`` output folder (source ``"synthetic"``).

    Reads every ``<case>.json`` record (with ``lesions`` and ``tumour_id``) and its
    ``<case>_image.nii.gz`` / ``<case>_label.nii.gz``. Each lesion is scored on its own
    new voxels, found (in this order) from the lesion instance map the record's
    ``outputs["lesions"]`` names (voxels == the lesion's ``index``); else from the
    input label the record's ``"label"`` names (tumour now and not before synthesis,
    inside the lesion's ``bbox_voxel``); else as the tumour component overlapping
    ``bbox_voxel`` most (which merges a lesion with any tumour it touches).
    ``crop.meta["mask"]`` says which: ``"instances"``, ``"new_voxels"`` or
    ``"component"``. With ``organ``, records of other organs are skipped.

    Raises:
        InputError: the folder is missing, holds no synthesis records (of ``organ``),
            or a record's image / label / instance map is missing or unreadable.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "synthetic folder not found" if not root.exists() else "not a folder")
    want = get_organ(organ).name if organ is not None else None
    crops: list[LesionCrop] = []
    n_records = 0
    for path in sorted(root.glob("*.json")):
        rec = _read_record(path)
        if rec is None:
            continue
        rec_organ = rec.get("organ")
        if want is not None and rec_organ != want:
            continue
        n_records += 1
        case = str(rec.get("case") or path.stem)
        outputs = rec.get("outputs") if isinstance(rec.get("outputs"), dict) else {}
        image = load_volume(root / outputs.get("image", f"{case}_image.nii.gz"))
        label = load_volume(root / outputs.get("label", f"{case}_label.nii.gz"))
        if not rec["lesions"]:
            continue
        tid = int(rec["tumour_id"])
        lesions = [les for les in rec["lesions"] if isinstance(les, dict)]
        boxes = [les for les in lesions if "bbox_voxel" in les]
        how, masks = "component", {}
        if isinstance(outputs.get("lesions"), str) and lesions:
            how, boxes = "instances", lesions
            masks["instances"] = _instance_map(root / outputs["lesions"], label.shape)
        elif boxes:
            before = _input_label(rec, root, label.shape)
            if before is not None:
                how = "new_voxels"
                masks["own"] = (label.array == tid) & (before.array != tid)
        window = None
        try:
            window = [float(v) for v in get_organ(rec_organ).hu_window]
        except Exception:  # noqa: BLE001 - an unknown organ only loses the window
            pass
        # Records without boxes (other writers) fall back to the label's connected components.
        for crop in extract_crops(image, label, tid, "synthetic", case, boxes=boxes or None, **masks, **kw):
            crop.meta["record"] = str(path)
            crop.meta["mask"] = how if boxes else "component"
            if window is not None:
                crop.meta["hu_window"] = window
            crops.append(crop)
    if n_records == 0:
        what = f"{want} synthesis records" if want else "synthesis records"
        raise InputError(root, f"no {what} (<case>.json with \"lesions\") in the folder")
    return crops


# ----------------------------------------------------------------------------- features


def _glcm_features(q: np.ndarray, mask: np.ndarray, levels: int) -> dict[str, float]:
    """GLCM features (13 directions, distance 1, symmetric) averaged over directions."""
    shape = q.shape
    mats = []
    for d in GLCM_DIRECTIONS:
        a_sl, b_sl = [], []
        for o, n in zip(d, shape):
            if o >= 0:
                a_sl.append(slice(0, n - o))
                b_sl.append(slice(o, n))
            else:
                a_sl.append(slice(-o, n))
                b_sl.append(slice(0, n + o))
        a_sl, b_sl = tuple(a_sl), tuple(b_sl)
        valid = mask[a_sl] & mask[b_sl]
        if not valid.any():
            continue
        codes = q[a_sl][valid] * levels + q[b_sl][valid]
        m = np.bincount(codes, minlength=levels * levels).reshape(levels, levels).astype(np.float64)
        mats.append(m + m.T)
    if not mats:
        # No voxel pairs at all (a one-voxel lesion): treat it as constant.
        m = np.zeros((levels, levels))
        g = int(np.median(q[mask])) if mask.any() else 0
        m[g, g] = 1.0
        mats.append(m)
    p = np.stack(mats)
    p /= p.sum(axis=(1, 2), keepdims=True)
    i = np.arange(1, levels + 1, dtype=np.float64)[:, None]
    j = i.T
    diff = i - j
    mu = np.sum(p * i, axis=(1, 2))  # symmetric: mu_i == mu_j
    var = np.sum(p * (i - mu[:, None, None]) ** 2, axis=(1, 2))
    cov = np.sum(p * (i - mu[:, None, None]) * (j - mu[:, None, None]), axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(var > 1e-12, cov / np.where(var > 1e-12, var, 1.0), 1.0)
    s = i + j - 2.0 * mu[:, None, None]
    nz = p > 0
    logp = np.zeros_like(p)
    logp[nz] = np.log2(p[nz])
    per_dir = {
        "glcm_contrast": np.sum(p * diff ** 2, axis=(1, 2)),
        "glcm_dissimilarity": np.sum(p * np.abs(diff), axis=(1, 2)),
        "glcm_homogeneity": np.sum(p / (1.0 + np.abs(diff)), axis=(1, 2)),
        "glcm_idm": np.sum(p / (1.0 + diff ** 2), axis=(1, 2)),
        "glcm_energy": np.sum(p ** 2, axis=(1, 2)),
        "glcm_correlation": corr,
        "glcm_joint_entropy": -np.sum(p * logp, axis=(1, 2)),
        "glcm_cluster_shade": np.sum(p * s ** 3, axis=(1, 2)),
        "glcm_cluster_prominence": np.sum(p * s ** 4, axis=(1, 2)),
    }
    return {k: float(np.mean(v)) for k, v in per_dir.items()}


def shape_features(crop: LesionCrop) -> dict[str, float]:
    """The ``shape_*`` features of one crop: :func:`freetumor.lesions.shape.shape_descriptors` of its
    native mask, slices thinner than :data:`SHAPE_SLICE_MM` re-sliced to it (the module doc)."""
    if crop.native_mask is None or "native_spacing" not in crop.meta:
        mask, sp = np.asarray(crop.mask, bool), tuple(float(v) for v in crop.spacing)
    else:
        mask, sp = np.asarray(crop.native_mask, bool), tuple(float(v) for v in crop.meta["native_spacing"])
        if sp[2] < SHAPE_SLICE_MM - 1e-6 and mask.shape[2] > 1:
            target = np.array([sp[0], sp[1], SHAPE_SLICE_MM])
            thick = _resample(mask.astype(np.float32), np.asarray(sp), target, order=1) >= 0.5
            if thick.sum() >= 4:
                mask, sp = thick, tuple(float(v) for v in target)
    d = shape_descriptors(mask, sp)
    return {f"shape_{k}": float(d[k]) for k in SHAPE_FEATURES}


def lesion_features(crop: LesionCrop, window=None, shape: bool = True) -> dict[str, float]:
    """The features of :data:`FEATURE_NAMES` for one lesion crop (all finite floats); without
    ``shape`` the ``shape_*`` ones are left out.

    ``window`` (HU low, high) is the GLCM quantisation range; default the crop's
    ``meta["hu_window"]`` (set from the organ by :func:`crops_from_datalist` and
    :func:`crops_from_synthetic_dir`), else :data:`DEFAULT_WINDOW` (soft tissue).
    """
    if window is None:
        window = crop.meta.get("hu_window") or DEFAULT_WINDOW
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ConfigError(f"HU window must be (low, high) with low < high, got {window!r}")
    img = np.asarray(crop.image, dtype=np.float64)
    mask = np.asarray(crop.mask, dtype=bool)
    if img.shape != mask.shape or img.ndim != 3:
        raise ConfigError(f"lesion {crop.case}#{crop.index}: image {img.shape} and mask {mask.shape} must be same 3D shape")
    x = img[mask]
    if x.size == 0:
        raise ConfigError(f"lesion {crop.case}#{crop.index}: empty mask")
    if not np.all(np.isfinite(x)):
        raise InputError(crop.meta.get("image", crop.case), "lesion holds non-finite HU values")
    n = x.size
    mean = float(x.mean())
    dev = x - mean
    sd = float(np.sqrt(np.mean(dev ** 2)))
    if sd > 1e-9 * max(1.0, abs(mean)):
        skew = float(np.mean(dev ** 3) / sd ** 3)
        kurt = float(np.mean(dev ** 4) / sd ** 4 - 3.0)
    else:
        sd, skew, kurt = 0.0, 0.0, 0.0
    p10, p25, p50, p75, p90 = (float(v) for v in np.percentile(x, [10, 25, 50, 75, 90]))
    _, counts = np.unique(np.floor(x / HIST_BIN_HU).astype(np.int64), return_counts=True)
    prob = counts / n
    feats: dict[str, float] = {
        "firstorder_mean": mean,
        "firstorder_std": sd,
        "firstorder_skewness": skew,
        "firstorder_kurtosis": kurt,
        "firstorder_p10": p10,
        "firstorder_median": p50,
        "firstorder_p90": p90,
        "firstorder_iqr": p75 - p25,
        "firstorder_range": float(x.max() - x.min()),
        "firstorder_mad": float(np.mean(np.abs(dev))),
        "firstorder_energy": float(np.mean(x * x)),
        "firstorder_entropy": float(-np.sum(prob * np.log2(prob)) + 0.0),
        "firstorder_uniformity": float(np.sum(prob ** 2)),
    }

    # Rim contrast: shell of RIM_MM outside the lesion, inside the crop, other tumours excluded.
    outside = ~mask if crop.other is None else ~mask & ~np.asarray(crop.other, bool)
    dist = ndimage.distance_transform_edt(~mask, sampling=crop.spacing)
    shell = outside & (dist <= RIM_MM)
    if not shell.any():
        shell = outside
    feats["rim_contrast"] = float(img[shell].mean() - mean) if shell.any() else 0.0
    feats["edge_sharpness"] = edge_sharpness(img, mask, crop.other, crop.spacing)

    q = np.floor((np.clip(img, lo, hi) - lo) / (hi - lo) * GLCM_LEVELS).astype(np.int64)
    np.clip(q, 0, GLCM_LEVELS - 1, out=q)
    feats.update(_glcm_features(q, mask, GLCM_LEVELS))
    if shape:
        feats.update(shape_features(crop))
    return {k: float(feats[k]) for k in FEATURE_NAMES if k in feats}
