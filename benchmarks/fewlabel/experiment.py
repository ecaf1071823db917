"""One session of the experiment (:func:`run`): the test sets, the labels and hosts, the step budget and
the signature, every (K, seed, arm) without a run file trained and scored, then the summary of every run
file present."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .arms import ARMS, HOST_RECIPE, SYNTH_RECIPE, arm_model, geometry, run_facts, run_tag, stage0_recipe
from .base import DATASETS, Failure, rel, sh, write_datalist, write_json
from .data import HOSTS, host_slabs, write_crop_chest3
from .evaluate import pooled_set, score_crops, score_scans, split_sets
from .runs import choose_budget, commit_file, load_runs, signature
from .split import SPLIT_SEED, TEST_PATIENTS, crop_entries, labelled_crops, load_split, patient_of
from .summary import arm_summary, comparisons, mean_or_none, targets
from .testsets import (N_COMPOSITE, NODULES_MAP, check_crops_fit, check_test_datalist, composite_crops,
                       prepare_test_set, shifted_crops)


def run(args) -> dict:
    """One session: train and score every (K, seed, arm) of ``args`` without a run file, then the summary
    (the results JSON) of every run file present. A :class:`Failure` before anything is written on bad input."""
    t_start = time.time()
    vois = DATASETS / "lidc_nodule_vois"
    if not vois.is_dir():
        raise Failure(f"{vois}: real CT not available (the LIDC nodule crops)")
    for t in args.test:  # before anything is written
        if not t.is_file():
            raise Failure(f"{t}: datalist not found")
        check_test_datalist(t.resolve())
    entries = {e["case"]: e for e in crop_entries(vois)}
    split = load_split(args.split, sorted(entries), SPLIT_SEED, store=False)
    pool = split["pool"]["crops"]
    pool_patients = len({patient_of(c) for c in pool})
    for k in args.k:
        if k > pool_patients:
            raise Failure(f"K = {k} needs {k} labelled patients, the training pool has {pool_patients}")
    test_cases = split["test"]["crops"][:: args.every]
    test_cases = test_cases[: args.limit] if args.limit else test_cases
    check_crops_fit([entries[c] for c in test_cases], "the LIDC test crops")
    split = load_split(args.split, sorted(entries), SPLIT_SEED)  # now stored (when new)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    nodules_map = work / "nodules_label_map.json"
    nodules_map.write_text(json.dumps(NODULES_MAP))

    # 1. test sets: centred crops, shifted crops, composite, whole scans, --test datalists
    test_cases, val_cases = split["test"]["crops"][:: args.every], split["val"]["crops"]
    if args.limit:
        test_cases, val_cases = test_cases[: args.limit], val_cases[: args.limit]
    test_entries = [entries[c] for c in test_cases]
    crop_sets = {}
    lidc = write_datalist(work / "data" / "lidc_test_crops.json", test_entries, str(nodules_map))
    crop_sets["centred"] = prepare_test_set("lidc_crops", lidc, work, log, nodules_map)
    shifted = shifted_crops(test_entries, work / "data" / "lidc_test_crops_shifted.json", nodules_map)
    crop_sets["shifted"] = prepare_test_set("lidc_crops_shifted", shifted, work, log, nodules_map)
    scans_dir = DATASETS / "lidc_full_scans"
    scan_set = None
    scan_rows = [(p, scans_dir / p / "image.nii.gz", scans_dir / p / "label.nii.gz") for p in TEST_PATIENTS
                 if (scans_dir / p).is_dir()]
    if scan_rows:
        comp = composite_crops(test_entries, scan_rows, work / "data" / "composite.json", nodules_map,
                               N_COMPOSITE // args.every)
        crop_sets["composite"] = prepare_test_set("composite", comp, work, log, nodules_map)
    if not args.no_scans and scan_rows:
        rows = [{"image": str(i), "label": str(lab), "patient": p, "whole_scan": True} for p, i, lab in scan_rows]
        dl = write_datalist(work / "data" / "lidc_full_scans.json", rows, str(nodules_map),
                            keep=("image", "label", "patient", "whole_scan"))
        scan_set = prepare_test_set("lidc_full_scans", dl, work, log, nodules_map)
    extra_sets = [prepare_test_set(f"test{i + 1}_{t.stem}", t.resolve(), work, log, nodules_map)
                  for i, t in enumerate(args.test)]
    pooled = pooled_set(crop_sets, work)
    all_tests = list(crop_sets.values()) + ([scan_set] if scan_set else []) + extra_sets

    # 2. labels (chest3) of the validation crops, hosts
    chest3 = lambda c: work / "labels" / f"{c}.nii.gz"  # noqa: E731
    for c in val_cases:
        write_crop_chest3(entries[c], chest3(c))
    names = args.hosts.split(",") if args.hosts else list(HOSTS)
    for n in names:
        if n not in HOSTS:
            raise Failure(f"--hosts: unknown host {n!r}; choose from {', '.join(HOSTS)}")
    slabs = {n: host_slabs(n, work, log) for n in names if (DATASETS / HOSTS[n][0]).exists()}
    if not any(slabs.values()):
        raise Failure(f"{DATASETS}: no host chest found ({', '.join(HOSTS)})")
    all_slabs = [s for n in slabs for s in slabs[n]]
    hosts_dl = write_datalist(work / "data" / "hosts_all.json", all_slabs, "chest3")

    def seed_data(k: int, seed: int) -> tuple[Path, dict, list[str]]:
        labelled = labelled_crops(pool, k, seed)
        for c in labelled:
            write_crop_chest3(entries[c], chest3(c))
        d = work / "runs" / f"k{k}" / f"s{seed}"
        lab_rows = [{"image": entries[c]["image"], "label": str(chest3(c)), "fold": 1} for c in labelled]
        val_rows = [{"image": entries[c]["image"], "label": str(chest3(c)), "fold": 0} for c in val_cases]
        data = {"labelled": write_datalist(d / "labelled.json", lab_rows, "chest3"),
                "trainval": write_datalist(d / "trainval.json", lab_rows + val_rows, "chest3"),
                "profile": d / "profile.json"}
        return d, data, labelled

    # 3. the step budget (validation plateau of stage0, K = 10, seed 0), then the signature of the runs
    budget = None
    if args.steps is None and args.summary_only:
        stored = args.results / "budget.json"
        if not stored.exists():
            raise Failure(f"{stored}: no step budget chosen yet (run without --summary-only first)")
        budget = json.loads(stored.read_text())
        args.steps = budget["steps"]
    if args.steps is None:
        d, data, _ = seed_data(10, 0)
        budget = choose_budget(data, 0, work, log, args.results / "budget.json",
                               signature(args, split, all_tests, None), hosts_dl, args.placement)
        args.steps = budget["steps"]
        if args.commit:
            commit_file(args.results / "budget.json", f"few-label lung experiment: step budget {args.steps} "
                                                      f"(stage0 validation plateau, Real CT)")
    sig = signature(args, split, all_tests, args.steps)

    # 4. every (K, seed, arm) without a result file: train (or reuse the work folder's run), score, write
    results = args.results.resolve() / "runs"
    done = load_runs(results, sig, args.judge)
    for k in args.k:
        for seed in range(args.seeds):
            if args.summary_only or (args.only_pairs is not None and (k, seed) not in args.only_pairs):
                continue
            todo = [a for a in args.arms if (k, seed, a) not in done]
            if not todo:
                continue
            d, data, labelled = seed_data(k, seed)
            if "procedural" in todo and not data["profile"].exists():
                nod = write_datalist(d / "labelled_nodules.json", [entries[c] for c in labelled], str(nodules_map))
                sh(["lesions", "fit", "--datalist", nod, "--label-map", nodules_map, "--organ", "lung",
                    "--out", data["profile"]], log)
            for arm in todo:
                t0 = time.time()
                model = arm_model(arm, d, data, hosts_dl, seed, args.steps, args.synth_steps, log, args.placement,
                                  args.judge)
                tag = run_tag(arm, args.placement, args.judge)
                run_id = f"k{k}_s{seed}_{arm}{tag}_n{args.steps}"
                tests_out = split_sets(score_crops(model, pooled, work, run_id, log), crop_sets)
                if scan_set is not None:
                    tests_out["scans"] = score_scans(model, scan_set, work, run_id, log)
                for t in extra_sets:
                    r = {}
                    if t["crops"]:
                        r["crops"] = score_crops(model, t, work, run_id, log)
                    if t["scans"]:
                        r["scans"] = score_scans(model, t, work, run_id, log)
                    tests_out[t["name"]] = r
                rec = {"signature": sig, "k": k, "seed": seed, "arm": arm, "steps": args.steps,
                       "placement": args.placement, **({"judge": args.judge} if arm == "generator" else {}),
                       "labelled_crops": labelled, "run": run_facts(model.parent), "tests": tests_out,
                       "seconds": round(time.time() - t0, 1)}
                path = results / f"k{k}_s{seed}_{arm}{tag.replace('-', '_')}.json"
                write_json(path, rec)
                done[(k, seed, arm)] = rec
                if args.commit:
                    commit_file(path, f"few-label lung experiment: K = {k}, seed {seed}, {arm} scored "
                                      f"(Real CT, {args.steps} steps)")
                print(f"K={k} seed {seed} {arm}: centred Dice "
                      f"{mean_or_none(c['dice'] for c in tests_out['centred']['cases'].values())}, shifted "
                      f"{mean_or_none(c['dice'] for c in tests_out['shifted']['cases'].values())} "
                      f"({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)

    # 5. the summary from every run file present
    by_k = {}
    for k in args.k:
        by_arm = {a: [done[(k, s, a)] for s in range(args.seeds) if (k, s, a) in done] for a in ARMS}
        by_arm = {a: v for a, v in by_arm.items() if v}
        arms = {a: arm_summary(v) for a, v in by_arm.items()}
        extra = {}
        for t in extra_sets:
            extra[t["name"]] = {a: arm_summary([{**r, "tests": {"centred": r["tests"][t["name"]]["crops"],
                                                              **({"scans": r["tests"][t["name"]]["scans"]}
                                                                 if "scans" in r["tests"][t["name"]] else {})}}
                                                for r in v]) if "crops" in v[0]["tests"][t["name"]] else {}
                                for a, v in by_arm.items()}
        by_k[str(k)] = {"arms": arms, "comparisons": comparisons(by_arm), "tests": extra,
                        "labelled_crops": {str(s): labelled_crops(pool, k, s) for s in range(args.seeds)}}
        if k == args.k[0]:
            head_by_arm = by_arm
    k0 = str(args.k[0])
    head = by_k[k0]["arms"]
    planned = len(args.k) * args.seeds * len(ARMS)
    counted = [key for key in done if key[0] in args.k and key[1] < args.seeds]
    result = {
        "experiment": "experiment_fewlabel_lung",
        "data": "Real CT (LIDC-IDRI crops and whole chests; pyradiomics and NSCLC-Radiomics host chests)",
        "mode": "quick" if args.quick else "full",
        "command": "python benchmarks/experiment_fewlabel_lung.py " + " ".join(
            rel(a) if os.sep in a else a for a in sys.argv[1:]),
        "k": args.k[0], "steps": args.steps, "synth_steps": args.synth_steps, "signature": sig,
        "budget": budget, "runs_done": len(counted), "runs_planned": planned, "complete": len(counted) >= planned,
        "arms": head, "comparisons": by_k[k0]["comparisons"],
        "targets": targets(head, by_k[k0]["comparisons"], head_by_arm),
        "by_k": by_k,
        "split": {"file": rel(args.split), "seed": split["seed"],
                  **{p: {"crops": len(split[p]["crops"]), "patients": len(split[p]["patients"])}
                     for p in ("pool", "val", "test")},
                  "used": {"test_crops": len(test_cases), "val_crops": len(val_cases)}},
        "test_sets": {name: {"crops": t["n_crops"], "scans": t["n_scans"]} for name, t in
                      [*crop_sets.items(), *([("lidc_full_scans", scan_set)] if scan_set else []),
                       *[(t["name"], t) for t in extra_sets]]},
        "whole_scan_tests": list(TEST_PATIENTS) if scan_set else [],
        "hosts": {"slabs": [{k: (rel(v) if k in ("image", "label") else v) for k, v in s.items()} for s in all_slabs],
                  "lung_ml": round(sum(s["lung_ml"] for s in all_slabs), 1)},
        "placement": args.placement, "judge": args.judge,
        "recipes": {"geometry": geometry(args.placement), "stage0": stage0_recipe(args.placement), "host_arms": HOST_RECIPE, "stage1": SYNTH_RECIPE,
                    "config": "lung-cpu-tiny"},
        "results_folder": rel(args.results),
        "seconds": round(time.time() - t_start, 1),
        "commands": [{**c, "cmd": " ".join(rel(x) if os.sep in x else x for x in c["cmd"].split(" "))} for c in log],
    }
    return result
