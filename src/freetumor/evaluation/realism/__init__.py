"""Machine "Visual Turing Test": how well can a classifier tell synthetic tumours from real ones?

Two realism scores for synthetic lesions in CT, both computed on hand-made
radiomic features of each lesion (pyradiomics is not needed):

1. :func:`machine_vtt` -- an L2 logistic regression on z-scored features,
   scored with stratified k-fold cross-validation. The pooled out-of-fold ROC
   AUC is the score: 0.5 means the classifier cannot separate synthetic from
   real lesions (indistinguishable), 1.0 means it always can.
2. :func:`feature_distance` -- per-feature Cohen's d and two-sample
   Kolmogorov-Smirnov statistics, their mean |d|, and the Frechet distance
   between Gaussians fitted to the standardised feature vectors.

:func:`run_realism` runs both for a real datalist against a folder written by
``freetumor synthesize`` (each synthetic lesion scored on its own voxels) or a second
datalist, optionally also against a control datalist of more real lesions (the real-vs-real
floor), and writes ``realism.json``, ``features.csv``, ``realism.png`` and ``lesions.png``.

With ``reader="cnn"`` (``freetumor realism --reader cnn``) a third score sits beside them:
:func:`.cnn.cnn_reader`, a small 3D CNN on the lesion crops (one crop geometry for both sets,
matched slice thickness, native in-plane spacing, case-wise folds), with its own control.

Modules: :mod:`.classifier` (the classifier, cross-validation and feature distances), :mod:`.cnn`
(the CNN reader),
:mod:`.gallery` (``lesions.png``: lesions side by side at one physical scale) and :mod:`.run`
(the end-to-end run and its output files). Their public names are re-exported here. The lesion
crops and their radiomic features are part of the lesion model: :mod:`freetumor.lesions.features`.
"""

from __future__ import annotations

from .classifier import (
    BOOTSTRAP,
    CLASSIFIER,
    FRECHET_RIDGE,
    CrossValidation,
    cross_validate,
    feature_distance,
    feature_matrix,
    machine_vtt,
)
from .cnn import CNN_MIN_LESIONS, cnn_reader
from .gallery import lesion_gallery_png
from .run import run_realism

__all__ = [
    "BOOTSTRAP",
    "CLASSIFIER",
    "FRECHET_RIDGE",
    "CNN_MIN_LESIONS",
    "CrossValidation",
    "cnn_reader",
    "cross_validate",
    "feature_distance",
    "feature_matrix",
    "lesion_gallery_png",
    "machine_vtt",
    "run_realism",
]
