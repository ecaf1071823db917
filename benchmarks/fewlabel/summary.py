"""The summary of the run files: per arm and K the seed means (Dice, NSD, detection by diameter, FROC,
what the runs saw), paired comparisons of the arms, the issue's targets, and the brief printed summary."""

from __future__ import annotations

import math

import numpy as np

from .arms import ARMS, BASELINES, SYNTH_ARMS


FP_RATES = (1, 2, 4, 8)
BINS = (("<10 mm", 0.0, 10.0), ("10-20 mm", 10.0, 20.0), (">=20 mm", 20.0, math.inf))
CROP_SETS = ("centred", "shifted", "composite")
TARGETS = {"shortcut_gap": 0.03, "none_vs_stage0": -0.01, "fp_in_lung": 65.0, "gain": 0.03, "goal": 0.05}


def bin_of(d: float) -> str:
    return next(label for label, lo, hi in BINS if lo <= d < hi)


def mean_or_none(vals) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(float(np.mean(vals)), 4) if vals else None


def per_case_mean(runs: list[dict], test: str, metric: str) -> dict[str, float | None]:
    cases = sorted(runs[0]["tests"][test]["cases"])
    return {c: mean_or_none([r["tests"][test]["cases"][c][metric] for r in runs]) for c in cases}


def arm_summary(runs: list[dict]) -> dict:
    """One arm at one K over its seeds: per test set Dice / NSD (seed means), detection by diameter,
    lesion voxels called background, FROC, and what the runs saw."""
    out: dict = {"seeds": len(runs), "seed_list": sorted(r["seed"] for r in runs)}
    names = {"centred": "", "shifted": "_shifted", "composite": "_composite"}
    for test, suffix in names.items():
        if test not in runs[0]["tests"]:
            continue
        for metric in ("dice", "nsd", "lesion_called_background"):
            by_seed = [mean_or_none(c[metric] for c in r["tests"][test]["cases"].values()) for r in runs]
            out[f"{metric}{suffix}"] = mean_or_none(by_seed)
            if metric == "dice":
                out[f"dice{suffix}_by_seed"] = by_seed
        by_bin = {label: [0, 0] for label, _, _ in BINS}
        for r in runs:
            for les in r["tests"][test]["lesions"]:
                b = by_bin[bin_of(les["diameter_mm"])]
                b[0] += int(les["detected"])
                b[1] += 1
        out[f"detection{suffix}"] = {k: {"detected": v[0], "lesions": v[1],
                                         "sensitivity": round(v[0] / v[1], 4) if v[1] else None}
                                     for k, v in by_bin.items()}
        ratios = [v for v in per_case_mean(runs, test, "volume_ratio").values() if v is not None]
        out[f"volume_ratio_median{suffix}"] = round(float(np.median(ratios)), 3) if ratios else None
        out[f"n{suffix or '_centred'}"] = len(runs[0]["tests"][test]["cases"])
    if out.get("dice") is not None and out.get("dice_shifted") is not None:
        out["shortcut_gap"] = round(out["dice"] - out["dice_shifted"], 4)
    scans = [r["tests"].get("scans") for r in runs]
    if all(scans):
        for where in ("in_lung", "whole"):
            if where not in scans[0]:
                continue
            f = [s[where] for s in scans]
            out[f"froc_{where}"] = {
                "sensitivity_at": {str(k): mean_or_none(x["sensitivity_at"].get(str(k)) for x in f) for k in FP_RATES},
                "cpm": mean_or_none(x["cpm"] for x in f),
                "sensitivity_at_small": {str(k): mean_or_none((x.get("sensitivity_at_small") or {}).get(str(k))
                                                              for x in f) for k in FP_RATES},
                "lesions": f[0]["lesions"], "small_lesions": f[0].get("small_lesions"), "scans": f[0]["scans"],
                "operating_point": {"threshold": f[0]["operating_point"]["threshold"],
                                    "sensitivity": mean_or_none(x["operating_point"]["sensitivity"] for x in f),
                                    "fp_per_scan": mean_or_none(x["operating_point"]["fp_per_scan"] for x in f)}}
    out["labelled_share"] = mean_or_none(r["run"].get("labelled_share") for r in runs)
    status: dict = {}
    for r in runs:
        for k, v in (r["run"].get("synth_status") or {}).items():
            status[k] = status.get(k, 0) + v
    if status:
        out["synth_status"] = status
        out["accepted_per_try"] = mean_or_none(r["run"].get("accepted_per_try") for r in runs)
    return out


