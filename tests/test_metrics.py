"""Metrics of track.py against hand-computed cases and a plain-loop re-implementation."""

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import track  # noqa: E402


def test_thresholds_match_pytracking_arange():
    torch = pytest.importorskip("torch")
    expected = torch.arange(0.0, 1.0 + 0.05, 0.05, dtype=torch.float64).numpy()
    assert np.array_equal(track.OVERLAP_THRESHOLDS, expected)
    assert len(track.CENTER_THRESHOLDS) == 51 and len(track.NORM_THRESHOLDS) == 51


# ---- OPE, hand-computed ----------------------------------------------------------------
def test_identical_and_disjoint_boxes():
    gt = np.array([[10, 20, 30, 40]] * 5, float)
    s = track.ope_summary([(gt.copy(), gt)])
    # IoU 1 is "strictly greater" than every threshold except 1.0 itself: 20 of 21 bins.
    # This is pytracking's ceiling: a perfect tracker scores 95.24, not 100.
    assert s["auc"] == pytest.approx(100 * 20 / 21, abs=1e-9)
    assert s["precision"] == 100 and s["norm_precision"] == 100
    gt = np.array([[0, 0, 10, 10]] * 4, float)
    pred = np.array([[100, 100, 10, 10]] * 4, float)
    curve = track.ope_curves(pred, gt)[0]
    # frame 0 is replaced by the ground truth (the given box): 1 of 4 frames succeeds
    assert np.allclose(curve[:-1], 0.25) and curve[-1] == 0
    # with many frames the first-frame contribution vanishes; disjoint frames give IoU 0,
    # which is not > 0, so they fail every threshold
    iou = track.ope_errors(pred, gt)[0]
    assert np.array_equal(iou, [1, 0, 0, 0])


def test_partial_overlap_inclusive_pixels():
    # gt covers pixels x 0..9, y 0..9; pred covers x 5..14, y 0..9 (inclusive corners)
    gt = np.array([[0, 0, 10, 10]], float)
    pred = np.array([[5, 0, 10, 10]], float)
    inter = (9 - 5 + 1) * (9 - 0 + 1)  # 5 x 10 pixels
    union = 100 + 100 - inter
    assert track.iou_inclusive(pred, gt)[0] == pytest.approx(inter / union)  # 1/3
    # touching boxes share no pixel with inclusive corners: x 0..9 vs 10..19
    assert track.iou_inclusive([[10, 0, 10, 10]], gt)[0] == 0
    # one-pixel overlap: x 0..9 vs 9..18
    assert track.iou_inclusive([[9, 0, 10, 10]], gt)[0] == pytest.approx(10 / 190)
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    pred = np.array([[0, 0, 1, 1], [5, 0, 10, 10]], float)  # frame 1 IoU = 1/3
    curve = track.ope_curves(pred, gt)[0]
    t = track.OVERLAP_THRESHOLDS
    expected = ((t < 1.0).astype(float) + (t < 1 / 3)) / 2
    assert np.allclose(curve, expected)


def test_precision_and_normalised_precision():
    gt = np.array([[100, 100, 20, 20]] * 5, float)
    offsets = [0, 3, 20, 21, 40]  # frame 0 is the given box whatever its offset
    pred = gt.copy()
    pred[:, 0] += offsets
    curve = track.ope_curves(pred, gt)[1]
    assert curve[20] == pytest.approx(3 / 5)  # 0, 3, 20 (<= counts)
    assert curve[0] == pytest.approx(1 / 5)
    assert curve[50] == pytest.approx(1.0)
    assert track.ope_summary([(pred, gt)])["precision"] == pytest.approx(60)
    gt = np.array([[0, 0, 10, 10]] * 2, float)
    pred = np.array([[0, 0, 10, 10], [3, 4, 10, 10]], float)  # distance 5
    assert track.ope_errors(pred, gt)[1][1] == pytest.approx(5)
    # centre uses x + (w - 1) / 2: a wider box with the same x moves its centre
    pred2 = np.array([[0, 0, 10, 10], [0, 0, 12, 10]], float)
    assert track.ope_errors(pred2, gt)[1][1] == pytest.approx(1)
    gt = np.array([[0, 0, 100, 50]] * 4, float)
    pred = gt.copy()
    pred[1, 0] += 10  # 0.1 of the width
    pred[2, 1] += 10  # 0.2 of the height
    pred[3, 0] += 30  # 0.3 of the width
    norm = track.ope_errors(pred, gt)[2]
    assert np.allclose(norm, [0, 0.1, 0.2, 0.3])
    curve = track.ope_curves(pred, gt)[2]
    assert curve[20] == pytest.approx(3 / 4)
    assert track.ope_summary([(pred, gt)])["norm_precision"] == pytest.approx(75)


