"""Lesion profiles: what real lesions of one organ look like, as data a synthesiser draws from.

A profile is a versioned JSON document (``format: freetumor-lesion-profile``, ``version: 1``)
that ``freetumor lesions fit`` writes from a labelled datalist (:mod:`freetumor.lesions.fit`), or
that ships with freetumor (``builtin:lung`` ...; :func:`builtin_profile`). It holds, for each
measured lesion, one row of :data:`PROFILE_FEATURES` (the *empirical joint distribution*, so that
e.g. small lesions keep their own contrast), a summary of every feature (quantiles), and where the
numbers came from. A literature-based profile has no rows but independent ``distributions``
(``normal`` / ``lognormal`` / ``uniform`` with bounds) and its citations. A *combined* profile
(``kind: combined``, e.g. ``builtin:liver``) has both: measured rows for most features and literature
``distributions`` for the features its few real lesions cannot pin down (size, say); a draw takes a
row and replaces those features by independent draws. ``source.provenance`` then says, per feature,
which of the two each number comes from.

:meth:`LesionProfile.sample` draws one lesion's parameters: a real row chosen at random plus a
small Gaussian jitter (:data:`JITTER` of each feature's SD), kept inside the observed range.

Example:
    >>> p = LesionProfile.from_rows("lung", [[6.0, 0.9, 0.8, 0.95, 780.0, 0.12, 0.4, 60.0, 40.0, 2.0, 0.1],
    ...                                        [12.0, 0.8, 0.7, 0.90, 820.0, 0.10, 0.45, 70.0, 45.0, 2.5, 0.3]],
    ...                             source={"kind": "example"})
    >>> s = p.sample(np.random.default_rng(0))
    >>> 6.0 <= s["diameter_mm"] <= 12.0, sorted(s) == sorted(PROFILE_FEATURES)
    (True, True)
    >>> LesionProfile.from_json(p.to_json(), "p.json").summary["diameter_mm"]["median"]
    9.0
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import write_bytes_atomic
from ..organs import ORGAN_NAMES, get_organ
from ..structured import read_json

PROFILE_FORMAT = "freetumor-lesion-profile"
PROFILE_VERSION = 1
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "lesion_profiles"

# Per-lesion features: name -> (definition, unit). The order is the row order of a profile.
PROFILE_FEATURES: dict[str, str] = {
    "diameter_mm": "equivalent-sphere diameter of the labelled lesion (mm)",
    "axis_ratio_mid": "second / first principal semi-axis of the lesion mask (1 = round)",
    "axis_ratio_min": "third / first principal semi-axis of the lesion mask",
    "solidity": "lesion volume / convex-hull volume, relative to a ball of the same volume on the same grid "
                "(1 = as convex as a ball; lower = lobulated or spiculated)",
    "contrast_hu": "core HU minus the surrounding host tissue's median HU (3-8 mm outside the lesion)",
    "edge_norm": "edge sharpness (mean HU/mm gradient on the boundary band) / |contrast_hu| (1/mm)",
    "occupancy_outer": "mean partial-volume occupancy of the label's outer voxel layer "
                       "((HU - host) / (core - host), clipped to [0, 1])",
    "interior_sd": "standard deviation of HU in the lesion core (HU)",
    "noise_sd": "standard deviation of the fine-scale residual (HU minus its 1 mm Gaussian smoothing) "
                "in the lesion core (HU)",
    "corr_length_mm": "distance at which the autocorrelation of core HU falls below 1/e (mm)",
    "attached_fraction": "share of the 3 mm shell around the lesion that is solid tissue "
                         "(more than half-way from host to core HU): contact with a wall or vessel",
}
FEATURE_ORDER: tuple[str, ...] = tuple(PROFILE_FEATURES)
# Optional per-lesion features: a profile may hold them as extra columns after FEATURE_ORDER (in this
# order); a profile without one (fitted before it existed, or a literature profile) still loads, with a
# one-time notice on stderr, and its draws lack the feature: the renderer then uses its default, which
# is derived from the mandatory features (surface_roughness: the surface noise that gives the drawn
# solidity, freetumor.lesions.render.amplitude_for).
OPTIONAL_FEATURES: dict[str, str] = {
    "surface_roughness": "area-weighted RMS radial distance between the lesion's surface and its moment "
                         "ellipsoid, over the equivalent radius (0 = an ellipsoid; "
                         ":func:`freetumor.lesions.shape.shape_descriptors`)",
}
OPTIONAL_ORDER: tuple[str, ...] = tuple(OPTIONAL_FEATURES)
# Optional profile-level field ``attachment`` (lung): the measured share of lesions against the chest wall or
# mediastinum (juxtapleural) and against a vessel only (juxtavascular), exclusive
# (:mod:`freetumor.lesions.attachment`), with the number of lesions measured and where. A profile without it
# still loads (a one-time notice): its lesions are placed by their drawn attached_fraction as before.
ATTACHMENT_SHARES = ("juxtapleural", "juxtavascular")
_NOTIFIED: set[str] = set()
# Physical bounds a drawn value is kept in (besides the observed range).
_BOUNDS = {"diameter_mm": (1.0, 300.0), "axis_ratio_mid": (0.1, 1.0), "axis_ratio_min": (0.05, 1.0),
           "solidity": (0.3, 1.0), "edge_norm": (0.005, 2.0), "occupancy_outer": (0.0, 1.0),
           "interior_sd": (0.0, 1000.0), "noise_sd": (0.0, 1000.0), "corr_length_mm": (0.3, 50.0),
           "attached_fraction": (0.0, 1.0), "surface_roughness": (0.0, 1.0)}
# The valid range of each feature's value anywhere in a profile (a row, a distribution's centre and
# bounds): (low, high, low is allowed, unit). Checked when a profile is loaded or built; the
# documented table is docs/concepts/lesion-profiles.md. Wider than _BOUNDS (what a draw is kept in):
# a measured row may lie outside those (an edge_norm of 285/mm where the contrast is near 0), but a
# value outside these is no lesion (a negative or NaN diameter, a 1e6 mm one, a contrast of 1e12 HU).
FEATURE_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "diameter_mm": (0.0, 500.0, False, "mm"),
    "axis_ratio_mid": (0.0, 1.0, True, ""),
    "axis_ratio_min": (0.0, 1.0, True, ""),
    "solidity": (0.0, 1.0, False, ""),
    "contrast_hu": (-5000.0, 5000.0, True, "HU"),
    "edge_norm": (0.0, 1e6, True, "1/mm"),
    "occupancy_outer": (0.0, 1.0, True, ""),
    "interior_sd": (0.0, 5000.0, True, "HU"),
    "noise_sd": (0.0, 5000.0, True, "HU"),
    "corr_length_mm": (0.0, 100.0, False, "mm"),
    "attached_fraction": (0.0, 1.0, True, ""),
    "surface_roughness": (0.0, 1.0, True, ""),
}
MAX_LOG_SIGMA = 3.0  # a lognormal's sigma: e**3 = 20-fold per SD is already wider than any lesion feature
DISTRIBUTIONS = ("normal", "lognormal", "uniform")
# Lesions brighter than this above their host (HU) are calcified: of builtin:lung's 738 LIDC-IDRI rows,
# 63 (8.5 %) are (calcified nodules, benign, labelled as nodules); see LesionProfile.without_calcified.
CALCIFIED_HU = 1200.0
# Jitter of a drawn row, in units of each feature's SD: enough that no two lesions are copies, small
# enough to keep the joint distribution (Scott's multivariate factor, ~0.65 for 11 features and a
# few hundred lesions, would widen every marginal by ~20 %).
JITTER = 0.1


def range_text(feature: str) -> str:
    """The valid range of a feature, as the docs and the errors write it.

    Example:
        >>> range_text("diameter_mm"), range_text("contrast_hu")
        ('0 < x <= 500 mm', '-5000 <= x <= 5000 HU')
    """
    lo, hi, lo_ok, unit = FEATURE_RANGES[feature]
    return f"{lo:g} {'<=' if lo_ok else '<'} x <= {hi:.0f}{' ' + unit if unit else ''}"


def _value_problem(feature: str, x) -> str | None:
    """Why ``x`` cannot be a value of ``feature`` (not a number, not finite, out of range), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        return f"must be a number, got {x!r}"[:120]
    if not math.isfinite(float(x)):
        return f"must be a finite number, got {float(x)!r}"
    lo, hi, lo_ok, _ = FEATURE_RANGES[feature]
    if not ((lo <= x if lo_ok else lo < x) and x <= hi):
        return f"is {float(x):g}, outside its valid range {range_text(feature)}"
    return None


