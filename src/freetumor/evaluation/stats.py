"""Statistics for comparing results: paired tests, McNemar, bootstrap and Wilson intervals, ROC AUC.

Missing values (``None`` or ``nan``, e.g. a tumour Dice on a scan without tumour) are dropped:
from one list in :func:`bootstrap_ci`, pairwise in :func:`paired_tests` and
:func:`paired_bootstrap_ci` (a pair is used only when both values are present). Differences
are always ``b - a`` (``a`` the baseline, ``b`` the new method).

Example:
    >>> a = [0.70, 0.72, 0.68, 0.75, None, 0.71]
    >>> b = [0.74, 0.75, 0.69, 0.80, 0.90, 0.73]
    >>> r = paired_tests(a, b)
    >>> r["n"], r["dropped"], round(r["mean_diff"], 3), r["wilcoxon"]["statistic"]
    (5, 1, 0.03, 0.0)
    >>> tuple(round(x, 3) for x in wilson_ci(8, 10))
    (0.49, 0.943)
    >>> lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_boot=2000, seed=1)
    >>> lo <= 2.5 <= hi
    True
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import binomtest, chi2, norm, rankdata, ttest_rel, wilcoxon

from ..errors import ConfigError

__all__ = [
    "paired_tests",
    "bootstrap_ci",
    "paired_bootstrap_ci",
    "wilson_ci",
    "poisson_rate_ci",
    "kfold_summary",
    "mcnemar_exact",
    "roc_auc",
    "bootstrap_auc_ci",
]

_STATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: np.mean(x, axis=-1),
    "median": lambda x: np.median(x, axis=-1),
}


def _values(values: Sequence | np.ndarray, name: str = "values") -> np.ndarray:
    """A float vector with ``None`` turned into ``nan``."""
    try:
        arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of numbers (or None), got {values!r}") from None
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _pairs(a: Sequence, b: Sequence) -> tuple[np.ndarray, np.ndarray, int]:
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ConfigError(f"paired values must have the same length, got {len(x)} and {len(y)}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok], int(np.count_nonzero(~ok))


def _alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha!r}")
    return a


def paired_tests(a: Sequence, b: Sequence) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``b`` against ``a`` (two-sided).

    Returns:
        dict with ``n`` (pairs used), ``dropped`` (pairs with a missing value), ``mean_a``,
        ``mean_b``, ``mean_diff`` (mean of ``b - a``), ``t_test`` and ``wilcoxon``, each
        ``{"statistic", "p"}`` exactly as ``scipy.stats.ttest_rel(b, a)`` and
        ``scipy.stats.wilcoxon(b, a)`` give them. When every difference is zero both tests
        report statistic 0.0 and p 1.0 (SciPy gives nan / raises). With fewer than two pairs
        the test entries are ``None`` and ``note`` says why.

    >>> r = paired_tests([1, 2, 3], [1, 2, 3])
    >>> r["t_test"], r["wilcoxon"]
    ({'statistic': 0.0, 'p': 1.0}, {'statistic': 0.0, 'p': 1.0})
    >>> paired_tests([1.0], [2.0])["note"]
    'fewer than 2 complete pairs: no test'
    """
    x, y, dropped = _pairs(a, b)
    n = len(x)
    out: dict = {
        "n": n,
        "dropped": dropped,
        "mean_a": float(np.mean(x)) if n else None,
        "mean_b": float(np.mean(y)) if n else None,
        "mean_diff": float(np.mean(y - x)) if n else None,
    }
    if n < 2:
        out.update(t_test=None, wilcoxon=None, note="fewer than 2 complete pairs: no test")
        return out
    if np.all(y - x == 0):
        out.update(t_test={"statistic": 0.0, "p": 1.0}, wilcoxon={"statistic": 0.0, "p": 1.0})
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. constant differences, or ties in small samples
        t = ttest_rel(y, x)
        w = wilcoxon(y, x)
    out["t_test"] = {"statistic": float(t.statistic), "p": float(t.pvalue)}
    out["wilcoxon"] = {"statistic": float(w.statistic), "p": float(w.pvalue)}
    return out