def test_invalid_absent_zero_sized_and_bad_results():
    gt = np.array([[0, 0, 10, 10], [0, 0, 0, 10], [np.nan] * 4, [0, 0, 10, -1]], float)
    pred = np.array([[0, 0, 10, 10]] * 4, float)
    iou, dist, norm = track.ope_errors(pred, gt)
    assert np.array_equal(iou, [1, -1, -1, -1])
    assert np.isinf(dist[1:]).all()
    # pytracking quirk kept for agreement: invalid frames get normalised distance -1
    assert np.array_equal(norm[1:], [-1, -1, -1])
    s = track.ope_summary([(pred, gt)])
    assert s["auc"] == pytest.approx(100 * (20 / 21) / 4)
    assert s["precision"] == pytest.approx(25)
    # UAV123 rule in pytracking: invalid frames get pixel distance -1 too
    assert np.array_equal(track.ope_errors(pred, gt, uav=True)[1][1:], [-1, -1, -1])
    gt = np.array([[0, 0, 10, 10]] * 4, float)
    pred = gt.copy()
    visible = np.array([True, True, False, False])
    iou, dist, norm = track.ope_errors(pred, gt, visible)
    assert np.array_equal(iou, [1, 1, -1, -1])
    assert np.isinf(dist[2:]).all() and np.isinf(norm[2:]).all()
    s = track.ope_summary([(pred, gt, visible)])
    assert s["precision"] == pytest.approx(50) and s["norm_precision"] == pytest.approx(50)
    gt_a = np.array([[0, 0, 10, 10]] * 2, float)
    gt_b = np.array([[0, 0, 10, 10]] * 4, float)
    pred_a = np.array([[0, 0, 10, 10], [50, 50, 10, 10]], float)  # 1/2 frames good
    pred_b = gt_b.copy()  # 4/4 good
    s = track.ope_summary([(pred_a, gt_a), (pred_b, gt_b)])
    # per-sequence first: (0.5 + 1) / 2, not frame-pooled 5/6
    assert s["precision"] == pytest.approx(75)
    gt = np.array([[0, 0, 10, 10]] * 3, float)
    pred = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 0, 0]], float)
    iou = track.ope_errors(pred, gt)[0]
    assert iou[2] == pytest.approx(iou[1])
    gt = np.zeros((3, 4)) + 5
    with pytest.raises(ValueError, match="predicted boxes"):
        track.ope_summary([(gt[:2], gt)])
    with pytest.raises(ValueError, match="NaN"):
        track.ope_curves(np.full((3, 4), np.nan), gt)
    with pytest.raises(ValueError, match="shape"):
        track.ope_curves(np.zeros((3, 5)), gt)
    # longer results are truncated (pytracking)
    assert track.ope_curves(np.zeros((5, 4)) + 5, gt)[0].shape == (21,)


# ---- GOT-10k, hand-computed ------------------------------------------------------------
def test_got10k_iou_first_frame_absence_and_pooling():
    gt = np.array([[0, 0, 10, 10]], float)
    assert track.iou_got10k([[5, 0, 10, 10]], gt)[0] == pytest.approx(50 / 150)
    assert track.iou_got10k([[10, 0, 10, 10]], gt)[0] == 0  # touching: no area
    # clipping both boxes to the image (the toolkit's `bound`)
    # the toolkit clips x to [0, W] and then w to W - x (it does not shrink w when x moves)
    gt = np.array([[90, 0, 10, 10]], float)
    pred = np.array([[90, 0, 20, 10]], float)  # w clipped to 100 - 90 = 10 -> identical
    assert track.iou_got10k(pred, gt, (100, 100))[0] == pytest.approx(1.0)
    assert track.iou_got10k(pred, gt)[0] == pytest.approx(0.5)
    pred = np.array([[-10, 0, 20, 10]], float)  # x -> 0, w stays 20
    assert track.iou_got10k(pred, [[0, 0, 10, 10]], (100, 100))[0] == pytest.approx(0.5)
    gt = np.array([[0, 0, 10, 10]] * 5, float)
    pred = np.array(
        [[100, 100, 1, 1], [0, 0, 10, 10], [5, 0, 10, 10], [0, 0, 10, 8], [90, 90, 5, 5]],
        float,
    )
    visible = np.array([True, True, True, True, False])
    s = track.got10k_summary([(pred, gt, visible)])
    ious = [1.0, 1 / 3, 0.8]  # frame 0 excluded, frame 4 absent
    assert s["ao"] == pytest.approx(100 * np.mean(ious))
    assert s["sr50"] == pytest.approx(100 * 2 / 3)
    assert s["sr75"] == pytest.approx(100 * 2 / 3)
    assert len(s["success_curve"]) == 101
    gt_a = np.array([[0, 0, 10, 10]] * 2, float)  # 1 scored frame, IoU 0
    pred_a = np.array([[0, 0, 10, 10], [50, 50, 10, 10]], float)
    gt_b = np.array([[0, 0, 10, 10]] * 4, float)  # 3 scored frames, IoU 1
    s = track.got10k_summary([(pred_a, gt_a), (gt_b.copy(), gt_b)])
    assert s["ao"] == pytest.approx(75)  # pooled 3/4, a per-sequence mean would give 50


