#!/usr/bin/env python
"""How much context does quality control need? QC decisions with a smaller input vs the full patch.

Issue 14 (right-sized QC context). The paper's QC runs the frozen segmentor on the training patch
around each synthetic tumour. This script draws the same tumours once and judges each with every
context variant of :class:`freetumor.quality.QualityControl`:

* ``patch``: the training patch (the reference);
* ``fit-M``: the lesion box plus ``M`` network voxels either side, rounded up to the network's input
  multiple and filled with the scan (at most the patch);
* ``bbox-M``: the box plus ``M`` voxels, zero-padded to the input multiple (the earlier option).

Per segmentor and variant it reports, against ``patch`` on the same tumours: the agreement of the
segmentor's decision (recall > ``qc.threshold``) and of the whole QC decision (with the cheap
checks), the mean recall and its difference, how many tumours the patch accepts, the mean input
size (network voxels, relative to the patch) and the time per tumour of the segmentor forwards.
A variant ``passes`` when the decision agreement is >= 0.95 and the mean recall is within 0.03 of
``patch`` (issue 14's rule for a default).

Run (the figures in docs/benchmarks/qc-context.md)::

    python benchmarks/qc_context_agreement.py --name phantom --organ liver \\
        --hosts /tmp/demo0/phantom-unlabelled/datalist.json --generator /tmp/demo0/stage1-run/generator.pt \\
        --segmentor /tmp/demo0/baseline-run/best.pt --segmentor /tmp/demo0/stage2-run/best.pt \\
        --tumours 48 --out benchmarks/results/qc_context_phantom.json

Tumours: the generator's learned difference maps (or the rules without ``--generator``) in the
hosts' organ, one tumour per draw, size ``mix``, seeds 0..N-1 cycling over the hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import portable  # noqa: E402

import numpy as np

AGREEMENT_MIN = 0.95
RECALL_TOLERANCE = 0.03


def variants(margins: list[int], bbox_margins: list[int]) -> list[tuple[str, str, int]]:
    """(name, context, margin): the reference first."""
    return [("patch", "patch", 0), *((f"fit-{m}", "fit", m) for m in margins),
            *((f"bbox-{m}", "bbox", m) for m in bbox_margins)]


def summarise(rows: list[dict], threshold: float) -> dict:
    """Per variant, the agreement with ``patch`` on the same tumours (``rows``: one dict per tumour,
    ``{variant: {"recall", "accepted", "voxels", "ms"}}``).

    Example:
        >>> rows = [{"patch": {"recall": 0.9, "accepted": True, "voxels": 8, "ms": 2.0},
        ...          "fit-4": {"recall": 0.8, "accepted": True, "voxels": 2, "ms": 1.0}},
        ...         {"patch": {"recall": 0.6, "accepted": False, "voxels": 8, "ms": 2.0},
        ...          "fit-4": {"recall": 0.75, "accepted": True, "voxels": 2, "ms": 1.0}}]
        >>> s = summarise(rows, 0.7)["fit-4"]
        >>> s["segmentor_agreement"], s["decision_agreement"], s["mean_recall_difference"], s["passes"]
        (0.5, 0.5, 0.025, False)
    """
    ref = [r["patch"] for r in rows]
    out = {}
    for name in rows[0]:
        v = [r[name] for r in rows]
        seg_agree = [(a["recall"] > threshold) == (b["recall"] > threshold) for a, b in zip(v, ref)]
        dec_agree = [a["accepted"] == b["accepted"] for a, b in zip(v, ref)]
        diffs = [a["recall"] - b["recall"] for a, b in zip(v, ref)]
        s = {
            "tumours": len(v),
            "segmentor_agreement": round(float(np.mean(seg_agree)), 4),
            "decision_agreement": round(float(np.mean(dec_agree)), 4),
            "mean_recall": round(float(np.mean([a["recall"] for a in v])), 4),
            "mean_recall_difference": round(float(np.mean(diffs)), 4),
            "mean_abs_recall_difference": round(float(np.mean(np.abs(diffs))), 4),
            "accepted": round(float(np.mean([a["accepted"] for a in v])), 4),
            "segmentor_accepted": round(float(np.mean([a["recall"] > threshold for a in v])), 4),
            "input_voxels_vs_patch": round(float(np.mean([a["voxels"] / b["voxels"] for a, b in zip(v, ref)])), 4),
            "ms_per_tumour": round(float(np.mean([a["ms"] for a in v])), 2),
        }
        s["passes"] = bool(min(s["segmentor_agreement"], s["decision_agreement"]) >= AGREEMENT_MIN
                           and abs(s["mean_recall_difference"]) <= RECALL_TOLERANCE)
        out[name] = s
    return out


def draw_tumours(hosts: list[dict], organ: str, label_map, generator, n: int, size: str):
    """``n`` synthetic tumours, one per draw: (host index, before box, image after, box, lesion mask on
    the box, seed); hosts are loaded once each, in turn."""
    from freetumor.generator import LearnedDifference
    from freetumor.io import load_volume
    from freetumor.synthesis import Synthesizer

    diff = LearnedDifference(generator) if generator else None
    synth = Synthesizer(organ, label_map=label_map, size=size, difference=diff)
    per_host = [list(range(k, n, len(hosts))) for k in range(len(hosts))]
    for h, seeds in enumerate(per_host):
        if not seeds:
            continue
        image, label = load_volume(hosts[h]["image"]), load_volume(hosts[h]["label"])
        for seed in seeds:
            out = synth(image, label, seed=seed)
            m = out.masks[0]
            box = tuple(slice(max(0, s.start - 6), min(k, s.stop + 6)) for s, k in zip(m.slices, image.shape))
            yield h, image, label, image.array[box], out.image.array, box, m.full(image.shape)[box], seed


def measure(args) -> dict:
    import torch

    from freetumor.config import QCConfig
    from freetumor.grids import Grid
    from freetumor.labels import get_label_map
    from freetumor.organs import get_organ
    from freetumor.quality import QualityControl

    doc = json.loads(Path(args.hosts).read_text())
    base = Path(args.hosts).resolve().parent
    hosts = [{k: str((base / e[k]) if not os.path.isabs(e[k]) else e[k]) for k in ("image", "label")}
             for e in doc["training"]]
    label_map = args.label_map or doc.get("label_map")
    lm = get_label_map(label_map)
    organ = get_organ(args.organ)
    settings = QCConfig() if args.threshold is None else QCConfig(threshold=args.threshold)
    vs = variants(args.margins, args.bbox_margins)
    qcs = {seg: {name: QualityControl(seg, settings, context=ctx, margin=m) for name, ctx, m in vs}
           for seg in args.segmentor}
    pending = {seg: {name: [] for name, *_ in vs} for seg in args.segmentor}
    voxels = {seg: {name: [] for name, *_ in vs} for seg in args.segmentor}
    tumours = []
    t0 = time.perf_counter()
    for h, image, label, before, after, box, fake, seed in draw_tumours(
            hosts, organ.name, label_map, args.generator, args.tumours, args.size):
        host = lm.organ_mask(label.array, organ.name) | lm.tumour_mask(label.array, organ.name)
        grid = Grid.of(image)
        tumours.append({"host": Path(hosts[h]["image"]).name, "seed": seed,
                        "voxels_native": int(fake.sum())})
        for seg in args.segmentor:
            for name, *_ in vs:
                p = qcs[seg][name].prepare_lesion(before, after, box, fake, host, grid, organ)
                pending[seg][name].append(p)
                voxels[seg][name].append(int(np.prod(p.net_input.shape)))
    draw_s = time.perf_counter() - t0
    per_seg = {}
    for seg in args.segmentor:
        decisions, ms = {}, {}
        with torch.no_grad():  # warm-up: the first forward of a process pays one-off costs
            qcs[seg]["patch"].judge(pending[seg]["patch"][:1])
        for name, *_ in vs:
            t = time.perf_counter()
            with torch.no_grad():
                decisions[name] = qcs[seg][name].judge(pending[seg][name])
            ms[name] = 1000 * (time.perf_counter() - t) / max(1, len(pending[seg][name]))
        rows = [{name: {"recall": float(decisions[name][i].scores["recall"]),
                        "accepted": bool(decisions[name][i].accepted),
                        "voxels": voxels[seg][name][i], "ms": ms[name]} for name, *_ in vs}
                for i in range(len(tumours))]
        per_seg[str(seg)] = {"threshold": settings.threshold, "variants": summarise(rows, settings.threshold),
                             "recalls": {name: [r[name]["recall"] for r in rows] for name, *_ in vs}}
    passing = {}
    for name, *_ in vs[1:]:
        passing[name] = all(s["variants"][name]["passes"] for s in per_seg.values())
    return {
        "benchmark": "qc_context_agreement",
        "command": "python benchmarks/qc_context_agreement.py " + " ".join(sys.argv[1:]),
        "name": args.name,
        "hosts": str(args.hosts),
        "host_cases": len(hosts),
        "organ": organ.name,
        "generator": str(args.generator) if args.generator else None,
        "size": args.size,
        "tumours": tumours,
        "rule": f"decision agreement >= {AGREEMENT_MIN} and |mean recall - patch| <= {RECALL_TOLERANCE}",
        "segmentors": per_seg,
        "passes_for_every_segmentor": passing,
        "draw_s": round(draw_s, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform()},
    }


def table(result: dict) -> str:
    """A markdown table of one result file: one row per context, the segmentors S1, S2, ... side by
    side (named below the table)."""
    segs = list(result["segmentors"].items())
    names = " / ".join(f"S{i + 1}" for i in range(len(segs)))

    def each(vs, key, fmt):
        return " / ".join(format(v[key], fmt) for v in vs)

    lines = [f"| context | input vs patch | decisions agree ({names}) | mean recall − patch ({names}) | passes |",
             "|---|---|---|---|---|"]
    for name in segs[0][1]["variants"]:
        vs = [s["variants"][name] for _seg, s in segs]
        if name == "patch":
            lines.append(f"| patch (reference) | 1.00 | accepts {each(vs, 'accepted', '.2f')} | "
                         f"recall {each(vs, 'mean_recall', '.3f')} | — |")
            continue
        size = statistics.mean(v["input_voxels_vs_patch"] for v in vs)
        ok = "yes" if result["passes_for_every_segmentor"][name] else "no"
        lines.append(f"| {name} | {size:.2f} | {each(vs, 'decision_agreement', '.3f')} | "
                     f"{each(vs, 'mean_recall_difference', '+.3f')} | {ok} |")
    lines.append("")
    lines.append("; ".join(f"S{i + 1} `{seg}`" for i, (seg, _s) in enumerate(segs)))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segmentor", type=Path, action="append", help="a trained segmentor (repeat for several)")
    ap.add_argument("--generator", type=Path, help="a Stage-1 generator.pt (default: rule-based tumours)")
    ap.add_argument("--hosts", type=Path, help="datalist of host cases (image + organ label)")
    ap.add_argument("--label-map", help="the hosts' label map (default: the datalist's)")
    ap.add_argument("--organ", default="liver")
    ap.add_argument("--name", default="", help="a name for the data (stored in the JSON)")
    ap.add_argument("--tumours", type=int, default=48)
    ap.add_argument("--size", default="mix")
    ap.add_argument("--margins", type=lambda s: [int(v) for v in s.split(",")], default=[0, 4, 8, 16])
    ap.add_argument("--bbox-margins", type=lambda s: [int(v) for v in s.split(",") if v], default=[8])
    ap.add_argument("--threshold", type=float, help="QC recall threshold (default qc.threshold)")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    ap.add_argument("--table", type=Path, nargs="+", metavar="RESULT.json", help="print the tables of stored results")
    args = ap.parse_args(argv)
    if args.table:
        for p in args.table:
            r = json.loads(p.read_text())
            print(f"{r['name']} ({r['host_cases']} hosts, {len(r['tumours'])} tumours, threshold "
                  f"{next(iter(r['segmentors'].values()))['threshold']}):\n")
            print(table(r) + "\n")
        return 0
    if not args.segmentor or not args.hosts:
        ap.error("--segmentor and --hosts are required (or --table)")
    result = measure(args)
    text = portable(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(table(result))
    print(json.dumps(result["passes_for_every_segmentor"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