def _bootstrap(x: np.ndarray, stat: str | Callable, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    if isinstance(stat, str):
        if stat not in _STATS:
            raise ConfigError(f"unknown bootstrap statistic {stat!r}; choose one of {', '.join(_STATS)}")
        fn = _STATS[stat]
    elif callable(stat):
        fn = stat  # must reduce the last axis of a 2D array
    else:
        raise ConfigError(f"stat must be 'mean', 'median' or a function, got {stat!r}")
    alpha = _alpha(alpha)
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    n = len(x)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // n))  # bounded memory for long value lists
    boots = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        boots.append(np.asarray(fn(x[idx]), dtype=float))
    dist = np.concatenate(boots)
    lo, hi = np.quantile(dist, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(lo), float(hi))


def bootstrap_ci(
    values: Sequence,
    stat: str | Callable = "mean",
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` interval of a statistic of ``values``.

    Args:
        values: numbers; ``None`` / ``nan`` are dropped.
        stat: ``"mean"``, ``"median"`` or a function reducing the last axis of an array
            of shape ``(n_boot, n)``.
        n_boot: resamples.
        alpha: 0.05 for a 95% interval.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same interval.

    Returns:
        ``(nan, nan)`` when no value is left.

    >>> bootstrap_ci([3.0, 3.0, 3.0])
    (3.0, 3.0)
    """
    x = _values(values)
    return _bootstrap(x[np.isfinite(x)], stat, n_boot, alpha, seed)


def paired_bootstrap_ci(
    a: Sequence,
    b: Sequence,
    stat: str | Callable = "mean",
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (or ``stat``) of the paired differences ``b - a``.

    Pairs are resampled together; pairs with a missing value are dropped.

    >>> paired_bootstrap_ci([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])  # every difference is 0.5
    (0.5, 0.5)
    """
    x, y, _ = _pairs(a, b)
    return _bootstrap(y - x, stat, n_boot, alpha, seed)


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``; ``(nan, nan)`` when ``n`` is 0.

    >>> tuple(round(x, 4) for x in wilson_ci(0, 10))
    (0.0, 0.2775)
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ConfigError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(1.0 - _alpha(alpha) / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def poisson_rate_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Garwood) interval of a rate of ``k`` events over ``n`` units, e.g. false positives per scan.

    >>> tuple(round(x, 3) for x in poisson_rate_ci(0, 10))
    (0.0, 0.369)
    """
    k, n = int(k), int(n)
    if k < 0 or n <= 0:
        raise ConfigError(f"poisson_rate_ci needs k >= 0 and n > 0, got k={k}, n={n}")
    a = _alpha(alpha)
    lo = 0.0 if k == 0 else float(chi2.ppf(a / 2.0, 2 * k)) / 2.0
    hi = float(chi2.ppf(1.0 - a / 2.0, 2 * k + 2)) / 2.0
    return (lo / n, hi / n)


def kfold_summary(values_by_fold: Mapping[object, Sequence]) -> dict:
    """Mean and standard deviation over the fold means of k-fold cross-validation.

    Args:
        values_by_fold: ``{fold: per-case values}``; ``None`` / ``nan`` values are dropped.

    Returns:
        dict with ``folds`` (``{fold: {"mean", "n"}}``), ``n_folds`` (folds with a value),
        ``mean`` and ``sd`` (sample standard deviation, ddof 1) of the fold means; ``sd`` is
        ``None`` with fewer than two folds, a fold without values has mean ``None``.

    >>> s = kfold_summary({0: [0.8, 0.9], 1: [0.7, None], 2: [0.6]})
    >>> s["folds"][1], round(s["mean"], 3), round(s["sd"], 3)
    ({'mean': 0.7, 'n': 1}, 0.717, 0.126)
    """
    if not isinstance(values_by_fold, Mapping):
        raise ConfigError(f"values_by_fold must be a mapping of fold to values, got {type(values_by_fold).__name__}")
    folds: dict = {}
    means = []
    for fold, vals in values_by_fold.items():
        x = _values(vals, f"fold {fold!r}")
        x = x[np.isfinite(x)]
        mean = float(np.mean(x)) if len(x) else None
        folds[fold] = {"mean": mean, "n": int(len(x))}
        if mean is not None:
            means.append(mean)
    return {
        "folds": folds,
        "n_folds": len(means),
        "mean": float(np.mean(means)) if means else None,
        "sd": float(np.std(means, ddof=1)) if len(means) >= 2 else None,
    }


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial test, p = 0.5).

    ``b`` and ``c`` are the pairs where only the first / only the second method succeeded
    (e.g. lesions detected by one method and missed by the other); 1.0 when both are 0.

    >>> mcnemar_exact(0, 0), round(mcnemar_exact(1, 9), 4), mcnemar_exact(3, 3)
    (1.0, 0.0215, 1.0)
    """
    n = b + c
    return 1.0 if n == 0 else float(binomtest(b, n, 0.5).pvalue)


def _rank_auc(s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of scores ``s1`` (class 1) against ``s0`` (class 0), along the last axis."""
    n0, n1 = s0.shape[-1], s1.shape[-1]
    ranks = rankdata(np.concatenate([s0, s1], axis=-1), axis=-1)
    return (ranks[..., n0:].sum(axis=-1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def _classes(y, score) -> tuple[np.ndarray, np.ndarray]:
    """Scores of class 0 and of class 1 (``y`` true / non-zero)."""
    y = np.asarray(y, bool)
    score = np.asarray(score, dtype=float)
    if y.shape != score.shape or y.ndim != 1:
        raise ConfigError(f"y and score must be vectors of one length, got shapes {y.shape} and {score.shape}")
    return score[~y], score[y]


def roc_auc(y, score) -> float:
    """ROC AUC (Mann-Whitney, ties count half) of ``score`` for class 1 (``y`` true) against class 0.

    ``nan`` when a class is empty.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), roc_auc([0, 1], [0.5, 0.5])
    (0.75, 0.5)
    """
    s0, s1 = _classes(y, score)
    if s0.size == 0 or s1.size == 0:
        return float("nan")
    return float(_rank_auc(s0, s1))


def bootstrap_auc_ci(y, score, n_boot: int = 2000, alpha: float = 0.05, seed=0) -> tuple[float, float]:
    """Stratified percentile bootstrap interval of the ROC AUC of fixed scores.

    Each resample draws the class-0 and the class-1 scores with replacement, each class
    keeping its size. ``seed`` is anything ``numpy.random.default_rng`` takes (an int or a
    ``SeedSequence``). ``(nan, nan)`` when a class is empty.

    >>> bootstrap_auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])  # perfectly separated
    (1.0, 1.0)
    """
    s0, s1 = _classes(y, score)
    n0, n1 = s0.size, s1.size
    if n0 == 0 or n1 == 0:
        return (math.nan, math.nan)
    a = _alpha(alpha)
    rng = np.random.default_rng(seed)
    b0 = s0[rng.integers(0, n0, size=(int(n_boot), n0))]
    b1 = s1[rng.integers(0, n1, size=(int(n_boot), n1))]
    lo, hi = np.percentile(_rank_auc(b0, b1), [50.0 * a, 100.0 - 50.0 * a])
    return (float(lo), float(hi))
