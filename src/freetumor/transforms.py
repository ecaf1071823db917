"""MONAI transform chains for segmentation training, validation and inference.

The chains follow FreeTumor's ``utils/data_trans.py`` (``METHOD.md`` §2.3):

1. load image (and label) with its affine, add a channel axis;
2. map the label values of the datalist's convention (``cfg.label_map``) to
   the training classes of ``cfg.task`` (:func:`freetumor.tasks.class_mapping`, :class:`ConvertLabelsd`);
3. orient to RAS, resample to ``data.spacing`` (bilinear image, nearest label);
4. window ``data.hu_window`` to [0, 1] (clipped);
5. crop to the body (image > 0 after scaling) and pad to ``data.roi_size`` (in training a labelled
   case smaller than the patch is instead placed at a random offset in a larger canvas:
   :mod:`freetumor.placement`).

Training then samples ``num_samples`` patches with ``RandCropByPosNegLabeld``,
flips each axis (p = ``flip_prob``), rotates by 90° (p = ``rot90_prob``), jitters
the intensity (p = 0.1 each) and finally runs an optional ``synthesis``
transform on each augmented patch (FreeTumor synthesises after augmentation).
All deterministic steps come before the first random one, so a cache
(``CacheDataset`` or ``StepDataset``) stores the preprocessed volume.

Training classes per ``task`` are defined in :mod:`freetumor.tasks`.

Every chain returns ``image`` as a float32 :class:`monai.data.MetaTensor` of
shape ``(1, X, Y, Z)`` whose ``.affine`` maps voxels to RAS+ millimetres, and
``label`` (when loaded) of the same shape holding class values only.

Example:
    >>> from freetumor.config import load_config
    >>> len(val_transforms(load_config("liver-cpu-tiny")).transforms)
    8
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    FgBgToIndicesd,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    Randomizable,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import convert_to_dst_type

from .lesions.render import draw_lesion
from .config import Config, DataConfig
from .copy_paste import LesionBank, host_region, paste_lesion
from .errors import ConfigError, InputError
from .generator import LearnedDifference, apply_difference
from .grids import Grid
from .io import is_nifti, load_volume
from .labels import get_label_map
from .organs import get_organ
from .placement import HOST, ROLE, VALID, AddValidMaskd, HostFocusd, RandPlaceCased, usable_region, within_scan
from .lesions.profile import LesionProfile, load_profile
from .quality import QCDecision, QualityControl, judge_patch
from .shapes import OrganTooSmallError
from .synthesis import SYNTHESIS_MODES, lesion_soft_mask, lesion_texture, place_lesion, rule_based_difference
from .tasks import class_mapping

__all__ = [
    "ConvertLabelsd",
    "VolumeReader",
    "preprocess_transforms",
    "train_transforms",
    "val_transforms",
    "infer_transforms",
    "PrepareFakeTumourd",
    "PrepareProfileTumourd",
    "RandTumorSynthesisd",
    "lesion_banks",
    "profile_patch",
]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # the affines here are RAS+ (nibabel's convention)


# ----------------------------------------------------------------------------- label classes
class ConvertLabelsd(MapTransform):
    """Map label values to training classes with one look-up table (values not in ``mapping`` -> 0).

    Non-integer values (e.g. float labels) are rounded first. The output keeps
    the input's type, dtype, device and (for a MetaTensor) its metadata and affine.

    Args:
        keys: the label key(s).
        mapping: input value -> class, e.g. from :func:`class_mapping`.
        allow_missing_keys: skip keys missing from the data.

    Example:
        >>> import numpy as np
        >>> t = ConvertLabelsd(keys=("label",), mapping={5: 1, 201: 2})
        >>> t({"label": np.array([[0, 5, 201, 7, 999]], np.int16)})["label"].tolist()
        [[0, 1, 2, 0, 0]]
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable = ("label",), mapping: Mapping[int, int] | None = None,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if not mapping:
            raise ConfigError("ConvertLabelsd needs a non-empty mapping {input value: class}")
        items = []
        for k, v in mapping.items():
            try:
                ok = not isinstance(k, bool) and not isinstance(v, bool) and int(k) == k and int(v) == v
            except (TypeError, ValueError):
                ok = False
            if not ok or not 0 <= int(k) < 1 << 24 or not 0 <= int(v) < 1 << 24:
                raise ConfigError(f"label mapping entries must be non-negative integer ids, got {k!r}: {v!r}")
            items.append((int(k), int(v)))
        self.mapping = dict(items)
        size = max(self.mapping) + 1
        # One extra slot (index ``size``, value 0) takes every value outside 0..size-1.
        lut = np.zeros(size + 1, np.int64)
        for k, v in self.mapping.items():
            lut[k] = v
        self._lut = lut

    def convert(self, label):
        """Map one array or tensor (any shape); a GPU tensor stays on its device."""
        if isinstance(label, torch.Tensor) and label.device.type != "cpu":
            return convert_to_dst_type(self._convert_torch(label), label)[0]
        a = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        return convert_to_dst_type(self._lut[self._index_numpy(a)], label)[0]  # label's type, dtype and meta

    def _index_numpy(self, a: np.ndarray) -> np.ndarray:
        """Look-up indices (int32): the rounded value, or the zero slot for anything outside the table."""
        size = self._lut.size - 1
        if a.dtype.kind == "b":
            a = a.astype(np.int32)
        elif a.dtype.kind == "f":
            a = np.rint(a)  # a new array
            a[~np.isfinite(a)] = -1
            a = np.clip(a, -1, size, out=a).astype(np.int32)
        elif a.dtype.kind == "u":
            a = (a if a.dtype.itemsize < 4 else np.minimum(a, size)).astype(np.int32)
        elif a.dtype.kind == "i":
            a = (a if a.dtype.itemsize <= 4 else np.clip(a, -1, size)).astype(np.int32, copy=False)
        else:
            raise InputError("<label>", f"label array has unsupported dtype {a.dtype}")
        return np.where((a >= 0) & (a < size), a, np.int32(size))

    def _convert_torch(self, label: torch.Tensor) -> torch.Tensor:
        size = self._lut.size - 1
        x = label.as_tensor() if isinstance(label, MetaTensor) else label
        if x.is_floating_point():
            x = torch.nan_to_num(torch.round(x), nan=-1.0, posinf=-1.0, neginf=-1.0).clamp(-1, size)
        x = x.long()
        x = torch.where((x >= 0) & (x < size), x, torch.full_like(x, size))
        return torch.as_tensor(self._lut, device=x.device)[x]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.convert(d[key])
        return d


