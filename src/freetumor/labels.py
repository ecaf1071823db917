"""Label-map presets: which label values mean which organ and tumour.

A :class:`LabelMap` says, for each tumour type it supports, which label ids make
up the host organ and which id a tumour in that organ gets. Presets:

* ``abdomen7`` — FreeTumor's abdomen convention: 0 bg, 1 liver, 2 liver tumour,
  3 pancreas, 4 pancreas tumour, 5 kidney, 6 kidney tumour.
* ``chest3`` — 0 bg, 1 lung, 2 lesion (lung tumour or COVID-19 lesion).

These two are FreeTumor's own conventions, and this module is the one place that states them
(:data:`CONVENTIONS`, :func:`convention_names`): the training classes of the ``abdomen7`` and
``chest3`` tasks (:mod:`freetumor.tasks`), the catalog's target ids (:mod:`freetumor.data.catalog`),
the nnU-Net export's label names (:mod:`freetumor.export`) and the organ masks
(:mod:`freetumor.organ_masks`) all read them from here.
* ``totalseg`` — TotalSegmentator ``total`` task ids: liver 5, pancreas 7,
  kidneys 2 and 3, lung lobes 10-14. TotalSegmentator has no tumour class, so new
  tumours get ids above its 117 classes: 201 liver tumour, 202 pancreas tumour,
  203 kidney tumour, 204 lung tumour / COVID-19 lesion.

A user map is a JSON file::

    {"name": "my-site",
     "organs": {"liver": {"organ": [1], "tumor": 2}, "kidney": {"organ": [5, 6], "tumor": 9}},
     "labels": [0, 1, 2, 5, 6, 9]}

``labels`` (optional) lists every value a label file may hold; without it the
known values are 0 plus all ids named under ``organs``.

``"organ"`` may be left out (or ``[]``) for lesion-only data such as nodule crops,
whose labels hold the tumour and nothing else::

    {"name": "nodules", "organs": {"lung": {"tumor": 1}}, "labels": [0, 1]}

Such a map answers tumour lookups (:meth:`LabelMap.tumour_id`, realism scores,
reader studies); whatever needs the organ itself (synthesis into it, organ Dice)
stops with a one-line :class:`~freetumor.errors.ConfigError` naming the map.

Example:
    >>> import numpy as np
    >>> lm = get_label_map("totalseg")
    >>> lm.organ_ids("kidney"), lm.tumour_id("kidney")
    ((2, 3), 203)
    >>> lab = np.array([0, 2, 3, 5, 7])
    >>> lm.organ_mask(lab, "kidney").tolist()
    [False, True, True, False, False]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .errors import ConfigError, InputError
from .structured import read_json
from .organs import ORGAN_NAMES, get_organ


@dataclass(frozen=True)
class LabelMap:
    """Organ and tumour ids of one label convention."""

    name: str
    organs: Mapping[str, tuple[tuple[int, ...], int]]
    known: frozenset[int]
    source: str | None = None

    def supports(self, organ: str) -> bool:
        return get_organ(organ).name in self.organs

    def _entry(self, organ: str) -> tuple[tuple[int, ...], int]:
        name = get_organ(organ).name
        try:
            return self.organs[name]
        except KeyError:
            have = ", ".join(self.organs) or "none"
            raise ConfigError(f"label map {self.name!r} has no {name!r} (it defines: {have})") from None

    def has_organ_ids(self, organ: str) -> bool:
        """Whether the map names the organ's own label ids (not only its tumour id)."""
        return bool(self._entry(organ)[0])

    def organ_ids(self, organ: str) -> tuple[int, ...]:
        """The organ's label ids. Raises :class:`ConfigError` for a tumour-only map."""
        ids = self._entry(organ)[0]
        if not ids:
            name = get_organ(organ).name
            where = f" ({self.source})" if self.source else ""
            raise ConfigError(f"label map {self.name!r}{where} has no organ ids for {name!r}, only its tumour id "
                              f"{self.tumour_id(name)}; add \"organ\": [ids] to it to use the organ")
        return ids

    def tumour_id(self, organ: str) -> int:
        return self._entry(organ)[1]

    def organ_mask(self, label: np.ndarray, organ: str) -> np.ndarray:
        """Voxels of the host organ (real tumour voxels excluded)."""
        ids = self.organ_ids(organ)
        mask = label == ids[0]
        for i in ids[1:]:
            mask |= label == i
        return mask

    def tumour_mask(self, label: np.ndarray, organ: str) -> np.ndarray:
        """Voxels already labelled as a tumour of this organ."""
        return label == self.tumour_id(organ)

    def unknown_values(self, values: Iterable[int]) -> list[int]:
        """Values not in this convention (sorted)."""
        return sorted(int(v) for v in values if int(v) not in self.known)


