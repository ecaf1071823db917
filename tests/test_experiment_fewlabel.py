"""benchmarks/experiment_fewlabel_lung.py (an entry point over the package benchmarks/fewlabel/): the
package's layering, the patient-wise split, the arms' command lines and the stored runs' signature
(no training), --quick end to end on a tiny real subset, --test with a datalist in another folder, and
its one-line errors. Real CT: skipped without ../shared/datasets."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATASETS, REPO, need

SCRIPT = REPO / "benchmarks" / "experiment_fewlabel_lung.py"
PACKAGE = REPO / "benchmarks" / "fewlabel"
VOIS = DATASETS / "lidc_nodule_vois"


def load_experiment():
    spec = importlib.util.spec_from_file_location("experiment_fewlabel_lung", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_experiment(*args, timeout=1800):  # minutes of CPU work on a busy machine: a generous limit
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               FREETUMOR_DATASETS=str(DATASETS))
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def parts_of(split):
    return {p: set(split[p]["crops"]) for p in ("pool", "val", "test")}


def test_split_is_patient_wise_and_stable(tmp_path):
    exp = load_experiment()
    # synthetic names: several crops per patient, the forced test patients among them
    cases = [f"LIDC-IDRI-{p:04d}_R_{n}" for p in range(1, 120) for n in range(1 + p % 3)]
    a, b = exp.make_split(cases, seed=0), exp.make_split(list(reversed(cases)), seed=0)
    assert a == b                                                  # stable: same split on a rerun
    parts = parts_of(a)
    assert set().union(*parts.values()) == set(cases) and sum(map(len, parts.values())) == len(cases)
    owners = {p: {exp.patient_of(c) for c in cs} for p, cs in parts.items()}
    assert not (owners["pool"] & owners["val"] or owners["pool"] & owners["test"] or owners["val"] & owners["test"])
    assert {"LIDC-IDRI-0001", "LIDC-IDRI-0003"} <= owners["test"]
    assert exp.make_split(cases, seed=1) != a
    # the stored file is reused as it is; a file for other crops is refused with one line
    path = tmp_path / "split.json"
    first = exp.load_split(path, cases, 0)
    assert json.loads(path.read_text()) == first and exp.load_split(path, cases, 0) == first
    with pytest.raises(exp.Failure, match="split.json: the stored split lists"):
        exp.load_split(path, cases[:-1], 0)
    # K labelled crops: from K different pool patients, deterministic, the K = 10 ones inside K = 30
    pool = sorted(parts["pool"])
    k10, k30 = exp.labelled_crops(pool, 10, 0), exp.labelled_crops(pool, 30, 0)
    assert k10 == exp.labelled_crops(pool, 10, 0) and k10 == k30[:10]
    assert len({exp.patient_of(c) for c in k30}) == 30 and set(k30) <= set(pool)
    assert exp.labelled_crops(pool, 10, 1) != k10


def test_package_layers_have_no_cycle_and_the_script_reexports_them():
    """Each module of benchmarks/fewlabel imports only the modules listed before it in the package's
    docstring (so no cycle), and every public name of the parts is reachable from the script."""
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    order = [m for line in doc.splitlines() for m in re.findall(r"``(\w+)``", line)
             if (PACKAGE / f"{m}.py").exists()]
    assert sorted(order) == sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    exp = load_experiment()
    for i, name in enumerate(order):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        assert ast.get_docstring(tree), name
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.module in order[:i], f"{name} imports {node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(m.split(".")[0] in ("fewlabel", "experiment_fewlabel_lung") for m in mods), name
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                assert getattr(exp, node.name) is getattr(sys.modules[f"fewlabel.{name}"], node.name)


def test_arms_command_lines_without_training(tmp_path, monkeypatch):
    """Every arm's train-seg / train-synth command line (recorded, nothing trained): equal real-label
    exposure (stage0 one labelled sample per step; host arms two, half of them labelled), the synthesis of
    each arm, the generator's Stage 1 judged by stage0 (or by none with --judge none), and the run folders."""
    exp = load_experiment()
    calls = []

    def record(args, log, quiet=True):  # a finished run: its final.json, nothing trained
        calls.append(args)
        (args[args.index("--out") + 1]).mkdir(parents=True)
        (args[args.index("--out") + 1] / "final.json").write_text("{}")

    monkeypatch.setattr(sys.modules["fewlabel.arms"], "sh", record)
    d, hosts = tmp_path / "k10" / "s0", tmp_path / "hosts.json"
    data = {"labelled": d / "labelled.json", "trainval": d / "trainval.json", "profile": d / "profile.json"}

    def line(args):
        return " ".join(map(str, args)).replace(str(tmp_path), "T")

    sets = lambda opts: " ".join(f"--set {o}" for o in opts)  # noqa: E731
    geo = sets(exp.GEOMETRY)
    stage0 = (f"train-seg --config lung-cpu-tiny --datalist T/k10/s0/trainval.json --out T/k10/s0/stage0_n50 "
              f"--max-steps 50 {geo} --set train.batch_size=1 --set train.seed=3 --set train.val_every=10 "
              f"--set train.checkpoint_every=10")
    host = (f"{geo} {sets(exp.HOST_RECIPE)} --set train.seed=3 --set train.val_every=10 --set train.checkpoint_every=10 "
            f"--unlabeled T/hosts.json")
    expect = {
        "stage0": [stage0],
        "none": [stage0, f"train-seg --config lung-cpu-tiny --datalist T/k10/s0/trainval.json --out T/k10/s0/none_n50 "
                         f"--max-steps 50 {host}"],
        "copy_paste": [stage0, f"train-seg --config lung-cpu-tiny --datalist T/k10/s0/trainval.json --out "
                               f"T/k10/s0/copy_paste_n50 --max-steps 50 {host} --synthesis copy_paste"],
        "procedural": [stage0, f"train-seg --config lung-cpu-tiny --datalist T/k10/s0/trainval.json --out "
                               f"T/k10/s0/procedural_n50 --max-steps 50 {host} --synthesis profile --profile "
                               f"T/k10/s0/profile.json --set data.num_workers=2"],
        "generator": [stage0, f"train-synth --config lung-cpu-tiny --datalist T/k10/s0/labelled.json --unlabeled "
                              f"T/hosts.json --segmentor T/k10/s0/stage0_n50/best.pt --out T/k10/s0/stage1_n7 "
                              f"--max-steps 7 {geo} {sets(exp.SYNTH_RECIPE)} --set train.seed=3",
                      f"train-seg --config lung-cpu-tiny --datalist T/k10/s0/trainval.json --out T/k10/s0/generator_n50 "
                      f"--max-steps 50 {host} --synthesis generator --generator T/k10/s0/stage1_n7/generator.pt "
                      f"--qc-segmentor T/k10/s0/stage0_n50/best.pt"],
    }
    assert tuple(expect) == exp.ARMS
    for arm, want in expect.items():
        calls.clear()
        shutil.rmtree(d, ignore_errors=True)
        model = exp.arm_model(arm, d, data, hosts, 3, 50, 7, [])
        assert [line(c) for c in calls] == want, arm
        assert model == d / f"{arm}_n50" / "best.pt"
    # --judge none: Stage 1 and QC judged by the none arm's model, in their own run folders
    calls.clear()
    shutil.rmtree(d)
    exp.arm_model("generator", d, data, hosts, 3, 50, 7, [], "random", "none")
    outs = [c[c.index("--out") + 1].name for c in calls]
    assert outs == ["stage0_n50", "none_n50", "stage1-jnone_n7", "generator-jnone_n50"]
    assert "--segmentor T/k10/s0/none_n50/best.pt" in line(calls[2])
    assert "--qc-segmentor T/k10/s0/none_n50/best.pt" in line(calls[3])
    # finished run folders are reused: nothing trained again
    calls.clear()
    assert exp.arm_model("generator", d, data, hosts, 3, 50, 7, [], "random", "none") == \
        d / "generator-jnone_n50" / "best.pt" and calls == []


