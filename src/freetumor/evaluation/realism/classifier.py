"""The realism scores of lesion features: a real-vs-synthetic classifier and distribution distances.

* :func:`machine_vtt` -- machine "Visual Turing Test": an L2 logistic regression on z-scored
  features, scored with stratified k-fold cross-validation. The pooled out-of-fold ROC AUC is
  the score: 0.5 means the classifier cannot separate synthetic from real lesions
  (indistinguishable), 1.0 means it always can.
* :func:`feature_distance` -- per-feature Cohen's d and two-sample Kolmogorov-Smirnov
  statistics, their mean |d|, and the Frechet distance between Gaussians fitted to the
  standardised feature vectors.

Both take lists of feature dicts (e.g. from :func:`.features.lesion_features`), real first.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> real = [{"a": float(v)} for v in rng.normal(0.0, 1.0, 12)]
    >>> synthetic = [{"a": float(v)} for v in rng.normal(5.0, 1.0, 12)]
    >>> machine_vtt(real, synthetic, folds=3)["auc"], feature_distance(real, synthetic)["mean_abs_d"] > 3
    (1.0, True)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.linalg import sqrtm
from scipy.stats import ks_2samp

from ...errors import ConfigError
from ...lesions.features import FEATURE_NAMES
from ..stats import bootstrap_auc_ci, roc_auc

__all__ = [
    "BOOTSTRAP",
    "CLASSIFIER",
    "FRECHET_RIDGE",
    "CrossValidation",
    "cross_validate",
    "feature_distance",
    "feature_matrix",
    "machine_vtt",
]

BOOTSTRAP = 2000
FRECHET_RIDGE = 1e-3
CLASSIFIER = ("L2 logistic regression (scikit-learn, C=1, balanced class weights, lbfgs) on features "
              "z-scored with the training folds' mean/sd; stratified k-fold cross-validation")


def feature_matrix(real: list[dict], synthetic: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Feature names, matrix ``X`` (one row per lesion, real first) and labels ``y`` (0 real, 1 synthetic).

    The features are the numeric keys every dict shares, in :data:`FEATURE_NAMES` order, then
    any others sorted by name.

    Raises:
        ConfigError: no dicts, no shared numeric feature, non-finite values.
    """
    rows = list(real) + list(synthetic)
    if not rows:
        raise ConfigError("no lesion features given")
    common = set(rows[0])
    for r in rows[1:]:
        common &= set(r)
    common = {k for k in common
              if all(isinstance(r[k], (int, float, np.integer, np.floating)) and not isinstance(r[k], bool)
                     for r in rows)}
    names = [k for k in FEATURE_NAMES if k in common] + sorted(common - set(FEATURE_NAMES))
    if not names:
        raise ConfigError("the real and synthetic lesions share no numeric feature")
    X = np.array([[float(r[k]) for k in names] for r in rows], dtype=np.float64)
    bad = [names[c] for c in range(len(names)) if not np.all(np.isfinite(X[:, c]))]
    if bad:
        raise ConfigError(f"non-finite values in feature(s) {', '.join(bad)}")
    y = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    return names, X, y


def _make_classifier(seed: int):
    from sklearn.linear_model import LogisticRegression  # deferred: heavy optional dependency
    from sklearn.pipeline import make_pipeline  # deferred: heavy optional dependency
    from sklearn.preprocessing import StandardScaler  # deferred: heavy optional dependency

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000,
                                                              random_state=seed))


class CrossValidation(NamedTuple):
    """What :func:`cross_validate` found, and the data it was found on."""

    result: dict  # as machine_vtt returns it
    y: np.ndarray  # 0 real, 1 synthetic
    oof: np.ndarray  # out-of-fold probability of "synthetic"
    names: list[str]  # the feature columns of X
    X: np.ndarray  # one row per lesion, real first