def check_integer_labels(label: np.ndarray, name: str) -> None:
    """Refuse a label map (or prediction) whose values are not whole numbers (one-line :class:`InputError`).

    A float array of whole numbers is accepted (tools write labels as float); 1.5 or NaN is not a
    class, and counting it as one would score a probability map as a segmentation.

    Example:
        >>> check_integer_labels(np.array([0.0, 2.0]), "a.nii.gz")
        >>> check_integer_labels(np.array([0.0, 1.5]), "a.nii.gz")
        Traceback (most recent call last):
        ...
        freetumor.errors.InputError: a.nii.gz: label holds non-integer values (e.g. 1.5)
    """
    if np.issubdtype(label.dtype, np.floating):
        bad = ~np.isfinite(label) | (label != np.rint(label))
        if bad.any():
            raise InputError(name, f"label holds non-integer values (e.g. {float(label[bad].flat[0]):g})")


def label_values(label: np.ndarray) -> list[int]:
    """Distinct values of an integer label array (fast path for small non-negative ids).

    Example:
        >>> label_values(np.array([[0, 5], [5, 2]], np.uint8))
        [0, 2, 5]
    """
    flat = np.ravel(label, order="K")
    if np.issubdtype(label.dtype, np.integer) and flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo >= 0 and hi < 1 << 16:
            return [int(v) for v in np.flatnonzero(np.bincount(flat, minlength=hi + 1))]
    return [int(v) for v in np.unique(flat)]


#: FreeTumor's own label conventions: per host organ, (organ id, tumour id). ``chest3``'s lesion id
#: serves the lung tumour and the COVID-19 lesion alike (the ``covid`` organ of the preset is the lung).
CONVENTIONS: Mapping[str, Mapping[str, tuple[int, int]]] = {
    "abdomen7": {"liver": (1, 2), "pancreas": (3, 4), "kidney": (5, 6)},
    "chest3": {"lung": (1, 2)},
}
#: The tumour class's name in ``chest3`` (a lung tumour or a COVID-19 lesion).
CHEST3_LESION = "lesion"


def convention_names(name: str) -> dict[int, str]:
    """Id -> name of every label of one of FreeTumor's own conventions (:data:`CONVENTIONS`).

    Example:
        >>> convention_names("abdomen7")
        {0: 'background', 1: 'liver', 2: 'liver tumour', 3: 'pancreas', 4: 'pancreas tumour', 5: 'kidney', 6: 'kidney tumour'}
        >>> convention_names("chest3")
        {0: 'background', 1: 'lung', 2: 'lesion'}
    """
    if name not in CONVENTIONS:
        raise ConfigError(f"unknown convention {name!r}; choose one of {', '.join(CONVENTIONS)}")
    out = {0: "background"}
    for organ, (oid, tid) in CONVENTIONS[name].items():
        out[oid] = organ
        out[tid] = CHEST3_LESION if name == "chest3" else f"{organ} tumour"
    return dict(sorted(out.items()))


def _preset(name: str, organs: dict, known: Iterable[int]) -> LabelMap:
    return LabelMap(name, {k: (tuple(v[0]), int(v[1])) for k, v in organs.items()}, frozenset(known))