def test_stored_runs_keep_their_signature():
    """Resuming: the default command's signature of the committed summary's split, test sets and budget is
    the one the committed run files and budget.json carry (no real CT needed)."""
    exp = load_experiment()
    stored = json.loads((REPO / "benchmarks" / "results" / "fewlabel_lung.json").read_text())
    args = exp.parse_args(["--out", "results.json", "--work", "work", "--commit"])
    split = json.loads(exp.SPLIT_FILE.read_text())
    names = {"centred": "lidc_crops", "shifted": "lidc_crops_shifted"}  # prepare_test_set's names
    tests = [{"name": names.get(n, n), "n_crops": t["crops"], "n_scans": t["scans"]}
             for n, t in stored["test_sets"].items()]
    assert exp.signature(args, split, tests, stored["steps"]) == stored["signature"]
    budget = json.loads((exp.RESULTS / "budget.json").read_text())
    assert budget["steps"] == stored["steps"] and exp.signature(args, split, tests, None) == budget["signature"]
    assert len(exp.load_runs(exp.RESULTS / "runs", stored["signature"])) >= stored["runs_done"]


def test_stored_split_matches_the_shared_crops():
    need(VOIS)
    exp = load_experiment()
    cases = [e["case"] for e in exp.crop_entries(VOIS)]
    stored = json.loads(exp.SPLIT_FILE.read_text())
    fresh = exp.make_split(cases, exp.SPLIT_SEED)
    assert all(stored[p] == fresh[p] for p in ("pool", "val", "test"))   # the committed split is the seeded one
    parts = parts_of(stored)
    owners = {p: {exp.patient_of(c) for c in cs} for p, cs in parts.items()}
    assert not (owners["pool"] & owners["test"] or owners["val"] & owners["test"] or owners["pool"] & owners["val"])
    assert len(parts["test"]) >= 150
    assert {"LIDC-IDRI-0001", "LIDC-IDRI-0003"} <= owners["test"]   # the whole test scans' patients