# ----------------------------------------------------------------------------- reading
class VolumeReader(ImageReader):
    """MONAI reader on top of :func:`freetumor.io.load_volume`: NIfTI files and DICOM-series folders.

    The metadata follow MONAI's ``NibabelReader`` (``affine`` voxel -> RAS+ mm,
    ``original_affine``, ``spatial_shape``, ``space`` = RAS, no channel axis),
    so ``LoadImaged(reader=VolumeReader())`` gives the same MetaTensor for a
    NIfTI file and also reads DICOM folders; errors are :class:`InputError`.
    """

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) == 1 and (is_nifti(names[0]) or os.path.isdir(names[0]))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1:
            raise InputError(", ".join(str(n) for n in names), "expected one image file or DICOM folder per key")
        return load_volume(names[0])

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        affine = np.array(img.affine, np.float64, copy=True)
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(img.shape),
            "space": "RAS",
            "original_channel_dim": float("nan"),
            "pixdim": np.asarray([1.0, *img.spacing, 1.0, 1.0, 1.0, 1.0]),
        }
        return np.asarray(img.array), meta


# ----------------------------------------------------------------------------- chains
def _load_steps(keys: list[str]) -> list:

    # LoadImaged also builds MONAI's default readers; their notes about optional GPU DICOM
    # decoders (a warning and a log line each time) are noise here.
    log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load = LoadImaged(keys=keys, reader=VolumeReader(), image_only=True, dtype=np.float32)
    finally:
        log.setLevel(level)
    return [load, EnsureChannelFirstd(keys=keys)]


def _geometry_steps(data: DataConfig, keys: list[str]) -> list:
    spacing = tuple(data.spacing)
    a_min, a_max = data.hu_window
    modes = ("bilinear", "nearest")[: len(keys)]
    return [
        Orientationd(keys=keys, axcodes="RAS", labels=_RAS_LABELS),
        Spacingd(keys=keys, pixdim=spacing, mode=modes, dtype=np.float32),
        ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
    ]