def cross_validate(real: list[dict], synthetic: list[dict], folds: int = 5, seed: int = 0) -> CrossValidation:
    """:func:`machine_vtt` with its out-of-fold predictions and feature matrix (for figures)."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds must be an integer of at least 2, got {folds!r}")
    n_real, n_syn = len(real), len(synthetic)
    if min(n_real, n_syn) < 3:
        raise ConfigError(f"the machine visual Turing test needs at least 3 real and 3 synthetic lesions, "
                          f"got {n_real} real and {n_syn} synthetic")
    names, X, y = feature_matrix(real, synthetic)
    from sklearn.model_selection import StratifiedKFold  # deferred: heavy optional dependency

    k = int(min(folds, n_real, n_syn))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed))
    oof = np.empty(len(y))
    auc_folds = []
    for train, test in skf.split(X, y):
        clf = _make_classifier(seed).fit(X[train], y[train])
        oof[test] = clf.predict_proba(X[test])[:, 1]
        auc_folds.append(roc_auc(y[test], oof[test]))
    full = _make_classifier(seed).fit(X, y)
    coef = full[-1].coef_[0]
    order = np.argsort(-np.abs(coef), kind="stable")[:5]
    result = {
        "auc": roc_auc(y, oof),
        "auc_folds": [float(a) for a in auc_folds],
        "auc_ci95": list(bootstrap_auc_ci(y, oof, BOOTSTRAP, seed=np.random.SeedSequence([int(seed), 95]))),
        "n_real": n_real,
        "n_synthetic": n_syn,
        "folds": k,
        "seed": int(seed),
        "classifier": CLASSIFIER,
        "top_features": [{"feature": names[c], "coefficient": float(coef[c])} for c in order],
        "n_features": len(names),
    }
    return CrossValidation(result, y, oof, names, X)


def machine_vtt(real: list[dict], synthetic: list[dict], folds: int = 5, seed: int = 0) -> dict:
    """Machine visual Turing test: cross-validated AUC of a real-vs-synthetic classifier.

    ``real`` and ``synthetic`` are lists of feature dicts (e.g. from
    :func:`lesion_features`); the features used are the numeric keys all dicts
    share. Synthetic is the positive class. Features are z-scored with the
    training folds' statistics, an L2 logistic regression is fit per fold of a
    stratified (shuffled, seeded) k-fold split with ``k = min(folds, n_real,
    n_synthetic)``, and the out-of-fold probabilities of all lesions are pooled.

    Returns:
        ``auc`` (pooled out-of-fold ROC AUC; 0.5 = indistinguishable), ``auc_folds``,
        ``auc_ci95`` (stratified bootstrap percentile interval over the out-of-fold
        predictions, seeded), ``n_real``, ``n_synthetic``, ``folds``, ``seed``,
        ``classifier``, ``n_features`` and ``top_features``: the 5 features with the
        largest |coefficient| of a model fit on all lesions (z-scored units; positive
        = higher in synthetic lesions).

    Raises:
        ConfigError: fewer than 3 lesions in a class, ``folds < 2``, non-finite features.
    """
    return cross_validate(real, synthetic, folds, seed).result


def feature_distance(real: list[dict], synthetic: list[dict]) -> dict:
    """How far the synthetic feature distribution is from the real one.

    Returns:
        ``per_feature``: for each feature the real and synthetic means, Cohen's d
        ``(mean_synthetic - mean_real) / pooled sd`` (0 when the pooled sd is 0),
        the two-sample Kolmogorov-Smirnov statistic ``ks`` and its ``ks_pvalue``;
        ``mean_abs_d`` (mean |d| over features), ``mean_ks``; ``frechet``: the
        Frechet distance between Gaussians fitted to the feature vectors after
        standardising every feature with the mean / sd of both sets together
        (covariances + ``frechet_ridge`` * I). The Frechet distance of two finite
        samples of one population is positive (about ``2 * n_features / n``), so
        compare it across synthetic sets of similar size.

    Raises:
        ConfigError: fewer than 2 lesions in a set, non-finite features.
    """
    if min(len(real), len(synthetic)) < 2:
        raise ConfigError(f"feature distance needs at least 2 real and 2 synthetic lesions, "
                          f"got {len(real)} real and {len(synthetic)} synthetic")
    names, X, y = feature_matrix(real, synthetic)
    R, S = X[y == 0], X[y == 1]
    n_r, n_s = len(R), len(S)
    per = {}
    ds, kss = [], []
    for c, name in enumerate(names):
        a, b = R[:, c], S[:, c]
        pooled = math.sqrt(((n_r - 1) * a.var(ddof=1) + (n_s - 1) * b.var(ddof=1)) / (n_r + n_s - 2))
        d = float((b.mean() - a.mean()) / pooled) if pooled > 1e-12 * max(1.0, abs(a.mean())) else 0.0
        ks = ks_2samp(a, b)
        per[name] = {"mean_real": float(a.mean()), "mean_synthetic": float(b.mean()), "cohens_d": d,
                     "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}
        ds.append(abs(d))
        kss.append(float(ks.statistic))
    mu, sd = X.mean(axis=0), X.std(axis=0, ddof=1)
    sd[sd <= 1e-12] = 1.0
    Z = (X - mu) / sd
    zr, zs = Z[y == 0], Z[y == 1]
    eye = np.eye(len(names)) * FRECHET_RIDGE
    cr = np.atleast_2d(np.cov(zr, rowvar=False)) + eye
    cs = np.atleast_2d(np.cov(zs, rowvar=False)) + eye
    covmean = np.real(sqrtm(cr @ cs))
    diff = zr.mean(axis=0) - zs.mean(axis=0)
    fd = float(diff @ diff + np.trace(cr) + np.trace(cs) - 2.0 * np.trace(covmean))
    if not math.isfinite(fd):
        raise ConfigError("the Frechet distance is not finite (degenerate feature covariance)")
    return {
        "per_feature": per,
        "mean_abs_d": float(np.mean(ds)),
        "mean_ks": float(np.mean(kss)),
        "frechet": max(0.0, fd),
        "frechet_ridge": FRECHET_RIDGE,
        "n_real": n_r,
        "n_synthetic": n_s,
        "n_features": len(names),
    }