def mini_scan(folder: Path) -> None:
    """A small whole chest in another folder: LIDC-IDRI-0001 every 2nd voxel in-plane, 40 slices around
    its nodule, the scanner padding (-2048) kept; label likewise."""
    from freetumor.io import Volume, load_volume, save_volume

    src = need(DATASETS / "lidc_full_scans" / "LIDC-IDRI-0001")
    img, lab = load_volume(src / "image.nii.gz"), load_volume(src / "label.nii.gz")
    zs = np.nonzero(np.asarray(lab.array).any((0, 1)))[0]
    z0 = max(0, int(zs.mean()) - 20)
    scale = np.diag([2.0, 2.0, 1.0, 1.0])
    shift = np.eye(4)
    shift[2, 3] = z0
    affine = img.affine @ shift @ scale
    (folder / "scans").mkdir(parents=True)
    save_volume(Volume(np.ascontiguousarray(img.array[::2, ::2, z0:z0 + 40]), affine), folder / "scans" / "chest.nii.gz")
    save_volume(Volume(np.ascontiguousarray(lab.array[::2, ::2, z0:z0 + 40]), affine), folder / "scans" / "chest_label.nii.gz")


def another_test_datalist(other: Path) -> Path:
    """A datalist in another folder with relative image / label / label-map paths: a crop and a small whole chest."""
    mini_scan(other)
    crop = sorted((VOIS / "images").glob("LIDC-IDRI-0003_*.nii.gz"))[0]
    (other / "crops").mkdir()
    for kind in ("images", "labels"):
        (other / "crops" / f"{kind}_{crop.name}").write_bytes((VOIS / kind / crop.name).read_bytes())
    (other / "maps").mkdir()
    (other / "maps" / "nodule.json").write_text(json.dumps(
        {"name": "nodule", "organs": {"lung": {"tumor": 1}}, "labels": [0, 1]}))
    (other / "list.json").write_text(json.dumps({"label_map": "maps/nodule.json", "training": [
        {"image": f"crops/images_{crop.name}", "label": f"crops/labels_{crop.name}"},
        {"image": "scans/chest.nii.gz", "label": "scans/chest_label.nii.gz"}]}))
    return other / "list.json"