def preprocess_transforms(cfg: Config, *, with_label: bool = True, crop_foreground: bool = True,
                          valid: bool = False, pad: bool = True) -> list:
    """The deterministic steps shared by training and validation, as a list.

    Load, channel first, label -> classes (with a label), RAS, resample to
    ``data.spacing``, window ``data.hu_window`` to [0, 1], crop to the body
    (scaled image > 0) if ``crop_foreground``, pad to ``data.roi_size`` if ``pad``.
    ``valid`` adds the scan mask of :class:`~freetumor.placement.AddValidMaskd` (training).

    Example:
        >>> from freetumor.config import load_config
        >>> cfg = load_config("liver-paper")
        >>> [type(t).__name__ for t in preprocess_transforms(cfg)]  # doctest: +NORMALIZE_WHITESPACE
        ['LoadImaged', 'EnsureChannelFirstd', 'ConvertLabelsd', 'Orientationd', 'Spacingd',
         'ScaleIntensityRanged', 'CropForegroundd', 'SpatialPadd']
    """
    keys = ["image", "label"] if with_label else ["image"]
    steps = _load_steps(keys)
    if with_label:
        mapping = class_mapping(get_label_map(cfg.label_map, cfg.organ), cfg.task, cfg.organ)
        steps.append(ConvertLabelsd(keys=("label",), mapping=mapping))
    steps += _geometry_steps(cfg.data, keys)
    if valid:
        steps.append(AddValidMaskd())
        keys = keys + [VALID]
    roi = tuple(cfg.data.roi_size)
    if crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key="image", margin=0, allow_smaller=True,
                                     start_coord_key=None, end_coord_key=None))
    if pad:
        steps.append(SpatialPadd(keys=keys, spatial_size=roi, mode="constant"))
    return steps


def train_transforms(cfg: Config, synthesis=None):
    """Training chain: :func:`preprocess_transforms`, patch sampling, augmentation, then ``synthesis``.

    Labelled cases smaller than the patch are placed at a random offset in a canvas
    (:class:`~freetumor.placement.RandPlaceCased`, ``data.crop_placement``); host (unlabelled)
    patches are centred in the organ (:class:`~freetumor.placement.HostFocusd`,
    ``data.host_patches``); every patch carries a ``valid`` mask (1 on the scan, 0 on padding).

    Returns a :class:`monai.transforms.Compose` that maps ``{"image": path,
    "label": path}`` to a list of ``data.num_samples`` patch dicts of
    ``data.roi_size``. ``synthesis`` (a transform or callable on one patch
    dict, or ``None``) runs on each patch after the augmentations.

    Example:
        >>> from freetumor.config import load_config
        >>> cfg = load_config("liver-paper")
        >>> [type(t).__name__ for t in train_transforms(cfg).transforms][8:]  # doctest: +NORMALIZE_WHITESPACE
        ['FgBgToIndicesd', 'HostFocusd', 'RandPlaceCased', 'RandCropByPosNegLabeld', 'DeleteItemsd', 'RandFlipd',
         'RandFlipd', 'RandFlipd', 'RandRotate90d', 'RandScaleIntensityd', 'RandShiftIntensityd']
    """
    d = cfg.data
    keys = ["image", "label", VALID]
    roi = tuple(d.roi_size)
    pos, neg, num_samples = d.pos, d.neg, d.num_samples
    flip_p, rot_p = d.flip_prob, d.rot90_prob
    centre = d.crop_placement == "centre"
    # Labelled cases smaller than the patch are padded by RandPlaceCased (a random offset) unless
    # data.crop_placement is centre: then the deterministic SpatialPadd pads them in the middle.
    steps = preprocess_transforms(cfg, with_label=True, crop_foreground=True, valid=True, pad=centre)
    # Foreground/background voxel indices are computed once in the deterministic (cacheable) part,
    # not again for every random crop (RandPlaceCased recomputes them on a canvas it makes).
    steps.append(FgBgToIndicesd(keys="label", image_key="image", image_threshold=0,
                                fg_postfix="_fg_idx", bg_postfix="_bg_idx"))
    steps.append(HostFocusd(d.host_patches == "organ"))
    if not centre:
        steps.append(RandPlaceCased(roi, d.crop_placement, d.canvas_scale, host_focus=d.host_patches == "organ"))
    steps.append(RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=roi, pos=pos, neg=neg,
                                        num_samples=num_samples, image_key="image", image_threshold=0,
                                        fg_indices_key="label_fg_idx", bg_indices_key="label_bg_idx"))
    steps.append(DeleteItemsd(keys=["label_fg_idx", "label_bg_idx"]))
    steps += [RandFlipd(keys=keys, prob=flip_p, spatial_axis=axis) for axis in range(3)]
    steps.append(RandRotate90d(keys=keys, prob=rot_p, max_k=3))
    if d.scale_intensity:
        steps.append(RandScaleIntensityd(keys="image", factors=0.1, prob=0.1))
    if d.shift_intensity:
        steps.append(RandShiftIntensityd(keys="image", offsets=0.1, prob=0.1))
    if synthesis is not None:
        steps.append(synthesis)
    return Compose(steps)


def val_transforms(cfg: Config):
    """Validation chain: :func:`preprocess_transforms` with the label, no random step.

    Example:
        >>> from freetumor.config import load_config
        >>> len(val_transforms(load_config("lung-paper")).transforms)
        8
    """

    return Compose(preprocess_transforms(cfg, with_label=True, crop_foreground=True))