PRESETS: Mapping[str, LabelMap] = {
    "abdomen7": _preset(
        "abdomen7",
        {o: ((oid,), tid) for o, (oid, tid) in CONVENTIONS["abdomen7"].items()},
        convention_names("abdomen7"),
    ),
    # the lung tumour and the COVID-19 lesion share chest3's lung and lesion ids
    "chest3": _preset("chest3", {o: ((CONVENTIONS["chest3"]["lung"][0],), CONVENTIONS["chest3"]["lung"][1])
                                 for o in ("lung", "covid")}, convention_names("chest3")),
    "totalseg": _preset(
        "totalseg",
        {
            "liver": ((5,), 201),
            "pancreas": ((7,), 202),
            "kidney": ((2, 3), 203),
            "lung": ((10, 11, 12, 13, 14), 204),
            "covid": ((10, 11, 12, 13, 14), 204),
        },
        list(range(118)) + [201, 202, 203, 204],
    ),
}

PRESET_NAMES = tuple(PRESETS)


def default_label_map(organ: str) -> str:
    """The FreeTumor convention for an organ: ``abdomen7`` or ``chest3``."""
    return "chest3" if get_organ(organ).region == "chest" else "abdomen7"


def get_label_map(spec: str | os.PathLike | LabelMap | None, organ: str | None = None) -> LabelMap:
    """A preset by name, a user JSON file by path, or the organ's default when ``None``."""
    if isinstance(spec, LabelMap):
        return spec
    if spec is None:
        if organ is None:
            raise ConfigError("no label map given and no organ to choose a default from")
        spec = default_label_map(organ)
    key = str(spec)
    if key in PRESETS:
        return PRESETS[key]
    if key.lower().endswith(".json") or Path(key).exists():
        return load_label_map(key)
    raise ConfigError(f"unknown label map {key!r}; use one of {', '.join(PRESET_NAMES)} or a .json file")


def _as_id(path: str, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise InputError(path, f"{what} must be an integer label id in 0..65535, got {value!r}")
    return int(value)


def load_label_map(path: str | os.PathLike) -> LabelMap:
    """Read a user label map from JSON (format in the module docstring)."""
    p = str(path)
    if not Path(p).exists():
        raise InputError(p, "label map file not found")
    data = read_json(p, "label map")  # size and depth bounded before parsing
    if not isinstance(data, dict) or not isinstance(data.get("organs"), dict) or not data["organs"]:
        raise InputError(p, 'label map needs an "organs" object, e.g. {"liver": {"organ": [1], "tumor": 2}}')
    organs: dict[str, tuple[tuple[int, ...], int]] = {}
    for name, entry in data["organs"].items():
        if name not in ORGAN_NAMES:
            raise InputError(p, f"unknown organ {name!r} in label map; known: {', '.join(ORGAN_NAMES)}")
        if not isinstance(entry, dict) or "tumor" not in entry:
            raise InputError(p, f'organ {name!r} needs "tumor" (one id) and, to synthesise into it, '
                                f'"organ" (list of ids)')
        raw = entry.get("organ")
        ids = [] if raw is None else raw if isinstance(raw, list) else [raw]
        organ_ids = tuple(_as_id(p, i, f"{name} organ id") for i in ids)
        tumour = _as_id(p, entry["tumor"], f"{name} tumor id")
        if tumour in organ_ids or tumour == 0 or 0 in organ_ids:
            raise InputError(p, f"organ {name!r}: ids must be non-zero and the tumour id distinct from organ ids")
        organs[name] = (organ_ids, tumour)
    if "labels" in data:
        if not isinstance(data["labels"], list):
            raise InputError(p, '"labels" must be a list of label ids')
        known = {_as_id(p, v, "label value") for v in data["labels"]} | {0}
    else:
        known = {0}
    for ids, tumour in organs.values():
        known |= set(ids) | {tumour}
    return LabelMap(str(data.get("name") or Path(p).stem), organs, frozenset(known), source=p)
