"""Evaluation of tumour segmentation, as in the FreeTumor paper.

* :mod:`.metrics`: Dice, normalised surface Dice (NSD, two published definitions), HD95 and
  the per-case tumour / organ summary :func:`case_metrics`.
* :mod:`.lesions`: connected lesions, their sizes, lesion-wise matching and detection rates
  of (early, < 20 mm) tumours.
* :mod:`.stats`: paired t / Wilcoxon and exact McNemar tests, bootstrap and Wilson intervals,
  k-fold summaries, ROC AUC with a bootstrap interval.
* :mod:`.masks`: the mask and spacing checks the metrics and lesions share.

These need only numpy and scipy (no torch or MONAI) and are re-exported here. The commands
have their own modules: :mod:`.evaluate` (``freetumor evaluate``), :mod:`.compare`
(``freetumor compare``), :mod:`.tables` (the per-case table and box plots both write) and
:mod:`.realism` (``freetumor realism``, a machine Visual Turing Test).

Example:
    >>> import numpy as np
    >>> from freetumor.evaluation import dice, nsd, wilson_ci
    >>> gt = np.zeros((16, 16, 8), bool); gt[4:12, 4:12, 2:6] = True
    >>> pred = np.roll(gt, 1, axis=1)
    >>> round(dice(pred, gt), 3), round(nsd(pred, gt, (0.8, 0.8, 2.5), tolerance_mm=1.0), 3)
    (0.875, 1.0)
"""

from __future__ import annotations

from .lesions import (
    DIAMETER_BINS,
    EARLY_MM,
    Lesion,
    LesionMatch,
    connected_lesions,
    detection_summary,
    diameter_bin,
    match_lesions,
    patient_level,
)
from .metrics import NSD_METHODS, case_metrics, dice, hd95, nsd, surface_distances
from .stats import (
    bootstrap_auc_ci,
    bootstrap_ci,
    kfold_summary,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_tests,
    poisson_rate_ci,
    roc_auc,
    wilson_ci,
)

__all__ = [
    "DIAMETER_BINS",
    "EARLY_MM",
    "NSD_METHODS",
    "Lesion",
    "LesionMatch",
    "bootstrap_auc_ci",
    "bootstrap_ci",
    "case_metrics",
    "connected_lesions",
    "detection_summary",
    "diameter_bin",
    "dice",
    "hd95",
    "kfold_summary",
    "match_lesions",
    "mcnemar_exact",
    "nsd",
    "paired_bootstrap_ci",
    "paired_tests",
    "patient_level",
    "poisson_rate_ci",
    "roc_auc",
    "surface_distances",
    "wilson_ci",
]
