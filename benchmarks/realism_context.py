#!/usr/bin/env python
"""Realism of synthetic tumours: rule-based vs learned (bbox and full-patch generator context).

Uses the cohorts and the Stage-1 generator of ``experiment_stage2.py`` (``--exp``): real tumours
are the phantom's own liver tumours of the labelled training cases and of the ``test`` cohort;
synthetic tumours are put into the healthy (unlabelled) training cases, two per case, with the
same seeds for every variant, so the variants differ only in the intensity model / context.
For each variant, ``freetumor.evaluation.realism.run_realism`` reports the cross-validated
real-vs-synthetic AUC (0.5 = indistinguishable) and feature distances.

Run: ``python benchmarks/realism_context.py --exp /tmp/stage2-exp --out /tmp/realism``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp", type=Path, required=True, help="output folder of experiment_stage2.py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-case", type=int, default=2)
    args = ap.parse_args()

    from freetumor.data import load_datalist
    from freetumor.evaluation.realism import run_realism
    from freetumor.synthesis import SynthesisOptions, build_synthesizer, synthesize_case

    exp, out = args.exp, args.out
    real = out / "real.json"
    out.mkdir(parents=True, exist_ok=True)
    entries = load_datalist(exp / "train" / "labelled.json") + load_datalist(exp / "test" / "datalist.json")
    real.write_text(json.dumps({"label_map": "abdomen7", "training": entries}))
    healthy = load_datalist(exp / "train" / "unlabelled.json")
    generator = exp / "runs" / "stage1" / "generator.pt"
    variants = {"rule-based": {}, "generator-bbox": {"generator": generator, "context": "bbox"},
                "generator-patch": {"generator": generator, "context": "patch"}}
    results = {}
    for name, kw in variants.items():
        syn = out / "synthetic" / name
        if not syn.exists():
            synth = build_synthesizer(SynthesisOptions("liver", **kw))
            for k, e in enumerate(healthy):
                synthesize_case(synth, e["image"], e["label"], syn / f"case{k:02d}", count=args.per_case,
                                seed=100 + k, case=f"case{k:02d}", png=False)
            # one folder per case keeps outputs all-or-nothing; flatten for run_realism
            flat = out / "synthetic" / f"{name}-flat"
            flat.mkdir(parents=True, exist_ok=True)
            for f in syn.glob("case*/*"):
                (flat / f.name).symlink_to(f.resolve())
        res = run_realism(real, out / "synthetic" / f"{name}-flat", out / "realism" / name, "liver", folds=5, seed=0)
        results[name] = {"summary": res["summary"], "counts": res["counts"],
                         "top_features": res["machine_vtt"].get("top_features")}
        print(name, json.dumps(results[name]["summary"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
