"""The organ registry: everything that differs between tumour types is data here.

Values follow the FreeTumor method description (``METHOD.md`` §2-§4): HU window,
target spacing, ROI, the SynTumor size classes with their base radii (voxels at
the organ's target spacing), the class probabilities FreeTumor draws from, and
the intensity sign (abdominal tumours are hypodense: the difference map is
subtracted; lung lesions are hyperdense: it is added).

Example:
    >>> liver = get_organ("liver")
    >>> liver.hu_window, liver.sign
    ((-175.0, 250.0), -1)
    >>> liver.base_radius_mm("tiny")            # 4 voxels at 1.5 mm
    (6.0, 6.0, 6.0)
    >>> get_organ("lung").base_radius_mm("small")  # 8 voxels at 1.25 x 1.25 x 5 mm
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
        radius_vox: base radius r in voxels at the organ's target spacing; each
            semi-axis is drawn from [0.75 r, 1.25 r].
        sigma: range of the smooth deformation's displacement std (voxels).
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


@dataclass(frozen=True)
class Organ:
    """One tumour type and the organ that hosts it.

    Attributes:
        name: registry key (``liver``, ``pancreas``, ``kidney``, ``lung``, ``covid``).
        region: ``abdomen`` or ``chest``.
        hu_window: (a_min, a_max) HU window scaled to [0, 1] for the networks.
        target_spacing: training spacing (mm) along R-L, A-P, S-I.
        roi_size: training patch size in voxels at that spacing.
        size_probs: probability of each size class when the size is ``mix``.
        sign: -1 subtracts the difference map (hypodense), +1 adds it (hyperdense).
        generator_channel: output channel of the abdominal generator for this organ.
        organ_hu: plausible range of the organ's mean HU (a sanity check on input).
        tumour_label: FreeTumor's own label convention ids (organ, tumour).
        tumour_contrast_hu: plausible range of a tumour's mean HU minus that of the
            surrounding organ (quality control's contrast check).
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
    description: str = field(default="", compare=False)

    @property
    def window_width(self) -> float:
        return float(self.hu_window[1] - self.hu_window[0])

    @property
    def size_classes(self) -> tuple[str, ...]:
        return tuple(k for k, p in self.size_probs.items() if p > 0)

    def base_radius_mm(self, size: str) -> tuple[float, float, float]:
        """Base radius of a size class in mm along (x, y, z), at the organ's target spacing."""
        r = _size_class(size).radius_vox
        return tuple(float(r * s) for s in self.target_spacing)  # type: ignore[return-value]


def _size_class(size: str) -> SizeClass:
    try:
        return SIZE_CLASSES[size]
    except KeyError:
        raise ConfigError(f"unknown size class {size!r}; choose one of {', '.join(SIZE_CHOICES)}") from None


_ABDOMEN = dict(
    region="abdomen",
    hu_window=(-175.0, 250.0),
    target_spacing=(1.5, 1.5, 1.5),
    roi_size=(96, 96, 96),
    size_probs=MappingProxyType({"tiny": 0.25, "small": 0.25, "medium": 0.25, "large": 0.25}),
    sign=-1,
)
_CHEST = dict(
    region="chest",
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