@pytest.mark.slow
def test_quick_end_to_end_with_another_test_datalist(tmp_path):
    """--quick on a tiny subset (6 test / 6 validation crops, one host, 4 steps) through the CLI, every arm;
    a rerun and --summary-only train nothing. Then --test on a datalist in another folder (a crop and a small
    whole chest), scored with the stage0 model of the same work folder (reused, not trained again): the
    --test path costs one arm's scoring, not five (the arms' training and pooled scoring are the first run's)."""
    need(VOIS)
    need(DATASETS / "pyradiomics_lung")
    out = tmp_path / "run" / "quick.json"
    common = ["--quick", "--out", out, "--split", tmp_path / "split.json", "--limit", 6, "--hosts",
              "pyradiomics_lung1", "--no-scans", "--steps", 4, "--synth-steps", 2]
    r = run_experiment(*common)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout)
    written = json.loads(out.read_text())
    work = tmp_path / "run" / "quick_work"
    assert work.is_dir()
    assert set(printed["arms"]) == {"stage0", "none", "copy_paste", "procedural", "generator"}
    for arm, s in printed["arms"].items():
        for key in ("dice", "dice_shifted", "dice_composite"):
            assert 0.0 <= s[key] <= 1.0 and s[key] == written["arms"][arm][key]
        assert written["arms"][arm]["n_centred"] == 6 and written["arms"][arm]["n_shifted"] == 6
        assert set(written["arms"][arm]["detection"]) == {"<10 mm", "10-20 mm", ">=20 mm"}
        assert s["shortcut_gap"] == pytest.approx(s["dice"] - s["dice_shifted"], abs=1e-3)
    # equal real-label exposure: one labelled sample per step in stage0, one of two in the host arms
    assert written["arms"]["stage0"]["labelled_share"] == 1.0
    assert all(written["arms"][a]["labelled_share"] == 0.5 for a in ("none", "copy_paste", "procedural", "generator"))
    assert written["arms"]["copy_paste"]["synth_status"].get("accepted", 0) > 0
    assert written["mode"] == "quick" and written["k"] == 10 and written["runs_done"] == 5
    assert {"none_vs_stage0", "procedural_vs_copy_paste", "generator_vs_none"} <= set(written["comparisons"])
    assert set(written["comparisons"]["procedural_vs_stage0"]) == {"centred", "shifted", "composite"}
    assert {"shortcut", "none_vs_stage0_shifted", "gain"} <= set(written["targets"])
    # the shifted crops: the same crops, not at the centre of a larger window of noisy air
    from freetumor.io import load_volume

    shifted = sorted((work / "data" / "shifted" / "images").glob("*.nii.gz"))
    assert len(shifted) == 6
    crop = load_volume(VOIS / "images" / shifted[0].name)
    big = load_volume(shifted[0])
    assert all(b > c for b, c in zip(big.shape, crop.shape)) and np.asarray(big.array).min() >= -1024
    # one result file per run, with what it saw; no machine paths in the summary
    runs = sorted((work / "results" / "runs").glob("*.json"))
    assert [p.name for p in runs] == sorted(f"k10_s0_{a}.json" for a in printed["arms"])
    assert str(tmp_path) not in json.dumps({k: v for k, v in written.items() if k != "commands"})
    trained = [c["cmd"].split()[1] for c in written["commands"]]
    assert trained.count("train-seg") == 5 and trained.count("train-synth") == 1
    # a rerun trains and predicts nothing: every run has its result file (only the statistics are redone)
    r2 = run_experiment(*common)
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = json.loads(out.read_text())
    assert again["commands"] == [] and again["arms"] == written["arms"]

    # --test on a datalist in another folder, relative paths: the same work folder, so the stage0 model and its
    # pooled scores are reused and only the new test set is scored (its own results folder: another signature)
    other = tmp_path / "elsewhere" / "nodules"
    test_list = another_test_datalist(other)
    with_test = tmp_path / "run" / "with_test.json"
    r4 = run_experiment(*[c if c != out else with_test for c in common], "--work", work, "--test", test_list,
                        "--arms", "stage0", "--results", tmp_path / "results_with_test")
    assert r4.returncode == 0, r4.stderr[-3000:]
    scored = json.loads(with_test.read_text())
    cmds = [c["cmd"].split()[1] for c in scored["commands"]]
    assert "train-seg" not in cmds and "train-synth" not in cmds and cmds.count("predict") == 2, cmds
    assert scored["signature"] != written["signature"] and scored["runs_done"] == 1
    assert scored["arms"]["stage0"]["dice"] == written["arms"]["stage0"]["dice"]  # the same model, the same scores
    (name, extra), = scored["by_k"]["10"]["tests"].items()
    assert set(extra) == {"stage0"}
    for arm, s in extra.items():
        assert 0.0 <= s["dice"] <= 1.0
        f = s["froc_in_lung"]
        assert f["lesions"] == 1 and f["scans"] == 1 and set(f["sensitivity_at"]) == {"1", "2", "4", "8"}
    # the padding was masked in a copy, the input is unchanged
    padded = work / "tests" / name / "images" / "scans_padded"
    (copy,) = list(padded.glob("*.nii.gz"))
    assert np.asarray(load_volume(copy).array).min() >= -1024
    assert np.asarray(load_volume(other / "scans" / "chest.nii.gz").array).min() == -2048

    # --summary-only: the summary from the result files alone (the trained models removed), nothing trained
    shutil.rmtree(work / "runs")
    again_out = tmp_path / "again" / "s.json"
    r3 = run_experiment(*[c if c != out else again_out for c in common], "--summary-only", "--work", work)
    assert r3.returncode == 0, r3.stderr[-3000:]
    summary = json.loads(again_out.read_text())
    assert summary["arms"] == written["arms"] and summary["commands"] == []