# ---- against a plain-loop re-implementation ---------------------------------------------
def _loop_iou_incl(p, g):
    iw = min(p[0] + p[2] - 1, g[0] + g[2] - 1) - max(p[0], g[0]) + 1
    ih = min(p[1] + p[3] - 1, g[1] + g[3] - 1) - max(p[1], g[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    return inter / (p[2] * p[3] + g[2] * g[3] - inter)


def _loop_ope(results):
    aucs, precs, norms = [], [], []
    for pred, gt in results:
        n = len(gt)
        succ = [0] * 21
        prec = [0] * 51
        nprec = [0] * 51
        for i in range(n):
            p = gt[i] if i == 0 else pred[i]
            g = gt[i]
            valid = g[2] > 0 and g[3] > 0
            if valid:
                iou = _loop_iou_incl(p, g)
                pc = (p[0] + (p[2] - 1) / 2, p[1] + (p[3] - 1) / 2)
                gc = (g[0] + (g[2] - 1) / 2, g[1] + (g[3] - 1) / 2)
                d = math.hypot(pc[0] - gc[0], pc[1] - gc[1])
                dn = math.hypot((pc[0] - gc[0]) / g[2], (pc[1] - gc[1]) / g[3])
            else:
                iou, d, dn = -1.0, math.inf, -1.0
            for k in range(21):
                succ[k] += iou > track.OVERLAP_THRESHOLDS[k]
            for k in range(51):
                prec[k] += d <= k
                nprec[k] += dn <= k / 100
        aucs.append(sum(succ) / 21 / n)
        precs.append(prec[20] / n)
        norms.append(nprec[20] / n)
    return 100 * np.mean(aucs), 100 * np.mean(precs), 100 * np.mean(norms)


def _loop_got10k(results):
    ious = []
    for pred, gt, visible in results:
        for i in range(1, len(gt)):
            if not visible[i]:
                continue
            p, g = pred[i], gt[i]
            iw = max(min(p[0] + p[2], g[0] + g[2]) - max(p[0], g[0]), 0)
            ih = max(min(p[1] + p[3], g[1] + g[3]) - max(p[1], g[1]), 0)
            inter = iw * ih
            ious.append(inter / (p[2] * p[3] + g[2] * g[3] - inter + np.finfo(float).eps))
    ious = np.array(ious)
    return 100 * ious.mean(), 100 * (ious > 0.5).mean(), 100 * (ious > 0.75).mean()


def _random_sequence(rng, n):
    gt = np.column_stack([rng.uniform(0, 200, (n, 2)), rng.uniform(5, 60, (n, 2))])
    pred = gt + rng.normal(0, 8, (n, 4))
    pred[:, 2:] = np.abs(pred[:, 2:]) + 1
    gt[rng.random(n) < 0.05, 2] = 0  # some invalid ground truth
    return pred, gt


def test_ope_and_got10k_match_loop_reimplementations():
    rng = np.random.default_rng(0)
    results = [_random_sequence(rng, int(rng.integers(5, 60))) for _ in range(12)]
    s = track.ope_summary(results)
    auc, prec, norm = _loop_ope(results)
    assert abs(s["auc"] - auc) < 1e-9
    assert abs(s["precision"] - prec) < 1e-9
    assert abs(s["norm_precision"] - norm) < 1e-9
    rng = np.random.default_rng(1)
    results = []
    for _ in range(10):
        pred, gt = _random_sequence(rng, int(rng.integers(3, 50)))
        gt[:, 2] = np.abs(gt[:, 2]) + 1  # GOT-10k boxes are valid; absence is a label
        results.append((pred, gt, rng.random(len(gt)) > 0.1))
    s = track.got10k_summary(results)
    ao, sr50, sr75 = _loop_got10k(results)
    assert abs(s["ao"] - ao) < 1e-9
    assert abs(s["sr50"] - sr50) < 1e-9
    assert abs(s["sr75"] - sr75) < 1e-9