def compare(a: list[dict], b: list[dict], test: str, metric: str = "dice") -> dict:
    """B minus A on one crop test set: per-case values averaged over the seeds both arms have, paired
    t / Wilcoxon tests and a paired bootstrap CI (``freetumor.evaluation.stats``)."""
    from freetumor.evaluation.stats import paired_bootstrap_ci, paired_tests

    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    a = [r for r in a if r["seed"] in seeds]
    b = [r for r in b if r["seed"] in seeds]
    ma, mb = per_case_mean(a, test, metric), per_case_mean(b, test, metric)
    cases = sorted(ma)
    va, vb = [ma[c] for c in cases], [mb[c] for c in cases]
    t = paired_tests(va, vb)
    ci = paired_bootstrap_ci(va, vb) if t["n"] > 1 else (None, None)
    return {"n": t["n"], "seeds": seeds, "mean_diff": None if t["mean_diff"] is None else round(t["mean_diff"], 4),
            "ci95": [None if v is None else round(float(v), 4) for v in ci],
            "t_p": (t.get("t_test") or {}).get("p"), "wilcoxon_p": (t.get("wilcoxon") or {}).get("p")}


def comparisons(by_arm: dict[str, list[dict]]) -> dict:
    """Every arm against every baseline before it, on centred, shifted and composite Dice."""
    out = {}
    for i, base in enumerate(ARMS):
        if base not in BASELINES or base not in by_arm:
            continue
        for arm in ARMS[i + 1:]:
            if arm not in by_arm:
                continue
            out[f"{arm}_vs_{base}"] = {test: compare(by_arm[base], by_arm[arm], test)
                                       for test in CROP_SETS if test in by_arm[arm][0]["tests"]}
    return out


def targets(arms: dict, comps: dict, by_arm: dict) -> dict:
    """The issue's targets at the headline K, each with its measured value and met / not met."""
    out: dict = {}
    have = [a for a in ARMS if a in arms and arms[a].get("dice_shifted") is not None]
    gaps = {a: arms[a].get("shortcut_gap") for a in have}
    out["shortcut"] = {"gaps": gaps, "required": f"|centred - shifted| <= {TARGETS['shortcut_gap']} for every arm",
                       "met": bool(gaps) and all(g is not None and abs(g) <= TARGETS["shortcut_gap"]
                                                 for g in gaps.values())}
    if "none" in arms and "stage0" in arms:
        d = round(arms["none"]["dice_shifted"] - arms["stage0"]["dice_shifted"], 4)
        out["none_vs_stage0_shifted"] = {"diff": d, "required": f">= {TARGETS['none_vs_stage0']}",
                                         "met": d >= TARGETS["none_vs_stage0"]}
    fps = {a: (arms[a].get("froc_in_lung") or {}).get("operating_point", {}).get("fp_per_scan") for a in have}
    if any(v is not None for v in fps.values()):
        out["fp_in_lung"] = {"fp_per_scan_at_0.5": fps, "required": f"<= {TARGETS['fp_in_lung']} per scan",
                             "met_by": [a for a, v in fps.items() if v is not None and v <= TARGETS["fp_in_lung"]]}
    synth = [a for a in SYNTH_ARMS if a in have]
    bases = [a for a in BASELINES if a in have]
    if synth and bases:
        best = max(synth, key=lambda a: arms[a]["dice_shifted"])
        base = max(bases, key=lambda a: arms[a]["dice_shifted"])
        c = compare(by_arm[base], by_arm[best], "shifted")
        met = c["mean_diff"] is not None and c["mean_diff"] >= TARGETS["gain"] and (c["ci95"][0] or 0) > 0
        out["gain"] = {"synthesis_arm": best, "baseline_arm": base, "dice_shifted_diff": c["mean_diff"],
                       "ci95": c["ci95"], "t_p": c["t_p"], "required": f">= +{TARGETS['gain']} with the CI above 0 "
                       f"(goal +{TARGETS['goal']})", "met": bool(met)}
        small = {a: (arms[a].get("detection_composite") or {}).get("<10 mm", {}).get("sensitivity") for a in have}
        if small.get(best) is not None:
            top = max(v for a, v in small.items() if a in bases and v is not None)
            out["early_lesions"] = {"composite_sensitivity_below_10mm": small, "required":
                                    "best synthesis arm not below the best baseline", "met": small[best] >= top}
    return out


def brief(result: dict) -> dict:
    keys = ("dice", "dice_shifted", "dice_composite", "nsd", "nsd_shifted", "shortcut_gap",
            "lesion_called_background_shifted", "labelled_share", "accepted_per_try")
    out = {"arms": {}}
    for a, s in result["arms"].items():
        out["arms"][a] = {k: s.get(k) for k in keys}
        f = s.get("froc_in_lung")
        if f:
            out["arms"][a].update(froc_cpm_in_lung=f["cpm"], fp_per_scan_in_lung=f["operating_point"]["fp_per_scan"])
    out.update(k=result["k"], mode=result["mode"], steps=result["steps"], runs_done=result["runs_done"],
               runs_planned=result["runs_planned"], targets={n: t.get("met", t.get("met_by")) for n, t in
                                                             result["targets"].items()},
               tests={n: {k: {a: {m: v for m, v in s.items() if m in ("dice", "froc_in_lung")} for a, s in arms.items()}
                          for k, arms in [(k, byk["tests"].get(n, {})) for k, byk in result["by_k"].items()]}
                      for n in (result["by_k"][str(result["k"])]["tests"])},
               seconds=result["seconds"])
    return out
