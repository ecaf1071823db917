"""The markdown tables of a results JSON (``--table``): what docs/benchmarks/fewlabel-lung.md shows."""

from __future__ import annotations

import json

from .arms import ARMS
from .summary import FP_RATES


def fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(result: dict) -> str:
    """Markdown tables of a results JSON: per K the arms (centred, shifted, composite Dice, shortcut gap,
    lesion voxels called background, whole-scan FROC, labelled share, QC acceptance), the paired
    differences, and the targets."""
    lines = [f"Runs finished: {result['runs_done']} of {result['runs_planned']} "
             f"(budget {result['steps']} steps; signature {result['signature']})."]
    for k, byk in result["by_k"].items():
        arms = byk["arms"]
        if not arms:
            continue
        seeds = ", ".join(f"{a}: {s['seeds']} seed(s)" for a, s in arms.items())
        lines += ["", f"K = {k} labelled crops ({seeds}):", "",
                  "| arm | Dice centred | Dice shifted | gap | Dice composite | nodule voxels called background "
                  "(shifted) | FROC in lung: sens. @ 1 / 2 / 4 / 8 FP | CPM | FP / scan in lung @ 0.5 "
                  "| labelled share | accepted / try |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in ARMS:
            if arm not in arms:
                continue
            a = arms[arm]
            f = a.get("froc_in_lung") or {}
            sens = " / ".join(fmt(f.get("sensitivity_at", {}).get(str(r)), 2) for r in FP_RATES) if f else "-"
            lines.append(f"| `{arm}` | {fmt(a.get('dice'))} | {fmt(a.get('dice_shifted'))} | {fmt(a.get('shortcut_gap'))} "
                         f"| {fmt(a.get('dice_composite'))} | {fmt(a.get('lesion_called_background_shifted'), 2)} "
                         f"| {sens} | {fmt(f.get('cpm'), 2)} | {fmt((f.get('operating_point') or {}).get('fp_per_scan'), 0)} "
                         f"| {fmt(a.get('labelled_share'), 2)} | {fmt(a.get('accepted_per_try'), 2)} |")
        comps = byk["comparisons"]
        if comps:
            lines += ["", "| paired difference in Dice (per crop, seed-averaged) | centred | shifted (95% CI) | composite |",
                      "|---|---|---|---|"]
            for name, c in comps.items():
                sh_ = c.get("shifted") or {}
                ci = sh_.get("ci95") or [None, None]
                lines.append(f"| `{name.replace('_vs_', '` − `')}` | {fmt((c.get('centred') or {}).get('mean_diff'))} "
                             f"| {fmt(sh_.get('mean_diff'))} ({fmt(ci[0])} to {fmt(ci[1])}) "
                             f"| {fmt((c.get('composite') or {}).get('mean_diff'))} |")
    t = result.get("targets") or {}
    if t:
        lines += ["", f"Targets (K = {result['k']}):", ""]
        for name, v in t.items():
            met = v.get("met")
            met = ("met by " + (", ".join(v["met_by"]) or "no arm")) if "met_by" in v else ("met" if met else "not met")
            shown = {kk: vv for kk, vv in v.items() if kk not in ("met", "met_by", "required")}
            lines.append(f"- {name}: {json.dumps(shown)}; required {v['required']}: **{met}**")
    return "\n".join(lines)
