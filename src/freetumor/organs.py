"""The organ registry: everything that differs between tumour types is data here.

Values follow the FreeTumor method description (``METHOD.md`` §2-§4): HU window,
target spacing, ROI, the SynTumor size classes with their base radii, the class
probabilities FreeTumor draws from, and the intensity sign (abdominal tumours are
hypodense: the difference map is subtracted; lung lesions are hyperdense: it is added).

Tumour shapes follow one of two conventions (:data:`SHAPE_CONVENTIONS`):

* ``physical`` (default): radii, deformation and blur are in shape voxels of one
  physical length for all three axes, the organ's in-plane target spacing
  (1.5 mm abdomen, 1.25 mm chest), so tumours are isotropic in millimetres
  whatever the scan. Size classes and ``mix`` are the organ's :attr:`Organ.sizes`
  and :attr:`Organ.mix` (the chest's are fitted to real LIDC-IDRI nodules).
* ``released``: the released code's, for replication only: radii in voxels of the
  target spacing per axis (so chest lesions are 4x longer head-foot than across),
  the SynTumor classes and FreeTumor's class probabilities (:attr:`Organ.size_probs`).

Example:
    >>> liver = get_organ("liver")
    >>> liver.hu_window, liver.sign
    ((-175.0, 250.0), -1)
    >>> liver.base_radius_mm("tiny")            # 4 voxels at 1.5 mm
    (6.0, 6.0, 6.0)
    >>> get_organ("lung").base_radius_mm("small")  # 3.2 shape voxels of 1.25 mm, on every axis
    (4.0, 4.0, 4.0)
    >>> get_organ("lung").base_radius_mm("small", "released")  # 8 voxels at 1.25 x 1.25 x 5 mm
    (10.0, 10.0, 40.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .errors import ConfigError


@dataclass(frozen=True)
class SizeClass:
    """A SynTumor size class.

    Attributes:
        name: ``tiny``, ``small``, ``medium`` or ``large``.
        radius_vox: base radius r in shape voxels (:meth:`Organ.voxel_mm`); each
            semi-axis is drawn from [0.75 r, 1.25 r].
        sigma: range of the smooth deformation's displacement std (shape voxels).
        sigma_integer: the released code draws sigma as an integer for all but ``tiny``.
    """

    name: str
    radius_vox: float
    sigma: tuple[float, float]
    sigma_integer: bool


SIZE_CLASSES: Mapping[str, SizeClass] = MappingProxyType(
    {
        "tiny": SizeClass("tiny", 4, (0.5, 1.0), False),
        "small": SizeClass("small", 8, (1, 2), True),
        "medium": SizeClass("medium", 16, (3, 6), True),
        "large": SizeClass("large", 32, (5, 10), True),
    }
)

SIZE_CHOICES = ("tiny", "small", "medium", "large", "mix")

SHAPE_CONVENTIONS = ("physical", "released")
DEFAULT_SHAPE_CONVENTION = "physical"


def check_shape_convention(convention: str) -> str:
    """``convention`` if it is one of :data:`SHAPE_CONVENTIONS`, else a one-line :class:`ConfigError`."""
    if convention not in SHAPE_CONVENTIONS:
        raise ConfigError(f"unknown shape convention {convention!r}; choose one of {', '.join(SHAPE_CONVENTIONS)}")
    return convention



@dataclass(frozen=True)
class Organ:
    """One tumour type and the organ that hosts it.

    Attributes:
        name: registry key (``liver``, ``pancreas``, ``kidney``, ``lung``, ``covid``).
        region: ``abdomen`` or ``chest``.
        hu_window: (a_min, a_max) HU window scaled to [0, 1] for the networks.
        target_spacing: training spacing (mm) along R-L, A-P, S-I.
        roi_size: training patch size in voxels at that spacing.
        sign: -1 subtracts the difference map (hypodense), +1 adds it (hyperdense).
        generator_channel: output channel of the abdominal generator for this organ.
        organ_hu: plausible range of the organ's mean HU (a sanity check on input).
        tumour_label: FreeTumor's own label convention ids (organ, tumour).
        tumour_contrast_hu: plausible range of a tumour's mean HU minus that of the
            surrounding organ (quality control's contrast check).
        size_probs: FreeTumor's class probabilities for ``mix`` (the ``released`` convention,
            and the ``physical`` one when ``mix`` is ``None``).
        sizes: the size classes of the ``physical`` convention (``released``: :data:`SIZE_CLASSES`).
        mix: the class probabilities of ``mix`` in the ``physical`` convention (``None``: ``size_probs``).
    """

    name: str
    region: str
    hu_window: tuple[float, float]
    target_spacing: tuple[float, float, float]
    roi_size: tuple[int, int, int]
    size_probs: Mapping[str, float]
    sign: int
    generator_channel: int
    organ_hu: tuple[float, float]
    freetumor_ids: tuple[int, int]
    tumour_contrast_hu: tuple[float, float] = (-300.0, -5.0)
    sizes: Mapping[str, SizeClass] = field(default_factory=lambda: SIZE_CLASSES)
    mix: Mapping[str, float] | None = None
    description: str = field(default="", compare=False)

    @property
    def window_width(self) -> float:
        return float(self.hu_window[1] - self.hu_window[0])

    @property
    def size_classes(self) -> tuple[str, ...]:
        """The classes ``mix`` draws in the default (physical) convention."""
        return tuple(k for k, p in self.mix_probs().items() if p > 0)

    def voxel_mm(self, convention: str = DEFAULT_SHAPE_CONVENTION) -> tuple[float, float, float]:
        """Millimetres per shape voxel along (x, y, z), the unit of radii, deformation and blur:
        the in-plane target spacing on every axis (``physical``), or the target spacing (``released``)."""
        if check_shape_convention(convention) == "released":
            return tuple(float(s) for s in self.target_spacing)  # type: ignore[return-value]
        return (float(self.target_spacing[0]),) * 3  # type: ignore[return-value]

    def size_table(self, convention: str = DEFAULT_SHAPE_CONVENTION) -> Mapping[str, SizeClass]:
        """The size classes of a convention."""
        return self.sizes if check_shape_convention(convention) == "physical" else SIZE_CLASSES

    def mix_probs(self, convention: str = DEFAULT_SHAPE_CONVENTION) -> Mapping[str, float]:
        """The class probabilities ``mix`` draws with in a convention."""
        if check_shape_convention(convention) == "physical" and self.mix is not None:
            return self.mix
        return self.size_probs

    def size_class(self, size: str, convention: str = DEFAULT_SHAPE_CONVENTION) -> SizeClass:
        """One size class of a convention; a one-line :class:`ConfigError` for an unknown name."""
        try:
            return self.size_table(convention)[size]
        except KeyError:
            raise ConfigError(f"unknown size class {size!r}; choose one of {', '.join(SIZE_CHOICES)}") from None

    def base_radius_mm(self, size: str, convention: str = DEFAULT_SHAPE_CONVENTION) -> tuple[float, float, float]:
        """Base radius of a size class in mm along (x, y, z)."""
        r = self.size_class(size, convention).radius_vox
        return tuple(float(r * s) for s in self.voxel_mm(convention))  # type: ignore[return-value]


_ABDOMEN = dict(
    region="abdomen",
    hu_window=(-175.0, 250.0),
    target_spacing=(1.5, 1.5, 1.5),
    roi_size=(96, 96, 96),
    size_probs=MappingProxyType({"tiny": 0.25, "small": 0.25, "medium": 0.25, "large": 0.25}),
    sign=-1,
)
# Chest size classes of the physical convention (lung and COVID-19), fitted to real lung nodules:
# the equivalent-sphere diameter (6 V / pi)^(1/3), V = voxel count x voxel volume, of the 735
# LIDC-IDRI nodule masks in shared/datasets/lidc_nodule_vois/labels (patients 0001-0699) has quantiles (mm)
#   1%: 4.33  5%: 4.82  10%: 5.24  25%: 6.22  50%: 7.88  75%: 11.98  90%: 18.18  95%: 21.66  99%: 27.57
# (min 3.82, max 33.45, mean 9.99); measured with
#   python -c "import glob, numpy as np, nibabel as nib; d = [(6 / np.pi * (np.asarray(i.dataobj) > 0).sum()
#       * np.prod(i.header.get_zooms()[:3])) ** (1 / 3) for i in map(nib.load,
#       glob.glob('shared/datasets/lidc_nodule_vois/labels/*.nii.gz'))]; print(np.percentile(d, [1, 5, 10, 25,
#       50, 75, 90, 95, 99]))"
# (tests/test_shapes.py re-measures them when the data is there). Radii are shape voxels of 1.25 mm
# (2.75, 4, 7 and 11 mm); the deformation std keeps the SynTumor classes' sigma / radius ratio. The
# radii and the lung's mix were chosen by drawing 300 unclipped lesions per class on a 0.7 mm grid and
# searching the mix weights in steps of 0.05 for the least squared log error at the 5-95% quantiles:
# the synthetic equivalent diameters then have quantiles 4.88, 5.21, 6.26, 7.88, 12.07, 17.10, 21.57 mm
# at 5, 10, 25, 50, 75, 90, 95% (range about 4-29 mm; clipping to the lung makes some smaller).
LIDC_NODULE_DIAMETER_MM: Mapping[int, float] = MappingProxyType(
    {1: 4.33, 5: 4.82, 10: 5.24, 25: 6.22, 50: 7.88, 75: 11.98, 90: 18.18, 95: 21.66, 99: 27.57})
CHEST_SIZES: Mapping[str, SizeClass] = MappingProxyType(
    {
        "tiny": SizeClass("tiny", 2.2, (0.275, 0.55), False),
        "small": SizeClass("small", 3.2, (0.4, 0.8), False),
        "medium": SizeClass("medium", 5.6, (1.05, 2.1), False),
        "large": SizeClass("large", 8.8, (1.375, 2.75), False),
    }
)
_CHEST = dict(
    region="chest",
    sizes=CHEST_SIZES,
    hu_window=(-1000.0, 500.0),
    target_spacing=(1.25, 1.25, 5.0),
    roi_size=(192, 192, 32),
    sign=+1,
    generator_channel=0,
    organ_hu=(-1000.0, -300.0),
    freetumor_ids=(1, 2),
)

ORGANS: Mapping[str, Organ] = MappingProxyType(
    {
        "liver": Organ(name="liver", generator_channel=0, organ_hu=(-50.0, 250.0), freetumor_ids=(1, 2),
                       description="liver tumours (hypodense)", **_ABDOMEN),
        "pancreas": Organ(name="pancreas", generator_channel=1, organ_hu=(-80.0, 250.0), freetumor_ids=(3, 4),
                          description="pancreatic tumours (hypodense)", **_ABDOMEN),
        "kidney": Organ(name="kidney", generator_channel=2, organ_hu=(-50.0, 350.0), freetumor_ids=(5, 6),
                        description="kidney tumours (hypodense)", **_ABDOMEN),
        "lung": Organ(name="lung", size_probs=MappingProxyType({"tiny": 0.5, "small": 0.5}),
                      mix=MappingProxyType({"tiny": 0.25, "small": 0.45, "medium": 0.2, "large": 0.1}),
                      tumour_contrast_hu=(50.0, 1300.0),
                      description="lung tumours (hyperdense)", **_CHEST),
        "covid": Organ(name="covid", size_probs=MappingProxyType({"tiny": 0.35, "small": 0.35, "medium": 0.30}),
                       tumour_contrast_hu=(30.0, 1000.0),
                       description="COVID-19 lesions (hyperdense)", **_CHEST),
    }
)

ORGAN_NAMES = tuple(ORGANS)


def get_organ(name: str | Organ) -> Organ:
    """Look an organ up by name; a :class:`ConfigError` lists the valid names."""
    if isinstance(name, Organ):
        return name
    try:
        return ORGANS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown organ {name!r}; choose one of {', '.join(ORGAN_NAMES)}") from None
