"""The scores that bench/eval_real_nuclei.py prints and docs/model-card.md quotes."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from eval_real_nuclei import best_threshold_iou, edge_cut_left_out_iou, labelled_nuclei_iou  # noqa: E402


@pytest.fixture
def scene():
    truth = np.zeros((40, 40), np.uint16)
    truth[10:20, 10:20] = 1
    pred = (truth > 0).astype(np.uint8)
    return truth, pred


def test_edge_cut_nucleus_without_a_label_is_not_counted(scene):
    truth, pred = scene
    pred[0:5, 30:38] = 1  # a nucleus cut by the top edge that the labels leave out
    assert edge_cut_left_out_iou(pred, truth) == 1.0
    assert labelled_nuclei_iou(pred, truth) == 1.0


def test_interior_false_nucleus_still_counts(scene):
    truth, pred = scene
    pred[25:35, 25:35] = 1  # away from the edge: a real false detection
    assert edge_cut_left_out_iou(pred, truth) == pytest.approx(0.5)
    assert labelled_nuclei_iou(pred, truth) == 1.0  # the lenient score for automatic labels


def test_edge_object_that_touches_a_label_counts(scene):
    truth, pred = scene
    truth[0:4, 0:4] = 2
    pred[0:6, 0:6] = 1  # overshoots a labelled edge nucleus: its extra pixels are errors
    assert edge_cut_left_out_iou(pred, truth) == pytest.approx((100 + 16) / (100 + 36))


def test_edge_cut_is_judged_plane_by_plane():
    truth = np.zeros((2, 30, 30), np.uint16)
    truth[1, 0:5, 0:5] = 1  # labelled in plane 1 only
    pred = np.zeros_like(truth, dtype=np.uint8)
    pred[:, 0:5, 0:5] = 1  # found in both planes; in plane 0 no label touches it
    assert edge_cut_left_out_iou(pred, truth) == 1.0
    assert labelled_nuclei_iou(pred, truth) == pytest.approx(0.5)  # 3-D objects join the planes


def test_best_threshold_finds_a_clean_separation_and_not_a_hidden_one():
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), np.uint16)
    truth[16:48, 16:48] = 1
    clean = np.where(truth > 0, 200.0, 50.0) + rng.normal(0, 5, truth.shape)
    assert best_threshold_iou(clean, truth) == 1.0
    flat = rng.normal(100, 5, truth.shape)  # no intensity difference: no threshold separates them
    assert best_threshold_iou(flat, truth) < 0.5
