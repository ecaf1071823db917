#!/usr/bin/env python
"""Which QC judge lets a generator's lung nodules through? Acceptance per judge, with why it rejects.

The few-label experiment's generator arm (``benchmarks/experiment_fewlabel_lung.py``) needs QC to
accept enough of its synthetic nodules (>= 20 % of tries) to test the generator. This script takes
one (K, seed) of that experiment's work folder, the Stage-1 generator trained there and every
segmentation model found there (``stage0``, ``none``, ``copy_paste``, ``procedural``, and the
``-host`` models of ``--placement host``), and runs the generator arm's own online synthesis
(``train-seg --synthesis generator``, the experiment's recipe) for a few steps with each model as
the QC judge, and the same with the profile arm's nodules (``--synthesis profile``, the lung profile
fitted on the K crops) to tell a weak judge from lesions that do not look like nodules, reading what ``metrics.jsonl`` logs: patches drawn, tries, accepted, and the failed
checks of the rejected tries (``synth_rejects``: ``recall`` = the judge did not find the nodule,
``contrast`` / ``visible`` / ``inside`` = the lesion itself). The steps are the same for every judge
(same seed, same host patches, same generator), so the judges see the same lesions.

    python benchmarks/qc_judge_lung.py --work fl/work --k 10 --seed 0 --out benchmarks/results/qc_judge_lung.json

Real CT (LIDC crops, host chests); it trains nothing but the few judged steps (each judge's run
folder is in ``<work>/qc_judge/``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import portable  # noqa: E402

HERE = Path(__file__).resolve().parent
JUDGES = ("stage0", "none", "copy_paste", "procedural", "stage0-host", "none-host")
CONTEXTS = {"stage0": ("patch", "bbox"), "none": ("patch", "bbox")}  # others: patch only


def experiment():
    spec = importlib.util.spec_from_file_location("experiment_fewlabel_lung", HERE / "experiment_fewlabel_lung.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def qc_threshold() -> float:
    from freetumor.config import load_config

    return float(load_config("lung-cpu-tiny").qc.threshold)


def tally(exp, run: Path) -> dict:
    """What the judged steps of ``run`` logged (the experiment's own :func:`run_facts`), with the share of
    failed checks that were the judge missing the nodule."""
    facts = exp.run_facts(run)
    status, failed = facts["synth_status"], facts.get("failed_checks", {})
    n_failed = sum(failed.values())
    return {"status": status, "tries": facts["synth_tries"],
            "patches_drawn": status.get("accepted", 0) + status.get("rejected", 0),
            "accepted": status.get("accepted", 0), "accepted_per_try": facts["accepted_per_try"],
            "accepted_per_patch_drawn": facts["accepted_per_patch_drawn"], "failed_checks": failed,
            "recall_share_of_failed_checks": round(failed.get("recall", 0) / n_failed, 4) if n_failed else None}


def fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(result: dict) -> str:
    """The acceptance table of a result JSON (what the documentation shows)."""
    lines = [f"K = {result['k']}, seed {result['seed']}; {result['steps_per_judge']} judged steps per judge; "
             f"QC keeps a nodule when the judge finds > {result['qc_threshold']:g} of it.", "",
             "| lesions | judge: the model of arm (-host: trained with --placement host) | QC input | accepted / tries | checks failed: judge missed it "
             "(recall) / lesion (contrast, visible, inside) | judge's Dice: validation crops / composite |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fails = r["failed_checks"]
        lesion_fails = sum(v for k, v in fails.items() if k != "recall")
        lines.append(f"| {r['lesions']} | `{r['judge']}` | {r['context']} | {r['accepted']} / {r['tries']} "
                     f"({100 * (r['accepted_per_try'] or 0):.0f} %) | {fails.get('recall', 0)} / {lesion_fails} | "
                     f"{fmt(r['judge_val_dice'])} / {fmt(r.get('judge_composite_dice'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, metavar="RESULTS.json", help="only print the markdown table of a result")
    ap.add_argument("--work", type=Path, help="the few-label experiment's work folder")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=40, help="judged steps per judge (default 40)")
    ap.add_argument("--out", type=Path, help="result JSON")
    args = ap.parse_args(argv)
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())))
        return 0
    if args.work is None or args.out is None:
        ap.error("--work and --out are required (or --table RESULTS.json)")
    exp = experiment()
    d = args.work / "runs" / f"k{args.k}" / f"s{args.seed}"
    hosts = args.work / "data" / "hosts_all.json"
    budget = json.loads((exp.RESULTS / "budget.json").read_text())["steps"]
    gen = d / "stage1_n100" / "generator.pt"
    for p in (d / "trainval.json", hosts, gen, d / "profile.json"):
        if not p.exists():
            print(f"error: {p}: not found (run the few-label experiment for K = {args.k}, seed {args.seed} first)",
                  file=sys.stderr)
            return 1
    rows = []
    t0 = time.time()
    lesions = {"generator": ["--synthesis", "generator", "--generator", gen],
               "profile": ["--synthesis", "profile", "--profile", d / "profile.json"]}
    for kind, synthesis in lesions.items():
        for judge in JUDGES:
            model = d / f"{judge}_n{budget}" / "best.pt"
            if not model.exists():
                continue
            for context in CONTEXTS.get(judge, ("patch",)) if kind == "generator" else ("patch",):
                name = f"{judge}_{context}" if kind == "generator" else f"{kind}_{judge}_{context}"
                run = args.work / "qc_judge" / f"k{args.k}_s{args.seed}" / name
                if not (run / "final.json").exists():
                    recipe = [*exp.GEOMETRY, *exp.HOST_RECIPE, f"train.seed={args.seed}", "train.val_every=100000",
                              f"qc.context={context}", "data.num_workers=0"]
                    exp.sh(["train-seg", "--config", "lung-cpu-tiny", "--datalist", d / "trainval.json", "--out",
                            run, "--max-steps", args.steps, *exp.sets(recipe), "--unlabeled", hosts, *synthesis,
                            "--qc-segmentor", model], [], quiet=False)
                best = exp.best_val(d / f"{judge}_n{budget}")
                rows.append({"lesions": kind, "judge": judge, "context": context, "judge_model": portable(str(model)),
                             "judge_val_dice": best, **tally(exp, run)})
                print(f"{kind:9s} {judge:12s} {context:5s} accepted {rows[-1]['accepted']}/{rows[-1]['tries']} "
                      f"tries, failed checks {rows[-1]['failed_checks']}", file=sys.stderr, flush=True)
    composite = {}
    for judge in JUDGES:  # the judge's Dice on real nodules in real lung (the experiment's composite test)
        for rf in sorted((exp.RESULTS / "runs").glob(f"k{args.k}_s{args.seed}_*.json")) + sorted(
                (exp.REPO / "benchmarks" / "results" / "fewlabel_lung_host" / "runs").glob(
                    f"k{args.k}_s{args.seed}_*.json")):
            r = json.loads(rf.read_text())
            name = r["arm"] + ("-host" if r.get("placement") == "host" else "")
            if name == judge and "composite" in r["tests"]:
                dice = [c["dice"] for c in r["tests"]["composite"]["cases"].values() if c.get("dice") is not None]
                composite[judge] = round(statistics.mean(dice), 4) if dice else None
    for row in rows:
        row["judge_composite_dice"] = composite.get(row["judge"])
    out = {"benchmark": "qc_judge_lung", "data": "Real CT (LIDC-IDRI crops; host lung of 3 real chests)",
           "command": "python benchmarks/qc_judge_lung.py " + portable(" ".join(map(str, sys.argv[1:] if argv is None
                                                                                  else argv))),
           "k": args.k, "seed": args.seed, "steps_per_judge": args.steps, "qc_threshold": qc_threshold(),
           "generator": portable(str(gen)), "rows": rows, "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({f"{r['lesions']}/{r['judge']}/{r['context']}": r["accepted_per_try"] for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
