"""Batched quality control (issue 14): the same decisions as judging one tumour at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from freetumor.config import QCConfig, load_config
from freetumor.models import build_model
from freetumor.phantom import make_case
from freetumor.quality import QualityControl
from freetumor.synthesis import Synthesizer


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
