"""``freetumor lesions fit``: measure every real lesion of a labelled datalist and write its profile.

Each lesion is cropped and resampled to 1 mm isotropic voxels exactly as the realism scores do
(:func:`freetumor.lesions.features.crops_from_datalist`, a margin of
:data:`~freetumor.lesions.measure.FIT_MARGIN_MM`), then measured
(:func:`freetumor.lesions.measure.measure_crop`, where each measurement is described; definitions
in :data:`freetumor.lesions.profile.PROFILE_FEATURES`); the profile holds one row per lesion.

Example:
    >>> import numpy as np
    >>> from freetumor.lesions.features import LesionCrop
    >>> z, y, x = np.mgrid[-12:13, -12:13, -12:13]
    >>> ball = x**2 + y**2 + z**2 <= 36
    >>> img = np.where(ball, 0.0, -850.0).astype(np.float32)
    >>> crops = [LesionCrop("real", "toy", 1, img, ball, (1.0, 1.0, 1.0), {"volume_ml": ball.sum() / 1000})]
    >>> fit_profile(crops, "lung").summary["contrast_hu"]["median"]
    850.0
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from .. import __version__
from ..data import checked_labelled_cases, datalist_label_map
from ..errors import InputError
from ..io import case_name
from ..labels import get_label_map
from ..organs import get_organ
from .attachment import measure_attachment
from .features import LesionCrop, crops_from_datalist
from .measure import FIT_MARGIN_MM, MIN_VOXELS, measure_crop
from .profile import FEATURE_ORDER, OPTIONAL_ORDER, LesionProfile


def fit_profile(crops: list[LesionCrop], organ: str, source: dict | None = None, name: str = "") -> LesionProfile:
    """The fitted profile of measured lesion crops (one row per lesion); for lung lesions also their
    attachment shares (:func:`freetumor.lesions.attachment.measure_attachment`, on the same crops)."""
    rows = []
    for crop in crops:
        m = measure_crop(crop)
        rows.append([m[f] for f in FEATURE_ORDER + OPTIONAL_ORDER])
    profile = LesionProfile.from_rows(organ, rows, source or {}, name, OPTIONAL_ORDER)
    if profile.organ == "lung":
        att = measure_attachment(crops)
        profile = profile.with_attachment({**att, "measured_on": "the profile's own lesions (freetumor.lesions.attachment)"})
    return profile


def fit_datalist(datalist: str | os.PathLike, organ: str, out: str | os.PathLike, label_map=None,
                 name: str | None = None, *, skip_bad_cases: bool = False, log=None,
                 progress=None) -> LesionProfile:
    """``freetumor lesions fit``: check every labelled case, measure, fit, write ``out`` (all or nothing).

    ``label_map`` defaults to the datalist's, then the organ's default. ``progress`` (optional, e.g. a
    :class:`~freetumor.progress.Progress`) is called with each phase's text; its ``log``, when it has
    one, with each case read.

    Raises:
        CaseErrors: one line per bad case (:func:`~freetumor.data.check_cases`), unless
            ``skip_bad_cases``, which leaves them out and says how many through ``log``.
        InputError: the datalist is missing or has no lesion of the organ's tumour id.
    """
    org = get_organ(organ)
    lm = get_label_map(label_map if label_map is not None else datalist_label_map(datalist), org.name)
    say = progress or (lambda text: None)
    say(f"checking the cases of {datalist}")
    entries = checked_labelled_cases(datalist, lm, skip_bad=skip_bad_cases, log=log)
    say(f"measuring {org.name} lesions in {len(entries)} case(s)")
    crops = crops_from_datalist(entries, org.name, lm, margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS,
                                progress=getattr(progress, "log", None))
    if not crops:
        raise InputError(datalist, f"no {org.name} lesions (tumour label of at least {MIN_VOXELS} voxels) "
                                   "in its labelled cases")
    source = {
        "datalist": str(datalist),
        "label_map": None if label_map is None else str(label_map),
        "cases": len({c.case for c in crops}),
        "lesions": len(crops),
        "measured_at_mm": 1.0,
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "freetumor_version": __version__,
    }
    say(f"fitting the profile to {len(crops)} lesion(s)")
    try:
        profile = fit_profile(crops, org.name, source, name or f"{org.name}-fitted")
    except InputError as exc:  # a lesion that cannot be measured: name its label file, not only its case
        labels = {case_name(e["image"]): e["label"] for e in entries}
        if exc.path not in labels:
            raise
        raise InputError(labels[exc.path], exc.problem) from None
    profile.save(out)  # atomic: a temporary file beside it, then renamed
    return profile