def check_rows(rows, where: str, columns: tuple[str, ...] = FEATURE_ORDER) -> np.ndarray:
    """Profile rows as an N x len(columns) array (:data:`FEATURE_ORDER` and any optional features),
    every value a finite number in its feature's valid range (:data:`FEATURE_RANGES`); else a
    one-line :class:`InputError` on ``where`` naming the field and row."""
    n = len(columns)
    if not isinstance(rows, (list, tuple, np.ndarray)) or len(rows) == 0 or not all(
            isinstance(r, (list, tuple, np.ndarray)) and len(r) == n for r in rows):
        raise InputError(where, f"lesion profile rows must be a non-empty list of {n} numbers each "
                                f"({', '.join(columns)})")
    for i, r in enumerate(rows):
        for f, x in zip(columns, r):
            if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
                raise InputError(where, f"{f} of row {i + 1} {_value_problem(f, x)}")
    arr = np.asarray(rows, np.float64)
    bad_rows = ~np.isfinite(arr)
    if bad_rows.any():  # finiteness first: NaN compares false with any bound, and says nothing about why
        i, j = (int(v) for v in np.argwhere(bad_rows)[0])
        raise InputError(where, f"{columns[j]} of row {i + 1} {_value_problem(columns[j], arr[i, j])}")
    for j, f in enumerate(columns):
        lo, hi, lo_ok, _ = FEATURE_RANGES[f]
        col = arr[:, j]
        bad = ((col < lo) if lo_ok else (col <= lo)) | (col > hi)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(where, f"{f} of row {i + 1} {_value_problem(f, col[i])}")
    return arr


