"""Batched quality control (issue 14): the same decisions as judging one tumour at a time."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from freetumor.config import QCConfig, load_config
from freetumor.models import build_model
from freetumor.phantom import make_case
from freetumor.quality import QualityControl
from freetumor.synthesis import Synthesizer
from freetumor.progress import without_progress


@pytest.fixture(scope="module")
def segmentor():
    """A random-weight cpu-tiny U-Net: its recall varies from tumour to tumour (mixed decisions)."""
    cfg = load_config("liver-cpu-tiny")
    torch.manual_seed(3)
    return build_model(cfg).eval(), cfg


@pytest.fixture(scope="module")
def case():
    return make_case("abdomen", seed=1, shape=(96, 80, 48))


def lax(threshold: float, batch_size: int) -> QCConfig:
    return QCConfig(threshold=threshold, min_inside=0.0, min_visible_mm3=0.0, contrast_hu=[-1e9, 1e9],
                    batch_size=batch_size)


def run(segmentor, case, threshold: float, batch_size: int, count: int, seed: int):
    qc = QualityControl(segmentor, lax(threshold, batch_size))
    out = Synthesizer("liver", size="small", qc=qc, qc_max_tries=10)(*case, count=count, seed=seed)
    return out, qc


def test_predict_many_equals_one_by_one(segmentor):
    qc = QualityControl(segmentor, lax(0.5, 3))
    g = torch.Generator().manual_seed(0)
    # two shapes: grouped by shape, never padded to a common one
    xs = [torch.rand((1, 1, 40, 32, 24), generator=g) for _ in range(4)] + \
         [torch.rand((1, 1, 24, 24, 16), generator=g) for _ in range(2)]
    batched = qc.predict_many(xs)
    assert qc.forwards == 3  # 4 inputs of one shape in chunks of 3 (2 forwards) + 1 forward for the other shape
    for x, p in zip(xs, batched):
        alone = qc.predict_tumour(x)[0].cpu().numpy()
        assert p.shape == alone.shape
        assert np.mean(p == alone) > 0.999


def test_batched_synthesis_same_lesions_and_decisions(segmentor, case):
    # A threshold near the median recall of first draws, so that some tumours are rejected and re-drawn.
    probe, _ = run(segmentor, case, 0.0, 1, 4, 11)
    recalls = sorted(r["qc"]["recall"] for r in probe.lesions)
    threshold = float(np.clip(recalls[len(recalls) // 2], 0.0, 0.95))
    one, qc1 = run(segmentor, case, threshold, 1, 4, 11)
    many, qcn = run(segmentor, case, threshold, 8, 4, 11)
    assert sum(r["qc_tries"] for r in one.lesions) > 4, "the test needs rejections to mean anything"
    assert qcn.forwards < qc1.forwards  # batched
    strip = ("version",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in many.lesions] == \
        [{k: v for k, v in r.items() if k not in strip} for r in one.lesions]
    assert np.array_equal(many.image.array, one.image.array)
    assert np.array_equal(many.label.array, one.label.array)


def test_batched_judge_equals_check_lesion(segmentor, case):
    """judge() on several prepared lesions gives each the decision check_lesion gives it alone."""
    image, label = case
    out, _ = run(segmentor, case, 0.0, 1, 3, 5)
    qc = QualityControl(segmentor, lax(0.3, 4))
    host = label.array == 1
    from freetumor.grids import Grid
    from freetumor.organs import get_organ

    grid, liver = Grid.of(image), get_organ("liver")
    prepared, alone = [], []
    for m in out.masks:
        box = m.slices
        before = image.array[box].astype(np.float32)
        prepared.append(qc.prepare_lesion(before, out.image.array, box, m.mask, host, grid, liver))
        alone.append(qc.check_lesion(before, out.image.array, box, m.mask, host, grid, liver))
    together = qc.judge(prepared)
    assert [d.accepted for d in together] == [d.accepted for d in alone]
    assert [d.scores["recall"] for d in together] == pytest.approx([d.scores["recall"] for d in alone], abs=1e-3)


def test_batch_size_is_checked():
    from freetumor.errors import ConfigError

    with pytest.raises(ConfigError, match="qc.batch_size"):
        dataclasses.replace(QCConfig(), batch_size=0).checked("test")


# ----------------------------------------------------------------------------- online synthesis (Stage 2)
TINY = ["data.roi_size=[32,32,32]", "data.num_samples=3", "data.cache=true", "data.neg=0.0",
        "synth.generator={channels: [4, 8, 16], strides: [2, 2]}"]


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    """A step dataset whose last step is generator synthesis + QC (random networks, mixed decisions)."""
    from freetumor.io import save_volume
    from freetumor.models import build_generator

    root = tmp_path_factory.mktemp("online")
    entries = []
    for k in range(2):
        img, lab = make_case("abdomen", seed=50 + k, tumour=False, shape=(72, 64, 40))
        save_volume(img, root / f"c{k}_img.nii.gz")
        save_volume(lab, root / f"c{k}_lab.nii.gz")
        entries.append({"image": str(root / f"c{k}_img.nii.gz"), "label": str(root / f"c{k}_lab.nii.gz")})
    cfg = load_config("liver-cpu-tiny", TINY)
    torch.manual_seed(5)
    gen, seg = build_generator(cfg).eval(), build_model(cfg).eval()
    return cfg, entries, gen, seg


def make_dataset(online, threshold: float, batch_size: int = 8):
    from freetumor.training.data import StepDataset
    from freetumor.transforms import RandTumorSynthesisd, train_transforms

    cfg, entries, gen, seg = online
    qc = QualityControl((seg, cfg), lax(threshold, batch_size))
    synth = RandTumorSynthesisd(cfg, "generator", generator=(gen, cfg), qc_segmentor=qc, max_tries=2)
    return StepDataset(entries, train_transforms(cfg, synthesis=synth), 0, cache=True), synth, qc


def same_patches(a: list[list[dict]], b: list[list[dict]]) -> None:
    assert [len(s) for s in a] == [len(s) for s in b]
    for sa, sb in zip(a, b):
        for pa, pb in zip(sa, sb):
            assert pa["synth_status"] == pb["synth_status"] and pa["synth_tries"] == pb["synth_tries"]
            assert torch.equal(torch.as_tensor(pa["label"]), torch.as_tensor(pb["label"]))
            assert torch.allclose(torch.as_tensor(pa["image"]), torch.as_tensor(pb["image"]), atol=1e-5)


def _threshold(online) -> float:
    """The median recall of the first tumours: about half of them are rejected."""
    from freetumor.quality import judge_patch

    ds, synth, qc = make_dataset(online, 0.0)
    recalls = []
    original = judge_patch

    def spy(*args, **kw):
        d = original(*args, **kw)
        recalls.append(d.scores["recall"])
        return d

    import freetumor.transforms as tr

    tr.judge_patch = spy
    try:
        for i in range(4):
            ds[i]
    finally:
        tr.judge_patch = original
    return float(np.median(recalls))


def test_online_batched_equals_one_by_one(online):
    threshold = _threshold(online)
    ds, synth, qc = make_dataset(online, threshold)
    one = [ds[i] for i in range(4)]
    forwards_one = qc.forwards
    counts_one = dict(synth.counts)
    ds2, synth2, qc2 = make_dataset(online, threshold)
    many = ds2.__getitems__(list(range(4)))
    statuses = [p["synth_status"] for s in one for p in s]
    assert "accepted" in statuses and ("rejected" in statuses or any(p["synth_tries"] > 1 for s in one for p in s))
    same_patches(one, many)
    assert qc2.forwards < forwards_one  # one forward per attempt round, not per patch
    assert synth2.counts == counts_one == dict(zip(*np.unique(statuses, return_counts=True)))


def test_worker_gives_the_main_process_patches(online):
    from freetumor.training.data import StepBatches, collate

    threshold = _threshold(online)
    batches = {}
    for workers in (0, 1):
        ds, _synth, _qc = make_dataset(online, threshold)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=StepBatches(0, 3, 2, 1, 0), num_workers=workers,
                                             collate_fn=lambda b: b)
        batches[workers] = [s for batch in loader for s in batch]
    same_patches(batches[0], batches[1])
    assert collate(batches[1][:2])["image"].shape[0] == 6


# ----------------------------------------------------------------------------- --qc-device
def test_qc_device_bad_values_are_one_line_errors(tmp_path, abdomen_case):
    from conftest import never_loaded_checkpoint, run_cli

    from freetumor.io import save_volume

    img, lab = abdomen_case
    save_volume(img, tmp_path / "ct.nii.gz")
    save_volume(lab, tmp_path / "lab.nii.gz")
    base = ["synthesize", "--image", tmp_path / "ct.nii.gz", "--label", tmp_path / "lab.nii.gz", "--organ", "liver",
            "--out", tmp_path / "out"]
    r = run_cli(*base, "--qc-segmentor", never_loaded_checkpoint(tmp_path / "seg.pt"), "--qc-device", "gpu")
    assert r.returncode == 1 and "qc.device" in r.stderr and "gpu" in r.stderr and len(without_progress(r.stderr)) == 1
    r = run_cli(*base, "--qc-device", "cpu")
    assert r.returncode == 1 and "--qc-device needs --qc-segmentor" in r.stderr
    r = run_cli("train-seg", "--config", "liver-cpu-tiny", "--datalist", tmp_path / "none.json", "--out",
                tmp_path / "run", "--qc-device", "gpu0")
    assert r.returncode == 1 and "qc.device" in r.stderr and len(without_progress(r.stderr)) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_qc_device_cuda_without_cuda(segmentor):
    from freetumor.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA is not available"):
        QualityControl(segmentor, dataclasses.replace(QCConfig(), device="cuda"))
    assert QualityControl(segmentor, QCConfig(), device="cpu").device.type == "cpu"


# ----------------------------------------------------------------------------- cheap checks on the tumour's box
def _cheap_reference(before, after, fake, organ, spacing, shell_mm=5.0, visible_hu=10.0):
    """The cheap scores computed on the whole arrays (no crop), as before issue 14."""
    import math

    from scipy.ndimage import binary_dilation

    n = int(fake.sum())
    inside = float(np.count_nonzero(fake & organ)) / n
    change = np.abs(after[fake].astype(np.float64) - before[fake].astype(np.float64))
    visible = float(np.count_nonzero(change >= visible_hu)) * float(np.prod(spacing))
    reach = [max(1, int(math.ceil(shell_mm / float(s)))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    ball = sum((g * float(s) / shell_mm) ** 2 for g, s in zip(grids, spacing)) <= 1.0
    ring = binary_dilation(fake, structure=ball) & ~fake & organ
    contrast = float(after[fake].astype(np.float64).mean() - after[ring].astype(np.float64).mean())
    return round(inside, 6), round(visible, 3), round(contrast, 3)


@pytest.mark.parametrize("seed", range(6))
def test_cheap_scores_on_the_box_equal_the_whole_patch(seed):
    from freetumor.quality import cheap_scores

    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)
    before = rng.normal(60, 15, shape).astype(np.float32)
    fake = np.zeros(shape, bool)
    lo = rng.integers(0, [s - 4 for s in shape])  # near the edges too
    hi = np.minimum(lo + rng.integers(2, 12, 3), shape)
    fake[tuple(slice(a, b) for a, b in zip(lo, hi))] = rng.random(tuple(hi - lo)) < 0.8
    fake[tuple(lo)] = True
    organ = rng.random(shape) < 0.9
    after = before - rng.uniform(5, 40) * fake
    spacing = (1.5, 2.0, 2.5) if seed % 2 else (3.0, 3.0, 3.0)
    s = cheap_scores(before, after, fake, organ, spacing)
    assert (s["inside_fraction"], s["visible_mm3"], s["contrast_hu"]) == \
        _cheap_reference(before, after, fake, organ, spacing)


# ----------------------------------------------------------------------------- right-sized context (fit)
def test_fit_window_holds_the_lesion_rounded_up_and_filled():
    from freetumor.grids import Grid, context_region

    spacing = (1.0, 1.0, 2.0)
    grid = Grid.from_affine(np.diag([*spacing, 1.0]), (80, 70, 30))
    net = (2.0, 2.0, 2.0)  # network voxels: 2 native voxels along x, y; 1 along z
    box = (slice(30, 40), slice(2, 8), slice(12, 15))  # near the y edge
    fit = context_region(box, grid, net, grid.shape, "fit", 3, (32, 32, 16), 8)
    patch = context_region(box, grid, net, grid.shape, "patch", 3, (32, 32, 16), 8)
    sizes = [(r.stop - r.start) / n for r, n in zip(fit, (2, 2, 1))]
    # box 5 x 3 x 3 network voxels + 3 either side -> 11, 9, 9 -> rounded up to 8: 16, 16, 16
    assert sizes == [16, 16, 16]
    assert all(r.start <= b.start and b.stop <= r.stop for r, b in zip(fit, box))
    assert all(0 <= r.start and r.stop <= n for r, n in zip(fit, grid.shape))  # shifted inside, not padded
    assert fit[1] == slice(0, 32)
    assert [(r.stop - r.start) / n for r, n in zip(patch, (2, 2, 1))] == [32, 32, 16]
    big = (slice(0, 80), slice(0, 70), slice(0, 30))  # never larger than the patch's rule
    assert context_region(big, grid, net, grid.shape, "fit", 3, (32, 32, 16), 8) == \
        context_region(big, grid, net, grid.shape, "patch", 3, (32, 32, 16), 8)


def test_predict_in_patches(segmentor):
    g = torch.Generator().manual_seed(5)
    xs = [torch.rand((1, 1, 48, 48, 48), generator=g) for _ in range(3)]
    fakes = [np.zeros((48, 48, 48), bool) for _ in range(3)]
    fakes[0][10:14, 20:26, 30:33] = True
    fakes[1][40:47, 0:5, 5:9] = True
    fakes[2][20:30, 20:30, 20:30] = True
    whole = QualityControl(segmentor, lax(0.5, 4), context="patch")
    assert all(np.array_equal(a, b) for a, b in zip(whole.predict_in_patches(xs, fakes), whole.predict_many(xs)))
    fit = QualityControl(segmentor, lax(0.5, 4), context="fit", margin=2)
    preds = fit.predict_in_patches(xs, fakes)
    for x, f, p in zip(xs, fakes, preds):
        r = fit.patch_region(f)
        assert all((s.stop - s.start) % 8 == 0 and s.stop - s.start < 48 for s in r)
        assert np.array_equal(p[r], fit.predict_many([x[(slice(None), slice(None), *r)]])[0])
        outside = np.ones(p.shape, bool)
        outside[r] = False
        assert not p[outside].any()


def test_qc_context_is_checked_config_and_cli():
    from freetumor import cli
    from freetumor.config import CONTEXTS, QC_CONTEXTS, load_config
    from freetumor.errors import ConfigError

    assert {c.value for c in cli.QCContext} == set(QC_CONTEXTS)
    assert {c.value for c in cli.Context} == set(CONTEXTS)
    assert load_config("liver-cpu-tiny", ["qc.context=fit", "qc.margin=4"]).qc.context == "fit"
    for bad in ("qc.context=box", "qc.margin=-1", "qc.margin=2.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("liver-cpu-tiny", [bad])
    assert QualityControl(None, QCConfig(context="fit", margin=3)).describe()["context"] == "fit"


def test_agreement_summary_and_stored_tables():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("qc_context_agreement", root / "benchmarks" / "qc_context_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = lambda r, a: {"recall": r, "accepted": a, "voxels": 10, "ms": 1.0}  # noqa: E731
    rows = [{"patch": row(0.9, True), "fit-2": row(0.92, True)} for _ in range(19)]
    rows.append({"patch": row(0.6, False), "fit-2": row(0.75, True)})  # one decision of 20 differs
    s = mod.summarise(rows, 0.7)["fit-2"]
    assert s["decision_agreement"] == 0.95 and s["passes"]  # 95 % and mean recall +0.0265
    rows.append({"patch": row(0.1, False), "fit-2": row(0.8, True)})
    assert not mod.summarise(rows, 0.7)["fit-2"]["passes"]
    readme = (root / "docs" / "benchmarks" / "qc-context.md").read_text(encoding="utf-8")
    for name in ("qc_context_phantom.json", "qc_context_lidc.json"):
        stored = json.loads((root / "benchmarks" / "results" / name).read_text())
        assert mod.table(stored) in readme  # the docs page's tables are the script's output


def test_loader_workers_default(monkeypatch):
    from types import SimpleNamespace

    from freetumor.config import load_config
    from freetumor.training.data import loader_workers

    auto = load_config("liver-cpu-tiny")
    assert auto.data.num_workers is None
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    gen_cpu = SimpleNamespace(generator=SimpleNamespace(device=cpu), qc=None)
    qc_cpu = SimpleNamespace(generator=None, qc=SimpleNamespace(model=object(), device=cpu))
    qc_gpu = SimpleNamespace(generator=SimpleNamespace(device=cpu), qc=SimpleNamespace(model=object(), device=gpu))
    cheap_only = SimpleNamespace(generator=None, qc=SimpleNamespace(model=None, device=cpu))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert [loader_workers(auto, s) for s in (None, gen_cpu, qc_cpu, qc_gpu, cheap_only)] == [0, 1, 1, 0, 0]
    assert loader_workers(load_config("liver-cpu-tiny", ["data.num_workers=3"]), None) == 3
    assert loader_workers(load_config("liver-cpu-tiny", ["data.num_workers=0"]), gen_cpu) == 0
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert loader_workers(auto, gen_cpu) == 0