def test_bad_test_datalist_is_one_line_and_writes_nothing(tmp_path):
    need(VOIS)
    bad = tmp_path / "other" / "list.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": "missing_label.nii.gz"}]}))
    out = tmp_path / "res.json"
    r = run_experiment("--quick", "--out", out, "--split", tmp_path / "split.json", "--limit", 2, "--test", bad)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.nii.gz" in lines[0], r.stderr
    assert not out.exists() and not (tmp_path / "res_work" / "runs").exists()
    r = run_experiment("--quick", "--out", out, "--test", tmp_path / "nope.json")
    assert r.returncode == 1 and "nope.json: datalist not found" in r.stderr and not out.exists()


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path):
    """A --test datalist without lesions, a test crop larger than the window, a K larger than the pool."""
    need(VOIS)
    from freetumor.io import Volume, load_volume, save_volume

    crop = sorted((VOIS / "images").glob("*.nii.gz"))[0]
    other = tmp_path / "other"
    other.mkdir()
    lab = load_volume(VOIS / "labels" / crop.name)
    save_volume(lab.with_array(np.zeros(lab.shape, np.asarray(lab.array).dtype)), other / "empty.nii.gz")
    (other / "nolesion.json").write_text(json.dumps({"training": [{"image": str(crop), "label": "empty.nii.gz"}]}))
    big = Volume(np.full((200, 200, 10), -800, np.int16), np.diag([0.5, 0.5, 1.0, 1.0]))  # 100 mm: a crop
    save_volume(big, other / "big.nii.gz")
    big_lab = np.zeros((200, 200, 10), np.uint8)
    big_lab[100:105, 100:105, 4:6] = 1
    save_volume(Volume(big_lab, big.affine), other / "big_label.nii.gz")
    (other / "big.json").write_text(json.dumps({"training": [{"image": "big.nii.gz", "label": "big_label.nii.gz"}]}))
    split = tmp_path / "split.json"
    for args, expect in ((["--test", other / "nolesion.json"], "nolesion.json: no lesion"),
                         (["--test", other / "big.json"], "big.nii.gz: crop of 100 x 100 x 10 mm"),
                         (["--k", "5000"], "K = 5000 needs 5000 labelled patients")):
        out = tmp_path / "res.json"
        r = run_experiment("--quick", "--out", out, "--split", split, "--limit", 2, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and expect in lines[0], r.stderr
        assert not out.exists() and not (tmp_path / "res_work" / "runs").exists() and not split.exists()


def test_readme_tables_are_the_scripts_output_from_the_stored_json():
    # needs no real CT: the tables are printed from the stored summary alone
    results = REPO / "benchmarks" / "results" / "fewlabel_lung.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--table", str(results)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    stored = json.loads(results.read_text())
    assert stored["mode"] == "full" and stored["data"].startswith("Real CT")
    assert set(stored["arms"]) == {"stage0", "none", "copy_paste", "procedural", "generator"}
    assert stored["runs_done"] >= 5 and "10" in stored["by_k"]
    # every stored run file of the summary's signature is committed beside it, and none holds a machine path
    runs = sorted((REPO / "benchmarks" / "results" / "fewlabel_lung" / "runs").glob("*.json"))
    mine = [p for p in runs if json.loads(p.read_text())["signature"] == stored["signature"]]
    assert len(mine) >= stored["runs_done"]
    for p in [results, *mine]:
        text = p.read_text()
        assert "/tmp/" not in text and "/work/" not in text and "/root/" not in text, p
    readme = (REPO / "docs" / "benchmarks" / "fewlabel-lung.md").read_text(encoding="utf-8")
    blocks = [b for b in r.stdout.strip().split("\n\n") if b]
    assert len(blocks) >= 3  # status line; per K: arms and paired differences; targets
    for block in blocks:
        assert block in readme, block


def test_protocol_options_name_their_runs_and_keep_the_default_signature(tmp_path):
    """--placement host and --judge none train into their own run folders and result files, and
    generator runs of another judge are not counted; the default protocol's names are unchanged."""
    exp = load_experiment()
    assert exp.run_tag("none", "random", "stage0") == "" and exp.run_tag("generator", "random", "stage0") == ""
    assert exp.run_tag("generator", "random", "none") == "-jnone"
    assert exp.run_tag("none", "random", "none") == ""  # the judge only concerns the generator arm
    assert exp.run_tag("stage0", "host", "none") == "-host"
    assert exp.geometry("random") == exp.GEOMETRY
    assert "data.crop_placement=host" in exp.geometry("host") and "data.crop_placement=random" not in exp.geometry("host")
    assert exp.stage0_recipe("host") == [*exp.STAGE0_RECIPE, "data.labelled_share=1.0"]
    for judge in ("stage0", "none"):
        rec = {"signature": "s", "k": 10, "seed": 0, "arm": "generator", **({"judge": judge} if judge != "stage0" else {})}
        (tmp_path / f"k10_s0_generator_{judge}.json").write_text(json.dumps(rec))
    (tmp_path / "k10_s0_none.json").write_text(json.dumps({"signature": "s", "k": 10, "seed": 0, "arm": "none"}))
    got = exp.load_runs(tmp_path, "s", "none")
    assert set(got) == {(10, 0, "generator"), (10, 0, "none")} and got[(10, 0, "generator")]["judge"] == "none"
    assert "judge" not in exp.load_runs(tmp_path, "s")[(10, 0, "generator")]
    assert exp.load_runs(tmp_path, "other") == {}
    args = exp.parse_args(["--out", str(tmp_path / "r.json"), "--arms", "none,stage0", "--placement", "host"])
    assert args.arms == ["none", "stage0"] and args.placement == "host" and args.judge == "stage0"
    r = run_experiment("--out", tmp_path / "r.json", "--arms", "none,nope")
    assert r.returncode == 2 and "unknown arm 'nope'" in r.stderr and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("script,results", [
    ("experiment_fewlabel_lung.py", "fewlabel_lung_host.json"),
    ("qc_judge_lung.py", "qc_judge_lung.json"),
])
def test_pilot_tables_on_the_page_are_the_scripts_output(script, results):
    """The host-placement pilot and the QC-judge table of docs/benchmarks/fewlabel-lung.md are what
    `--table` prints from the stored results (Real CT, committed)."""
    stored = REPO / "benchmarks" / "results" / results
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--table", str(stored)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(stored.read_text())["data"].startswith("Real CT")
    page = (REPO / "docs" / "benchmarks" / "fewlabel-lung.md").read_text(encoding="utf-8")
    blocks = [b for b in r.stdout.strip().split("\n\n") if b]
    assert blocks and all(b in page for b in blocks), [b for b in blocks if b not in page]