def summarise(values) -> dict:
    """Quantiles, mean and SD of one feature (JSON-able floats)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0}
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return {"n": int(v.size), "mean": round(float(v.mean()), 4), "sd": round(float(v.std()), 4),
            "p5": round(float(q[0]), 4), "p25": round(float(q[1]), 4), "median": round(float(q[2]), 4),
            "p75": round(float(q[3]), 4), "p95": round(float(q[4]), 4),
            "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}


@dataclass(frozen=True)
class LesionProfile:
    """A lesion profile (see the module docstring).

    Attributes:
        organ: the tumour type it describes.
        kind: ``fitted`` (rows measured on real lesions), ``literature`` (distributions) or
            ``combined`` (rows, with some features drawn from distributions instead).
        rows: per-lesion feature rows in :data:`FEATURE_ORDER` (fitted, combined), else empty.
        distributions: feature -> ``{"dist": ..., parameters, "min", "max"}`` (literature: every
            feature; combined: the features drawn from the literature instead of the rows).
        summary: feature -> quantiles.
        source: where the numbers came from (datalist, lesion count, date, citations, ...).
    """

    organ: str
    kind: str
    rows: tuple[tuple[float, ...], ...] = ()
    distributions: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    name: str = ""
    optional: tuple[str, ...] = ()  # the optional features (OPTIONAL_ORDER) whose columns follow FEATURE_ORDER
    attachment: dict = field(default_factory=dict)  # measured attachment shares (ATTACHMENT_SHARES), or empty

    def with_attachment(self, attachment: dict, where: str | None = None) -> "LesionProfile":
        """This profile with the measured ``attachment`` shares (checked: each of :data:`ATTACHMENT_SHARES`
        a number in 0..1, their sum at most 1; errors on ``where``)."""
        return replace(self, attachment=check_attachment(attachment, where or self.name or "lesion profile"))

    def draw_attachment(self, rng: np.random.Generator) -> str | None:
        """Where one lesion is placed: ``juxtapleural``, ``juxtavascular`` or ``free``, with this profile's
        measured shares; ``None`` for a profile without them (placement then follows attached_fraction)."""
        if not self.attachment:
            return None
        u = float(rng.random())
        p_wall = float(self.attachment["juxtapleural"])
        if u < p_wall:
            return "juxtapleural"
        return "juxtavascular" if u < p_wall + float(self.attachment["juxtavascular"]) else "free"

    @property
    def columns(self) -> tuple[str, ...]:
        """The features of a row: :data:`FEATURE_ORDER`, then the optional ones this profile measured."""
        return FEATURE_ORDER + tuple(self.optional)

    # -------------------------------------------------------------- building
    @classmethod
    def from_rows(cls, organ: str, rows, source: dict, name: str = "", optional=(),
                  where: str | None = None) -> "LesionProfile":
        """A fitted profile of measured ``rows`` (each :data:`FEATURE_ORDER`, then the ``optional``
        features, a subset of :data:`OPTIONAL_ORDER` in that order), each value checked
        (:func:`check_rows`; errors on ``where``)."""
        optional = tuple(optional)
        if optional != tuple(f for f in OPTIONAL_ORDER if f in optional):
            raise ValueError(f"optional profile features must be some of {OPTIONAL_ORDER} in that order, got {optional}")
        columns = FEATURE_ORDER + optional
        arr = check_rows(rows, where or name or "lesion profile", columns)
        summary = {f: summarise(arr[:, j]) for j, f in enumerate(columns)}
        clean = tuple(tuple(round(float(x), 5) for x in r) for r in arr)
        return cls(get_organ(organ).name, "fitted", clean, {}, summary, dict(source), name, optional)

    def without_calcified(self, max_contrast_hu: float = CALCIFIED_HU) -> "LesionProfile":
        """This profile without its calcified rows (``contrast_hu`` above ``max_contrast_hu``): a
        fitted profile keeps its other rows, and a draw stays inside their range, so no drawn lesion
        is brighter than ``max_contrast_hu``; a literature profile's ``contrast_hu`` is capped there.

        Example:
            >>> p = LesionProfile.from_rows("lung", [[6.0, 0.9, 0.8, 0.95, 780.0, 0.12, 0.4, 60.0, 40.0, 2.0, 0.1],
            ...                                        [9.0, 0.8, 0.7, 0.90, 1500.0, 0.10, 0.45, 70.0, 45.0, 2.5, 0.3]],
            ...                             source={"kind": "example"}, name="ex")
            >>> q = p.without_calcified()
            >>> len(q.rows), q.source["calcified_rows_left_out"], q.source["max_contrast_hu"]
            (1, 1, 1200.0)
        """
        limit = float(max_contrast_hu)
        j = FEATURE_ORDER.index("contrast_hu")
        if self.kind in ("fitted", "combined") and "contrast_hu" not in self.distributions:
            keep = [r for r in self.rows if r[j] <= limit]
            if not keep:
                raise InputError(self.name or "profile", f"every lesion of the profile is calcified "
                                                         f"(contrast above {limit:g} HU)")
            source = {**self.source, "max_contrast_hu": limit, "calcified_rows_left_out": len(self.rows) - len(keep)}
            if self.kind == "combined":
                return replace(LesionProfile.combined(self.organ, keep, self.distributions, source, self.name,
                                                      optional=self.optional), attachment=self.attachment)
            return replace(LesionProfile.from_rows(self.organ, keep, source, self.name, self.optional),
                           attachment=self.attachment)
        spec = dict(self.distributions["contrast_hu"])
        spec["max"] = min(float(spec.get("max", math.inf)), limit)
        return LesionProfile(self.organ, self.kind, self.rows, {**self.distributions, "contrast_hu": spec},
                             self.summary, {**self.source, "max_contrast_hu": limit}, self.name, self.optional,
                             self.attachment)

    @classmethod
    def combined(cls, organ: str, rows, distributions: dict, source: dict, name: str = "",
                 summary_draws: int = 20000, optional=()) -> "LesionProfile":
        """Measured ``rows`` with the features of ``distributions`` drawn from those instead; the
        summary of such a feature is that of ``summary_draws`` draws (seed 0), the others the rows'."""
        fitted = cls.from_rows(organ, rows, source, name, optional)
        dists = {f: dict(distributions[f]) for f in FEATURE_ORDER if f in distributions}
        if not dists or set(distributions) - set(dists):
            raise ValueError(f"combined profile distributions must name some of: {', '.join(FEATURE_ORDER)}")
        rng = np.random.default_rng(0)
        summary = dict(fitted.summary)
        for f, spec in dists.items():
            summary[f] = summarise([_draw(spec, f, rng) for _ in range(summary_draws)])
        return cls(fitted.organ, "combined", fitted.rows, dists, summary, dict(source), name, fitted.optional)

    # -------------------------------------------------------------- sampling
    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """One lesion's parameters: every feature of :data:`FEATURE_ORDER`, and the optional features
        (:data:`OPTIONAL_ORDER`) this profile measured."""
        if self.kind in ("fitted", "combined"):
            arr = np.asarray(self.rows, np.float64)
            n, d = arr.shape
            row = arr[int(rng.integers(n))].copy()
            if n > 1:
                row += rng.normal(0.0, 1.0, d) * JITTER * arr.std(axis=0)
            lo, hi = arr.min(axis=0), arr.max(axis=0)
            out = {}
            for j, f in enumerate(self.columns):
                b_lo, b_hi = _BOUNDS.get(f, (-math.inf, math.inf))
                out[f] = float(np.clip(row[j], max(lo[j], b_lo), min(hi[j], b_hi)))
            for f in FEATURE_ORDER:  # combined: these features from the literature (same order every draw)
                if f in self.distributions:
                    out[f] = _draw(self.distributions[f], f, rng)
            return out
        return {f: _draw(self.distributions[f], f, rng) for f in FEATURE_ORDER}

    # -------------------------------------------------------------- files
    def to_json(self) -> dict:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "name": self.name,
            "organ": self.organ,
            "kind": self.kind,
            "features": {**PROFILE_FEATURES, **{f: OPTIONAL_FEATURES[f] for f in self.optional}},
            "source": self.source,
            "summary": self.summary,
            **({"rows": [list(r) for r in self.rows]} if self.kind in ("fitted", "combined") else {}),
            **({"distributions": self.distributions} if self.kind in ("literature", "combined") else {}),
            **({"attachment": self.attachment} if self.attachment else {}),
        }

    def save(self, path: str | os.PathLike) -> None:
        write_bytes_atomic(path, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def from_json(cls, doc, where: str) -> "LesionProfile":
        """Validate a profile document; every problem is a one-line :class:`InputError` on ``where``."""
        profile = cls._from_json(doc, where)
        if "attachment" in doc:
            return profile.with_attachment(doc["attachment"], where)
        if profile.organ == "lung" and where not in _NOTIFIED_ATTACHMENT:
            _NOTIFIED_ATTACHMENT.add(where)
            print(f"note: lesion profile {where} has no attachment shares (fitted before they were measured): "
                  "lesions are placed against the wall by their drawn attached_fraction", file=sys.stderr)
        return profile

    @classmethod
    def _from_json(cls, doc, where: str) -> "LesionProfile":
        if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
            raise InputError(where, f"not a lesion profile (expected \"format\": \"{PROFILE_FORMAT}\")")
        version = doc.get("version")
        if version != PROFILE_VERSION:
            raise InputError(where, f"lesion profile version {version!r} is not supported (this freetumor reads "
                                    f"version {PROFILE_VERSION})")
        organ = doc.get("organ")
        if organ not in ORGAN_NAMES:
            raise InputError(where, f"lesion profile organ {organ!r} is not one of {', '.join(ORGAN_NAMES)}")
        kind = doc.get("kind")
        named = doc.get("features") if isinstance(doc.get("features"), dict) else {}
        optional = tuple(f for f in OPTIONAL_ORDER if f in named) if kind in ("fitted", "combined") else ()
        _notify_missing(where, optional)
        if kind in ("fitted", "combined"):
            fitted = cls.from_rows(organ, doc.get("rows"), doc.get("source") or {}, str(doc.get("name") or ""),
                                   optional, where=where)
            if kind == "fitted":
                return fitted
            dists = _checked_distributions(doc.get("distributions"), where, partial=True)
            summary = dict(fitted.summary)
            stored = doc.get("summary") if isinstance(doc.get("summary"), dict) else {}
            summary.update({f: stored[f] for f in dists if f in stored})
            return cls(organ, "combined", fitted.rows, dists, summary, fitted.source, fitted.name, optional)
        if kind == "literature":
            dists = _checked_distributions(doc.get("distributions"), where, partial=False)
            summary = doc.get("summary") if isinstance(doc.get("summary"), dict) else {}
            return cls(organ, "literature", (), dists, summary, doc.get("source") or {}, str(doc.get("name") or ""))
        raise InputError(where, f"lesion profile kind must be fitted, literature or combined, got {kind!r}")


_NOTIFIED_ATTACHMENT: set[str] = set()


def check_attachment(att, where: str) -> dict:
    """A profile's ``attachment`` field, checked: a mapping with each of :data:`ATTACHMENT_SHARES` a finite
    number in 0..1 and their sum at most 1 (the categories are exclusive); other keys (``lesions``,
    ``measured_on``, ...) are kept as they are. Else a one-line :class:`InputError` on ``where``."""
    if not isinstance(att, dict):
        raise InputError(where, f"attachment must be a mapping of {', '.join(ATTACHMENT_SHARES)} shares")
    for k in ATTACHMENT_SHARES:
        x = att.get(k)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
            raise InputError(where, f"attachment.{k} must be a finite number, got {x!r}"[:160])
        if not 0.0 <= float(x) <= 1.0:
            raise InputError(where, f"attachment.{k} is {float(x):g}, outside its valid range 0 <= x <= 1")
    total = sum(float(att[k]) for k in ATTACHMENT_SHARES)
    if total > 1.0 + 1e-9:
        raise InputError(where, f"attachment shares add up to {total:g}, above 1 (the kinds are exclusive)")
    return dict(att)


def _notify_missing(where: str, present: tuple[str, ...]) -> None:
    """Say once per profile (per process) which optional features it lacks and what a draw uses instead."""
    missing = [f for f in OPTIONAL_ORDER if f not in present]
    if missing and where not in _NOTIFIED:
        _NOTIFIED.add(where)
        print(f"note: lesion profile {where} has no {', '.join(missing)} (fitted before it was measured, or "
              f"literature-based): lesion surfaces follow its solidity instead", file=sys.stderr)


def _draw(spec: dict, feature: str, rng: np.random.Generator) -> float:
    """One value of a literature distribution, kept in its bounds and the feature's physical ones."""
    dist = spec["dist"]
    if dist == "normal":
        v = rng.normal(spec["mean"], spec["sd"])
    elif dist == "lognormal":
        v = float(np.exp(rng.normal(math.log(spec["median"]), spec["sigma"])))
    else:
        v = rng.uniform(spec["low"], spec["high"])
    b_lo, b_hi = _BOUNDS.get(feature, (-math.inf, math.inf))
    return float(np.clip(v, max(spec.get("min", -math.inf), b_lo), min(spec.get("max", math.inf), b_hi)))


def _checked_distributions(dists, where: str, partial: bool) -> dict:
    """A profile's ``distributions``: every feature (literature) or a non-empty subset (combined)."""
    names = ", ".join(FEATURE_ORDER)
    if partial:
        if not isinstance(dists, dict) or not dists or not set(dists) <= set(FEATURE_ORDER):
            raise InputError(where, f"combined lesion profile distributions must give some of: {names}")
    elif not isinstance(dists, dict) or set(dists) != set(FEATURE_ORDER):
        raise InputError(where, f"lesion profile distributions must give exactly: {names}")
    need = {"normal": ("mean", "sd"), "lognormal": ("median", "sigma"), "uniform": ("low", "high")}
    for f, spec in dists.items():
        if not isinstance(spec, dict) or spec.get("dist") not in need or not all(
                k in spec for k in need[spec.get("dist")]):
            raise InputError(where, f"lesion profile distribution of {f!r} must be one of "
                                    f"{', '.join(DISTRIBUTIONS)} with its parameters, got {spec!r}"[:300])
        _check_distribution(f, spec, where)
    return dists


def _check_distribution(f: str, spec: dict, where: str) -> None:
    """Every parameter of one feature's distribution in its valid range (docs/concepts/lesion-profiles.md)."""
    def fail(key: str, problem: str):
        raise InputError(where, f"distributions.{f}.{key} {problem}")

    lo, hi, _, _ = FEATURE_RANGES[f]
    values = {k: spec[k] for k in ("mean", "median", "low", "high", "min", "max") if k in spec}
    for key, x in values.items():  # values of the feature itself: its valid range
        problem = _value_problem(f, x)
        if problem:
            fail(key, problem)
    for key, top in (("sd", hi - lo), ("sigma", MAX_LOG_SIGMA)):  # spreads: >= 0 and at most the range
        if key in spec:
            x = spec[key]
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                fail(key, f"must be a finite number, got {x!r}"[:120])
            if not 0 <= x <= top:
                fail(key, f"is {x:g}, outside its valid range 0 <= x <= {top:g}")
    if spec["dist"] == "lognormal" and not spec["median"] > 0:
        fail("median", f"is {spec['median']:g}; a lognormal's median must be above 0")
    if spec["dist"] == "uniform" and spec["low"] > spec["high"]:
        fail("low", f"{spec['low']:g} is above high {spec['high']:g}")
    if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
        fail("min", f"{spec['min']:g} is above max {spec['max']:g}")


def builtin_names() -> list[str]:
    """Names of the profiles that ship with freetumor (``builtin:<name>``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def builtin_profile(name: str) -> LesionProfile:
    path = BUILTIN_DIR / f"{name}.json"
    if not path.is_file():
        raise InputError(f"builtin:{name}", f"no such built-in profile (built-in: {', '.join(builtin_names()) or 'none'})")
    return LesionProfile.from_json(read_json(path, "lesion profile"), f"builtin:{name}")


def load_profile(spec: str | os.PathLike | LesionProfile, organ: str | None = None) -> LesionProfile:
    """A profile from a JSON file or ``builtin:<name>``; with ``organ``, it must describe that organ."""
    if isinstance(spec, LesionProfile):
        profile, where = spec, spec.name or "profile"
    elif str(spec).startswith("builtin:"):
        where = str(spec)
        profile = builtin_profile(where.split(":", 1)[1])
    else:
        where = str(spec)
        p = Path(spec)
        if not p.is_file():
            raise InputError(where, "lesion profile not found" if not p.exists() else "not a file")
        doc = read_json(p, "lesion profile")  # size and depth bounded before parsing
        profile = LesionProfile.from_json(doc, where)
    if organ is not None and profile.organ != get_organ(organ).name:
        raise InputError(where, f"lesion profile is for {profile.organ}, not {get_organ(organ).name}")
    return profile