def infer_transforms(cfg: Config):
    """Inference chain on ``{"image": path}``: load, RAS, resample, window; no crop or pad.

    The output's ``.affine`` maps its voxels to the scanner's RAS+ mm, so a
    prediction can be resampled back onto the input grid.

    Example:
        >>> from freetumor.config import load_config
        >>> [type(t).__name__ for t in infer_transforms(load_config("liver-paper")).transforms]  # doctest: +NORMALIZE_WHITESPACE
        ['LoadImaged', 'EnsureChannelFirstd', 'Orientationd', 'Spacingd', 'ScaleIntensityRanged']
    """

    return Compose(_load_steps(["image"]) + _geometry_steps(cfg.data, ["image"]))


# ----------------------------------------------------------------------------- synthetic tumours on patches
class SeededTransform(Randomizable, MapTransform):
    """A random dictionary transform whose every call draws one numpy generator from MONAI's seeded
    random state (``set_random_state`` / ``Compose`` seeding make a run reproducible)."""

    _seed = 0

    def randomize(self, data=None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def next_rng(self) -> np.random.Generator:
        """Randomise and return this call's generator."""
        self.randomize()
        return np.random.default_rng(self._seed)


class PrepareFakeTumourd(SeededTransform):
    """Draw one rule-based tumour in a training patch, for Stage 1 (and Stage 2's synthesis).

    Picks an organ present in the patch (uniformly among those with enough
    voxels), places a tumour mask F in its voxels that are not tumour (the
    shape rules of :mod:`freetumor.shapes` with the default physical convention:
    sizes, deformation and blur isotropic in mm) and adds:

    * ``fake``: F as a ``(1, X, Y, Z)`` float tensor (0/1);
    * ``weight``: O * B * T, the organ indicator times the blurred mask times
      the texture, so that x' = x + sign * weight * D~;
    * ``channel``: the generator channel of the organ (-1 without a tumour);
    * ``organ_class``: that organ's training class (-1 without a tumour).

    A patch without room for a tumour gets an empty ``fake`` and zero ``weight``. With a ``valid``
    mask (:mod:`freetumor.placement`) the tumour keeps ``data.synth_margin`` voxels from padding.
    """

    def __init__(self, cfg: Config, size: str | None = None, min_voxels: int = 64, max_tries: int = 10):
        MapTransform.__init__(self, keys=("image", "label"))
        self.organs = [(get_organ(name), cls) for name, cls in cfg.organ_classes.items()]
        self.size = size or cfg.synth.size
        self.min_voxels = int(min_voxels)
        self.max_tries = int(max_tries)
        self.margin = int(cfg.data.synth_margin)

    def __call__(self, data):
        d = dict(data)
        rng = self.next_rng()
        img = d["image"]
        lab = np.asarray(d["label"])[0]
        affine = np.asarray(getattr(img, "affine", np.eye(4)), np.float64)
        grid = Grid.from_affine(affine, lab.shape)
        fake = np.zeros(lab.shape, np.float32)
        weight = np.zeros(lab.shape, np.float32)
        channel, organ_class = -1, -1
        usable = usable_region(d, lab.shape, self.margin)  # once for every organ
        organ_of = {c[0]: (lab == c[0]) if usable is None else (lab == c[0]) & usable for _o, c in self.organs}
        present = [(o, c) for o, c in self.organs if np.count_nonzero(organ_of[c[0]]) >= self.min_voxels]
        if present:
            organ, (ocls, _tcls) = present[int(rng.integers(len(present)))]
            free = organ_of[ocls]
            try:
                _params, lm, _tries = place_lesion(free, grid, organ, self.size, rng, 0.5, self.max_tries)
            except OrganTooSmallError:
                lm = None
            if lm is not None:
                box, _inner, m, soft, _blur = lesion_soft_mask(lm, grid, organ, rng)
                texture = lesion_texture(m.shape, grid, organ, rng)
                weight[box] = soft * texture * free[box]
                fake[lm.slices] = lm.mask
                channel, organ_class = organ.generator_channel, ocls
        d["fake"] = torch.from_numpy(fake)[None]
        d["weight"] = torch.from_numpy(weight)[None]
        d["channel"] = torch.tensor(channel)
        d["organ_class"] = torch.tensor(organ_class)
        return d


class RandTumorSynthesisd(SeededTransform):
    """Online tumour synthesis for segmentation training (Stage 2), a MONAI dictionary transform.

    On a training patch (``image`` windowed to [0, 1], ``label`` in training
    classes, as :func:`train_transforms` makes them) that is *eligible* — some
    organ and no real lesion, in every region (FreeTumor's rule; the released code's chest
    rule, which drew into patches next to real lesions, is not kept), and with
    ``synth.online_on: hosts`` only on host patches — it draws one rule-based tumour mask (:class:`PrepareFakeTumourd`),
    fills it with the difference map of a trained generator (``mode="generator"``)
    or the rule-based scalar 0.2 + 0.5 U(0, 1) (``mode="procedural"``) — or, with
    ``mode="profile"``, draws a whole lesion from a lesion profile and renders it in
    HU on the patch's own grid (:mod:`freetumor.lesions.render`) — or, with ``mode="copy_paste"``,
    pastes one of the run's real labelled lesions (``banks``, :func:`lesion_banks`; TumorCP /
    CarveMix style, :mod:`freetumor.copy_paste`) — and
    runs quality control (segmentor recall on the patch plus the cheap checks)
    when a segmentor is given. An accepted tumour writes the new image and the
    organ's tumour class into the label; a rejected one is re-drawn up to
    ``max_tries`` times, and otherwise leaves the patch unchanged.

    Adds ``synth_status`` (``accepted``, ``rejected``, ``ineligible``,
    ``skipped`` (by ``prob``) or ``no-room``), ``synth_tries`` and ``synth_rejects`` (the failed
    checks of every rejected try, one word each (:attr:`~freetumor.quality.QCDecision.kinds`),
    space-separated; empty without a rejection) to the dict;
    :attr:`counts` tallies statuses (per process / data-loader worker).
    Randomness comes from the transform's own state (``set_random_state``), so
    MONAI ``Compose`` seeding makes it reproducible per worker.

    The networks come from the same building blocks as native-grid synthesis
    (:func:`freetumor.synthesis.build_synthesizer`): the generator is a
    :class:`~freetumor.generator.LearnedDifference` (its organ channel, blurred with its own
    config's ``synth.blur_sigma`` / ``blur_kernel``) and the segmentor a
    :class:`~freetumor.quality.QualityControl`; a built synthesizer's ``difference`` and ``qc``
    can be passed as they are, so the networks are loaded once.

    Args:
        cfg: the resolved training config (organ, task, data, synth, qc).
        mode: ``procedural``, ``generator`` or ``profile``.
        profile: a lesion profile (JSON path, ``builtin:<name>`` or a
            :class:`~freetumor.lesions.profile.LesionProfile`) of the config's organ (``mode="profile"``).
        banks: tumour class -> :class:`~freetumor.copy_paste.LesionBank` (``mode="copy_paste"``).
        generator: ``generator.pt`` path, ``(model, cfg)`` or a
            :class:`~freetumor.generator.LearnedDifference` (``mode="generator"``).
        qc_segmentor: segmentation checkpoint path or ``(model, cfg)`` (judged with the thresholds
            of ``cfg.qc``), or a :class:`~freetumor.quality.QualityControl` (with its own
            thresholds); ``None``: cheap checks only when ``cheap_checks`` else no QC.
        prob: probability of synthesising on an eligible patch.
        max_tries: tumours drawn per patch before giving up.
        device: torch device for the networks.
    """

    def __init__(self, cfg: Config, mode: str = "procedural", generator=None, qc_segmentor=None,
                 prob: float = 1.0, max_tries: int = 1, cheap_checks: bool = True, device: str | None = None,
                 profile=None, banks: "dict[int, LesionBank] | None" = None):
        MapTransform.__init__(self, keys=("image", "label"))
        if mode not in SYNTHESIS_MODES[1:]:
            raise ConfigError(f"synthesis mode must be procedural, generator, profile or copy_paste, got {mode!r}")
        if not 0.0 <= float(prob) <= 1.0:
            raise ConfigError(f"synthesis probability must be in [0, 1], got {prob}")
        if int(max_tries) < 1:
            raise ConfigError(f"max_tries must be at least 1, got {max_tries}")
        self.cfg = cfg
        self.mode = mode
        self.prob = float(prob)
        self.max_tries = int(max_tries)
        self.device = torch.device(device or "cpu")
        self.prep = PrepareFakeTumourd(cfg)
        self.classes = cfg.organ_classes
        self.organ_by_class = {c: get_organ(n) for n, (c, _t) in self.classes.items()}
        self.tumour_of = {c: t for _n, (c, t) in self.classes.items()}
        self.sign = cfg.organ_info.sign
        self.generator: LearnedDifference | None = None
        if mode == "generator":
            if generator is None:
                raise ConfigError("synthesis mode 'generator' needs a generator checkpoint (--generator)")
            self.generator = generator if isinstance(generator, LearnedDifference) else \
                LearnedDifference(generator, device=str(self.device))
            gdata = self.generator.cfg.data
            for key in ("spacing", "hu_window"):
                if getattr(gdata, key) != getattr(cfg.data, key):
                    raise ConfigError(f"generator was trained with data.{key} {getattr(gdata, key)}, "
                                      f"the training config has {getattr(cfg.data, key)}")
            if self.generator.residual:
                raise ConfigError("this generator learned a residual on a lesion profile's renders (train-synth "
                                  "--profile); Stage 2 with it is not supported yet: use --synthesis profile")
        if isinstance(qc_segmentor, QualityControl):
            self.qc: QualityControl | None = qc_segmentor
        else:
            self.qc = None if qc_segmentor is None else QualityControl(qc_segmentor, cfg.qc, device=str(self.device))
        # (qc.device, when set, puts the segmentor on its own device: QualityControl)
        self.profile: LesionProfile | None = None
        if mode == "profile":
            if profile is None:
                raise ConfigError("synthesis mode 'profile' needs a lesion profile (--profile)")
            self.profile = load_profile(profile, cfg.organ)
        self.banks: dict[int, LesionBank] = {}
        if mode == "copy_paste":
            self.banks = {int(c): b for c, b in (banks or {}).items() if len(b)}
            if not self.banks:
                raise ConfigError("synthesis mode 'copy_paste' needs real labelled lesions to paste (none found in "
                                  "the labelled training cases)")
        # The thresholds: the given QualityControl's, else the training config's qc section.
        self.settings = cfg.qc if self.qc is None else self.qc.settings
        self.cheap_checks = bool(cheap_checks)
        self.hosts_only = cfg.synth.online_on == "hosts"
        self.margin = int(cfg.data.synth_margin)
        self.counts: dict[str, int] = {}

    def eligible(self, lab: np.ndarray, role: str | None = None) -> bool:
        """FreeTumor's rule, in every region: the patch holds some organ and no real lesion (so a
        synthetic lesion never merges with one); with ``synth.online_on: hosts`` only host patches."""
        if self.hosts_only and role != HOST:
            return False
        organs = [c for c in self.classes.values()]
        has_tumour = any((lab == t).any() for _c, t in organs)
        return not has_tumour and any((lab == c).any() for c, _t in organs)

    def _status(self, d: dict, status: str, tries: int, rejects: list | None = None) -> dict:
        d["synth_status"] = status
        d["synth_tries"] = tries
        d["synth_rejects"] = " ".join(rejects or [])
        self.counts[status] = self.counts.get(status, 0) + 1
        return d

    def __call__(self, data):
        return self.synthesize_many([data], [self.next_rng()])[0]

    @torch.no_grad()
    def synthesize_many(self, patches: list, rngs: list) -> list[dict]:
        """:meth:`__call__` on several patches at once, patch ``i`` with the generator ``rngs[i]``
        (what :meth:`next_rng` gave it): each attempt's tumours are judged in batched segmentor
        forwards (:meth:`~freetumor.quality.QualityControl.predict_many`). Every patch uses only its
        own generator, so the patches and statuses are those of one call per patch.
        """
        out: list = [None] * len(patches)
        work = {}  # patch index -> (dict, rng, label array, x (1, 1, X, Y, Z))
        for i, (data, rng) in enumerate(zip(patches, rngs)):
            d = dict(data)
            lab = np.asarray(d["label"])[0]
            if not self.eligible(lab, d.get(ROLE)):
                out[i] = self._status(d, "ineligible", 0)
            elif rng.random() >= self.prob:
                out[i] = self._status(d, "skipped", 0)
            else:
                work[i] = (d, rng, lab, torch.as_tensor(np.asarray(d["image"], np.float32))[None])
        dmaps: dict = {}  # (patch, channel) -> the generator's map: x does not change between tries
        rejects: dict = {i: [] for i in work}  # patch -> the failed checks of its rejected tries
        for attempt in range(1, self.max_tries + 1):
            drawn, prepared = {}, {}
            for i, (d, rng, lab, x) in work.items():
                if self.banks:
                    t = self._pasted_tumour(d, lab, rng)
                elif self.profile is not None:
                    t = self._profile_tumour(d, lab, rng)
                else:
                    t = self._prepare(d, rng)
                if t is None:
                    out[i] = self._status(d, "no-room", attempt, rejects[i])
                elif self.profile is not None or self.banks:
                    drawn[i] = t
                else:
                    prepared[i] = t
            if self.generator is not None:
                need = [i for i, (p, _m) in prepared.items() if (i, int(p["channel"])) not in dmaps]
                dmaps.update(self._difference_maps({i: (work[i][3], int(prepared[i][0]["channel"])) for i in need}))
            for i, (p, dmap) in prepared.items():
                if dmap is None:
                    dmap = dmaps[(i, int(p["channel"]))]
                xf = apply_difference(work[i][3], p["weight"][None], dmap, self.sign)
                drawn[i] = (xf, p["fake"][0].numpy() > 0, int(p["organ_class"]))
            verdicts = self._judge({i: (work[i][2], work[i][3], *drawn[i]) for i in drawn})
            for i, (xf, fake, ocls) in drawn.items():
                if verdicts[i].accepted:  # new tensors (MetaTensors keep their metadata); the input dict is not modified
                    d = work[i][0]
                    new_img = torch.as_tensor(d["image"]).clone()
                    new_img[0] = xf[0, 0].to(new_img.dtype)
                    new_lab = torch.as_tensor(d["label"]).clone()
                    new_lab[0][torch.from_numpy(fake)] = self.tumour_of[ocls]
                    d["image"], d["label"] = new_img, new_lab
                    out[i] = self._status(d, "accepted", attempt, rejects[i])
                else:
                    rejects[i] += verdicts[i].kinds
            work = {i: w for i, w in work.items() if out[i] is None}
        for i, (d, *_rest) in work.items():
            out[i] = self._status(d, "rejected", self.max_tries, rejects[i])
        return out

    def _prepare(self, d: dict, rng: np.random.Generator):
        """One candidate tumour's mask, weight and organ (:class:`PrepareFakeTumourd`) and, without a
        generator, its rule-based difference; ``None`` without room."""
        self.prep.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
        p = self.prep({k: d[k] for k in ("image", "label", VALID) if k in d})
        if float(p["fake"].sum()) == 0:
            return None
        return p, None if self.generator is not None else torch.tensor(rule_based_difference(rng))

    def _difference_maps(self, inputs: dict) -> dict:
        """(patch, channel) -> D~ for ``{patch: (x (1, 1, X, Y, Z), channel)}``: the generator on up to
        ``qc.batch_size`` patches per forward."""
        keys = list(inputs)
        step = int(self.settings.batch_size)
        out = {}
        for k in range(0, len(keys), step):
            chunk = keys[k:k + step]
            x = torch.cat([inputs[i][0] for i in chunk], 0).to(self.generator.device)
            d = self.generator.run(x, [inputs[i][1] for i in chunk]).cpu()
            for j, i in enumerate(chunk):
                out[(i, inputs[i][1])] = d[j:j + 1]
        return out

    def _judge(self, cands: dict) -> dict:
        """Patch index -> :class:`~freetumor.quality.QCDecision`, for candidates ``(lab, x, x', fake, organ
        class)``: one batched segmentor forward (per ``qc.batch_size``) for all of them, then each patch's checks."""
        if self.qc is None and not self.cheap_checks:
            return {i: QCDecision(True, {}) for i in cands}
        lo, hi = self.cfg.data.hu_window
        spacing = tuple(self.cfg.data.spacing)
        keys = list(cands)
        preds = [None] * len(keys)
        if self.qc is not None and self.qc.model is not None and keys:
            preds = self.qc.predict_in_patches([cands[i][2] for i in keys], [cands[i][3] for i in keys])
        verdicts = {}
        for i, pred in zip(keys, preds):
            lab, x, xf, fake, ocls = cands[i]
            host = (lab == ocls) | (lab == self.tumour_of[ocls])
            verdicts[i] = judge_patch(x[0, 0].numpy(), xf[0, 0].numpy(), fake, host, self.organ_by_class[ocls],
                                      self.settings, (lo, hi), spacing, pred)
        return verdicts

    def _profile_tumour(self, d: dict, lab: np.ndarray, rng: np.random.Generator):
        """(x' as a (1, 1, X, Y, Z) tensor in [0, 1], the lesion's label, its organ class) for one lesion
        drawn from the profile and rendered in HU on the patch's grid; ``None`` without room."""
        ocls = self.classes[self.profile.organ][0]
        allowed = within_scan(lab == ocls, d, self.margin)
        drawn = profile_patch(self.profile, d["image"], allowed, self.cfg.data.hu_window, rng)
        if drawn is None:
            return None
        x01, fake, _weight = drawn
        return torch.from_numpy(x01)[None, None], fake, ocls

    def _pasted_tumour(self, d: dict, lab: np.ndarray, rng: np.random.Generator):
        """(x', label, organ class) with one real labelled lesion pasted into an organ of the patch that
        has a lesion bank (:func:`~freetumor.copy_paste.paste_lesion`, 1-voxel feather, kept 2 voxels
        from padding); ``None`` without room."""
        organs = [(c, t) for _n, (c, t) in self.classes.items() if t in self.banks and (lab == c).any()]
        if not organs:
            return None
        ocls, tcls = organs[int(rng.integers(len(organs)))]
        usable = usable_region(d, lab.shape, self.margin)
        allowed = host_region(lab, ocls, [t for _c, t in self.classes.values()], keep_away_vox=2, valid=usable)
        if not allowed.any():
            return None
        img = np.asarray(d["image"], np.float32)[0]
        r = paste_lesion(img, lab, allowed, self.banks[tcls], rng, tcls, feather_vox=1.0)
        if r is None:
            return None
        new_img, new_lab, _info = r
        return torch.from_numpy(np.ascontiguousarray(new_img, np.float32))[None, None], new_lab == tcls, ocls


def lesion_banks(cfg: Config, entries: list[dict]) -> "dict[int, LesionBank]":
    """Tumour class -> :class:`~freetumor.copy_paste.LesionBank` of the real lesions of labelled
    ``entries`` (each read once, preprocessed as for validation: the training grid and window)."""
    tf = val_transforms(cfg)
    pairs, seen = [], set()
    for e in entries:
        if e["label"] in seen:
            continue
        seen.add(e["label"])
        d = tf({"image": e["image"], "label": e["label"]})
        pairs.append((np.asarray(d["image"], np.float32)[0], np.asarray(d["label"])[0]))
    return {int(t): LesionBank.from_arrays(pairs, int(t), margin_vox=2, min_voxels=8)
            for _n, (_c, t) in cfg.organ_classes.items()}


def profile_patch(profile: LesionProfile, img, allowed: np.ndarray, window, rng: np.random.Generator):
    """One lesion drawn from ``profile`` and rendered in HU on a windowed patch ``img`` ``(1, X, Y, Z)``
    (its ``.affine`` gives the grid) inside ``allowed``.

    Returns ``(x01, label, occupancy)``: the patch with the lesion in [0, 1] (voxels the lesion does
    not reach keep their exact values), the lesion's label (bool) and its blurred occupancy f (zero
    outside ``allowed``); ``None`` without room.
    """
    if not allowed.any():
        return None
    affine = np.asarray(getattr(img, "affine", np.eye(4)), np.float64)
    grid = Grid.from_affine(affine, allowed.shape)
    lo, hi = window
    hu = np.asarray(img, np.float32)[0] * np.float32(hi - lo) + np.float32(lo)
    r, _params, _draws = draw_lesion(profile, hu, allowed, grid, rng)
    if r is None or not r.label.any():
        return None
    fake = np.zeros(allowed.shape, bool)
    fake[r.box] = r.label
    occupancy = np.zeros(allowed.shape, np.float32)
    occupancy[r.box] = r.occupancy
    x01 = np.asarray(img, np.float32)[0].copy()
    reach = r.occupancy > 0
    x01[r.box][reach] = np.clip((r.values[reach] - lo) / (hi - lo), 0.0, 1.0)
    return x01, fake, occupancy


class PrepareProfileTumourd(SeededTransform):
    """Draw one lesion from a lesion profile in a training patch, for Stage 1 with ``synth.lesions: profile``.

    Like :class:`PrepareFakeTumourd`, but the lesion is the profile's whole render
    (:func:`profile_patch`, in the patch's organ voxels) and the learned map is a residual on it:
    x' = x_profile + W * G(x_profile). Adds ``profile`` (x_profile, ``(1, X, Y, Z)``; the image
    itself without a lesion), ``fake`` (the lesion's label), ``weight`` (W: the occupancy f),
    ``channel`` (0, or -1 without a lesion) and ``organ_class``.
    """

    def __init__(self, cfg: Config, profile, min_voxels: int = 64):
        MapTransform.__init__(self, keys=("image", "label"))
        self.profile = load_profile(profile, cfg.organ)
        self.organ_class = cfg.organ_classes[self.profile.organ][0]
        self.window = tuple(cfg.data.hu_window)
        self.min_voxels = int(min_voxels)
        self.margin = int(cfg.data.synth_margin)

    def __call__(self, data):
        d = dict(data)
        rng = self.next_rng()
        img = d["image"]
        lab = np.asarray(d["label"])[0]
        allowed = within_scan(lab == self.organ_class, d, self.margin)
        drawn = profile_patch(self.profile, img, allowed, self.window, rng) \
            if np.count_nonzero(allowed) >= self.min_voxels else None
        if drawn is None:
            x01, fake = np.asarray(img, np.float32)[0], np.zeros(lab.shape, bool)
            weight = np.zeros(lab.shape, np.float32)
            channel, organ_class = -1, -1
        else:
            x01, fake, weight = drawn
            channel, organ_class = 0, self.organ_class
        d["profile"] = torch.from_numpy(np.ascontiguousarray(x01, np.float32))[None]
        d["fake"] = torch.from_numpy(fake.astype(np.float32))[None]
        d["weight"] = torch.from_numpy(weight)[None]
        d["channel"] = torch.tensor(channel)
        d["organ_class"] = torch.tensor(organ_class)
        return d
