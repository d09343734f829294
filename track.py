"""Track with HiT and score trackers the way the standard toolkits do.

HiT (ICCV 2023, "Exploring Lightweight Hierarchical Vision Transformers for Efficient
Visual Tracking") tracks with a fixed template and no post-processing (paper Sec. 3.4):
each frame is cropped around the previous box, the network predicts the new box, and the
box is mapped back to the image, all as the released tracker does it: template crop of
side ceil(sqrt(w*h) * 2) resized to 128, search crop of side ceil(sqrt(w*h) * 4) around
the previous box resized to 256 (crop rules: data.crop_resize), the prediction mapped
back around the previous box's exact centre and clipped with a 10-pixel margin (section
2 below); no window or scale penalty, no template update. The evaluation protocol
is paper Sec. 4 (one-pass evaluation as pytracking's analysis computes it for LaSOT,
TrackingNet, UAV123 and NFS; the official GOT-10k toolkit for GOT-10k).

Contents, smallest pieces first:
  1. metrics (numpy in, numbers out): success/precision/normalised-precision curves,
     `ope_summary`, `got10k_summary`;
  2. box helpers: `map_box_back`, `clip_box`;
  3. `Tracker(model, device=None, mode="fused")` with `initialize` / `track`;
  4. `run_sequence`;
  5. drawing with Pillow: `draw_gif`, `plot_curves`; video files with PyAV (optional):
     `read_video`, `VideoWriter`;
  6. the command line (`python track.py --help`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import data
import fast
import hit

# ---------------------------------------------------------------------------------------
# 1. Metrics
# ---------------------------------------------------------------------------------------

# pytracking builds its thresholds with torch.arange(0, 1.05, 0.05, float64); build them
# the same way (its floats differ from linspace / i * 0.05 in the last bit at 0.65 and
# 0.75) so that an IoU lying exactly on a threshold is counted the same way.
OVERLAP_THRESHOLDS = torch.arange(0.0, 1.0 + 0.05, 0.05, dtype=torch.float64).numpy()
CENTER_THRESHOLDS = np.arange(51, dtype=np.float64)  # pixels
NORM_THRESHOLDS = np.arange(51) / 100.0  # fraction of the ground-truth size
GOT10K_THRESHOLDS = np.linspace(0, 1, 101)  # GOT-10k toolkit's success-curve bins


def _boxes(a, name: str) -> np.ndarray:
    """Any array-like of (N, 4) x, y, w, h boxes -> float64 copy; shape errors are ValueError."""
    a = np.array(a, dtype=np.float64, copy=True)
    if a.ndim == 1 and a.size == 4:
        a = a[None]  # (4,) -> (1, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{name}: expected (N, 4) x,y,w,h boxes, got shape {a.shape}")
    return a


def iou_inclusive(pred, gt) -> np.ndarray:
    """IoU with inclusive pixel corners (x2 = x + w - 1), pytracking's `calc_iou_overlap`."""
    pred, gt = _boxes(pred, "pred"), _boxes(gt, "gt")
    tl = np.maximum(pred[:, :2], gt[:, :2])
    br = np.minimum(pred[:, :2] + pred[:, 2:] - 1.0, gt[:, :2] + gt[:, 2:] - 1.0)
    inter = np.clip(br - tl + 1.0, 0, None).prod(axis=1)
    union = pred[:, 2:].prod(axis=1) + gt[:, 2:].prod(axis=1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):  # invalid gt rows are masked later
        return inter / union


def _centres(boxes: np.ndarray) -> np.ndarray:
    # pytracking's (and the GOT-10k toolkit's) pixel centre: x + (w - 1) / 2.
    return boxes[:, :2] + 0.5 * (boxes[:, 2:] - 1.0)


def _prepare_pred(pred, gt) -> np.ndarray:
    """pytracking's `calc_seq_err_robust` clean-up of a result file before scoring."""
    if np.isnan(pred).any() or (pred[:, 2:] < 0).any():
        raise ValueError("invalid results: NaN or negative width/height in the predictions")
    if len(pred) < len(gt):
        raise ValueError(f"{len(pred)} predicted boxes for {len(gt)} ground-truth frames")
    pred = pred[: len(gt)]  # pytracking truncates longer results (LaSOT monkey-17)
    # A zero-sized prediction repeats the previous one (sequentially, as pytracking's loop).
    zero = (pred[:, 2:] == 0).any(axis=1) & ~np.isnan(gt).any(axis=1)
    for i in np.flatnonzero(zero[1:]) + 1:  # ascending, so chains of zeros propagate
        pred[i] = pred[i - 1]
    pred[0] = gt[0]  # the first frame is the given box
    return pred


def ope_errors(pred, gt, visible=None, uav: bool = False):
    """Per-frame (iou, centre distance, normalised centre distance), pytracking semantics.

    Frames whose ground truth is invalid (NaN, w <= 0 or h <= 0) or, when `visible` is
    given (LaSOT's full_occlusion / out_of_view), where the target is absent, get IoU -1
    and distance inf, so they count as failures while still counting in the denominator.
    pytracking quirks kept on purpose, so numbers agree with it: for invalid-but-visible
    frames the normalised distance is -1 (counted as a hit); with `uav=True` (its UAV123
    rule) the pixel distance of invalid frames is -1 as well.
    """
    gt = _boxes(gt, "gt")
    pred = _prepare_pred(_boxes(pred, "pred"), gt)
    with np.errstate(invalid="ignore"):
        valid = (gt[:, 2:] > 0).all(axis=1)  # NaN compares False -> invalid
    if visible is not None:
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != (len(gt),):
            raise ValueError(f"visible has shape {visible.shape}, expected ({len(gt)},)")
        valid &= visible
    diff = _centres(pred) - _centres(gt)  # (N, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.sqrt((diff**2).sum(axis=1))
        norm = np.sqrt(((diff / gt[:, 2:]) ** 2).sum(axis=1))
    iou = iou_inclusive(pred, gt)
    iou[~valid] = -1.0
    dist[~valid] = -1.0 if uav else np.inf
    norm[~valid] = -1.0
    if visible is not None:  # pytracking's LaSOT rule: absent frames always fail
        dist[~visible] = np.inf
        norm[~visible] = np.inf
    return iou, dist, norm


def ope_curves(pred, gt, visible=None, uav: bool = False):
    """One sequence -> (success (21,), precision (51,), normalised precision (51,)):
    fractions of frames with IoU > each overlap threshold (strictly, as pytracking) and
    with distance <= each centre threshold."""
    iou, dist, norm = ope_errors(pred, gt, visible, uav)
    return ((iou[:, None] > OVERLAP_THRESHOLDS).mean(axis=0),  # (N, 21) -> (21,)
            (dist[:, None] <= CENTER_THRESHOLDS).mean(axis=0),  # (N, 51) -> (51,)
            (norm[:, None] <= NORM_THRESHOLDS).mean(axis=0))


def success_curve(pred, gt, visible=None, uav: bool = False) -> np.ndarray:
    """(21,) fraction of frames with IoU strictly greater than 0, 0.05, ..., 1."""
    return ope_curves(pred, gt, visible, uav)[0]


def precision_curve(pred, gt, visible=None, uav: bool = False) -> np.ndarray:
    """(51,) fraction of frames with centre distance <= 0, 1, ..., 50 pixels."""
    return ope_curves(pred, gt, visible, uav)[1]


def norm_precision_curve(pred, gt, visible=None, uav: bool = False) -> np.ndarray:
    """(51,) fraction of frames with normalised centre distance <= 0, 0.01, ..., 0.5."""
    return ope_curves(pred, gt, visible, uav)[2]


def _unpack(result):
    """(pred, gt) | (pred, gt, visible) | (pred, gt, visible, image_wh) -> 4-tuple."""
    if not 2 <= len(result) <= 4:
        raise ValueError("each result must be (pred, gt[, visible[, image_wh]])")
    return tuple(result) + (None,) * (4 - len(result))


def ope_summary(results, uav: bool = False) -> dict:
    """One-pass evaluation over sequences, as pytracking's analysis reports it.

    `results`: list of (pred, gt) or (pred, gt, visible). Curves are computed per sequence
    and then averaged over sequences; AUC = mean of the success curve; precision is read
    at 20 px and normalised precision at 0.2. Scores are in percent.
    """
    if len(results) == 0:
        raise ValueError("no sequences to evaluate")
    per_seq = [ope_curves(*_unpack(r)[:3], uav=uav) for r in results]
    names = ("success_curve", "precision_curve", "norm_precision_curve")
    mean = {k: np.mean([c[i] for c in per_seq], axis=0) for i, k in enumerate(names)}
    return {
        "auc": float(mean["success_curve"].mean() * 100),
        "precision": float(mean["precision_curve"][20] * 100),
        "norm_precision": float(mean["norm_precision_curve"][20] * 100),
        "sequences": len(results),
        "per_sequence": [float(c[0].mean() * 100) for c in per_seq],  # AUC of each sequence
        **mean,
    }


def iou_got10k(pred, gt, image_wh=None) -> np.ndarray:
    """GOT-10k toolkit `rect_iou`: continuous corners (x2 = x + w), optional clipping of
    both boxes to the image (its `bound` = resolution), eps in the union, result in [0, 1]."""
    pred, gt = _boxes(pred, "pred"), _boxes(gt, "gt")
    if image_wh is not None:
        for r in (pred, gt):
            r[:, 0] = np.clip(r[:, 0], 0, image_wh[0])
            r[:, 1] = np.clip(r[:, 1], 0, image_wh[1])
            r[:, 2] = np.clip(r[:, 2], 0, image_wh[0] - r[:, 0])
            r[:, 3] = np.clip(r[:, 3], 0, image_wh[1] - r[:, 1])
    tl = np.maximum(pred[:, :2], gt[:, :2])
    br = np.minimum(pred[:, :2] + pred[:, 2:], gt[:, :2] + gt[:, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=1)
    union = pred[:, 2:].prod(axis=1) + gt[:, 2:].prod(axis=1) - inter
    return np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)


def got10k_summary(results) -> dict:
    """AO, SR0.5, SR0.75 (percent) as the official GOT-10k toolkit computes them.

    `results`: list of (pred, gt[, visible[, image_wh]]). The first frame is excluded,
    absent frames (visible False, i.e. absence.label / cover 0) are excluded, and the
    remaining frames of all sequences are pooled before averaging.
    """
    if len(results) == 0:
        raise ValueError("no sequences to evaluate")
    pooled = []
    for result in results:
        pred, gt, visible, image_wh = _unpack(result)
        pred, gt = _boxes(pred, "pred"), _boxes(gt, "gt")
        if pred.shape != gt.shape:  # the toolkit asserts equal shapes
            raise ValueError(f"{len(pred)} predicted boxes for {len(gt)} ground-truth frames")
        iou = iou_got10k(pred[1:], gt[1:], image_wh)
        if visible is not None:
            iou = iou[np.asarray(visible, dtype=bool)[1:]]
        pooled.append(iou)
    ious = np.concatenate(pooled)
    if ious.size == 0:
        raise ValueError("no evaluable frames (all absent or single-frame sequences)")
    return {
        "ao": float(ious.mean() * 100),
        "sr50": float((ious > 0.5).mean() * 100),
        "sr75": float((ious > 0.75).mean() * 100),
        "sequences": len(results),
        # each sequence's mean IoU (NaN when it has no evaluable frame), for paired comparisons
        "per_sequence": [float(i.mean() * 100) if i.size else float("nan") for i in pooled],
        "success_curve": (ious[:, None] > GOT10K_THRESHOLDS).mean(axis=0),
    }


# ---------------------------------------------------------------------------------------
# 2. Box helpers (the released tracker's rules, stated in each docstring)
# ---------------------------------------------------------------------------------------


def map_box_back(pred_cxcywh, prev_box, resize_factor: float, search_size: int = 256):
    """Network output (cx, cy, w, h in [0, 1] of the search crop) -> (x, y, w, h) pixels.

    The crop side is sz = search_size / resize_factor; the crop is taken to be centred on
    the previous box's exact (unrounded) centre, as the released `map_box_back` does, even
    though the real crop corner was rounded.
    """
    sz = search_size / resize_factor
    cx, cy, w, h = (float(v) * sz for v in pred_cxcywh)
    cx_prev = prev_box[0] + 0.5 * prev_box[2]
    cy_prev = prev_box[1] + 0.5 * prev_box[3]
    cx_img = cx + (cx_prev - 0.5 * sz)
    cy_img = cy + (cy_prev - 0.5 * sz)
    return (cx_img - 0.5 * w, cy_img - 0.5 * h, w, h)


def clip_box(box, height: int, width: int, margin: float = 10):
    """Released `clip_box`: keep at least `margin` pixels of the box inside the image."""
    x1, y1, w, h = box
    x2, y2 = x1 + w, y1 + h
    x1 = min(max(0, x1), width - margin)
    x2 = min(max(margin, x2), width)
    y1 = min(max(0, y1), height - margin)
    y2 = min(max(margin, y2), height)
    return (x1, y1, max(margin, x2 - x1), max(margin, y2 - y1))


# ---------------------------------------------------------------------------------------
# 3. Tracker
# ---------------------------------------------------------------------------------------

TEMPLATE_FACTOR, TEMPLATE_SIZE = 2.0, 128
SEARCH_FACTOR, SEARCH_SIZE = 4.0, 256


def _check_image(image) -> np.ndarray:
    """PIL image (any mode data.py can convert) or RGB uint8 (H, W, 3) array -> array."""
    if isinstance(image, Image.Image):
        return data.pil_to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array or PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def _check_box(box, image: np.ndarray):
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers (x, y, w, h), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box has non-finite values: {box!r}")
    if w <= 0 or h <= 0:
        raise ValueError(f"box must have positive width and height, got {box!r}")
    height, width = image.shape[:2]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"box {box!r} lies fully outside the {width}x{height} image")
    return (x, y, w, h)


def _sync(device: torch.device) -> None:
    # Kernels are asynchronous on GPUs; synchronise so the timing split is honest.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Tracker:
    """HiT single-object tracker: fixed first-frame template, no post-processing.

    `mode` is one of fast.MODES: the model is prepared with fast.prepare (in place; every
    mode except "eager" folds BatchNorm first, as the released tracker does). Crops go in
    as float32 in every mode: each prepared model casts to its own precision inside, so
    the input dtype never depends on which parameter a model happens to list first.
    `path` says what runs (for `fast`, which of its paths).
    """

    def __init__(self, model: torch.nn.Module, device=None, mode: str = "fused", batch: int = 1):
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.mode, self.batch = mode, batch  # batch: the widest forward (run_batched's slots)
        self.model = fast.prepare(model, mode, self.device, batch)
        self.exact_cuda = self.device.type == "cuda" and mode in fast.EXACT_MODES  # float32, not TF32
        self.path = fast.path_of(self.model, mode)
        self.dtype = torch.float32
        self.template = None  # (1, 3, 128, 128) normalised, on device
        self.state = None  # previous box (x, y, w, h) in pixels
        self.last_timing = {}  # ms of the last track(): preprocess / network / postprocess

    def _crop_tensor(self, image: np.ndarray, box, factor: float, size: int):
        # data.crop_resize + data.normalize (the released rules), cut on the model's device
        # by run_batched's crop: the same bits, faster than numpy on the CPU (SPEED.md) and
        # no CPU crop to copy over beside a GPU.
        crops, resize_factors, _ = fast.crop_resize_torch([image], [box], factor, size, self.device)
        return fast.normalize_torch(crops).to(self.dtype), resize_factors[0]  # (1, 3, S, S)

    def template_crop(self, image: np.ndarray, box):
        """(checked box, template (1, 3, 128, 128) on the device) for a first frame."""
        box = _check_box(box, image)
        return box, self._crop_tensor(image, box, TEMPLATE_FACTOR, TEMPLATE_SIZE)[0]

    def search_crop(self, image: np.ndarray, prev_box):
        """(search (1, 3, 256, 256) on the device, resize factor) around the previous box."""
        return self._crop_tensor(image, prev_box, SEARCH_FACTOR, SEARCH_SIZE)

    def forward(self, templates, searches):
        """One forward of (B, 3, 128, 128) templates and (B, 3, 256, 256) searches ->
        (B predicted boxes (cx, cy, w, h) in [0, 1] of each crop, B scores)."""
        with fast.no_tf32() if self.exact_cuda else contextlib.nullcontext():
            out = self.model(templates, searches)
        return out["pred_boxes"].float().tolist(), out["score"].float().tolist()  # waits for the device

    @staticmethod
    def next_box(pred, prev_box, resize_factor: float, image: np.ndarray):
        """The prediction mapped back into the image around the previous box, clipped."""
        box = map_box_back(pred, prev_box, resize_factor, SEARCH_SIZE)
        return clip_box(box, image.shape[0], image.shape[1], margin=10)

    @torch.inference_mode()
    def initialize(self, image, box) -> None:
        self.state, self.template = self.template_crop(_check_image(image), box)

    @torch.inference_mode()
    def track(self, image):
        """-> ((x, y, w, h) in pixels, corner-map score (hit.CornerHead.from_maps))."""
        if self.template is None:
            raise ValueError("track() called before initialize()")
        image = _check_image(image)
        t0 = time.perf_counter()
        search, resize_factor = self.search_crop(image, self.state)
        _sync(self.device)
        t1 = time.perf_counter()
        preds, scores = self.forward(self.template, search)
        t2 = time.perf_counter()
        self.state, score = self.next_box(preds[0], self.state, resize_factor, image), scores[0]
        t3 = time.perf_counter()
        self.last_timing = {
            "preprocess": 1e3 * (t1 - t0),
            "network": 1e3 * (t2 - t1),
            "postprocess": 1e3 * (t3 - t2),
        }
        return self.state, score


# ---------------------------------------------------------------------------------------
# 4. Sequences
# ---------------------------------------------------------------------------------------


class FrameError(ValueError):
    """A frame that could not be read or tracked (a truncated JPEG, an initial box outside
    the image). It carries the boxes and times of the frames before it, so that a caller
    can keep what was computed instead of losing it with the exception."""

    def __init__(self, message: str, frame: int, boxes: np.ndarray, times: np.ndarray):
        super().__init__(message)
        self.frame = frame  # 1-based number of the frame that failed
        self.boxes, self.times = boxes, times  # (frame - 1, 4), (frame - 1,)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during run_sequence, with the boxes and times of the frames done before it."""

    def __init__(self, boxes: np.ndarray, times: np.ndarray):
        super().__init__(f"interrupted after {len(boxes)} frames")
        self.boxes, self.times = boxes, times


def run_sequence(tracker: Tracker, seq, init_box=None):
    """Track `seq` (data.Sequence) -> (boxes (N, 4), seconds per frame (N,)).

    Frame 0 initialises with `init_box` or the first ground-truth box and reports that
    box. Times cover initialize/track only, not image reading (as pytracking records).
    A frame that cannot be read or tracked raises FrameError, and Ctrl-C Interrupted,
    each holding the boxes so far.
    """
    if init_box is None:
        if seq.gt is None or len(seq.gt) == 0:
            raise ValueError(f"sequence {seq.name}: no init box and no ground truth")
        init_box = seq.gt[0]
    n = len(seq.frames)
    boxes = np.zeros((n, 4))
    times = np.zeros(n)
    for i, frame in enumerate(seq.frames):
        try:
            image = data.read_image(frame)
            t0 = time.perf_counter()
            if i == 0:
                tracker.initialize(image, init_box)
                box = tracker.state
            else:
                box, _ = tracker.track(image)
        except ValueError as err:  # the message of data.read_image names the file
            raise FrameError(f"sequence {seq.name}, frame {i + 1} of {n}: {err}",
                             i + 1, boxes[:i].copy(), times[:i].copy()) from err
        except KeyboardInterrupt:
            raise Interrupted(boxes[:i].copy(), times[:i].copy()) from None
        times[i] = time.perf_counter() - t0
        boxes[i] = box
    return boxes, times


# Modes whose prepared model runs one fixed batch size (compiled graphs, CUDA graphs,
# OpenVINO reshaped at load): run_batched pads their forwards to Tracker.batch rows.
FIXED_BATCH_MODES = ("compile", "cuda_graph", "fast", "openvino", "openvino_fp32")


class _Slot:
    """One sequence in flight in run_batched: its own template and previous box, and its
    frames 1, 2, ... read (and, where a core is free, decoded) ahead in a background thread
    (fast.prefetch_images, fast.decode_ahead)."""

    def __init__(self, seq, boxes, times, box, template, decode_ahead: bool):
        self.seq, self.boxes, self.times = seq, boxes, times  # (N, 4), (N,) filled as it goes
        self.box, self.template, self.next = box, template, 1  # frame 0 is initialisation
        self.frames = fast.prefetch_images(seq.frames[1:], decode=decode_ahead)

    def close(self):
        self.frames.close()  # stops and joins the decoding thread


def _start(tracker: Tracker, seq, decode_ahead: bool):
    """Read and initialise frame 0 of `seq` -> its _Slot (FrameError if it cannot)."""
    n = len(seq.frames)
    if seq.gt is None or len(seq.gt) == 0:
        raise ValueError(f"sequence {seq.name}: no init box and no ground truth")
    try:
        image = data.read_image(seq.frames[0])
        t0 = time.perf_counter()
        box, template = tracker.template_crop(image, seq.gt[0])
    except ValueError as err:
        raise FrameError(f"sequence {seq.name}, frame 1 of {n}: {err}", 1, np.zeros((0, 4)),
                         np.zeros(0)) from err
    boxes, times = np.zeros((n, 4)), np.zeros(n)
    boxes[0], times[0] = box, time.perf_counter() - t0
    return _Slot(seq, boxes, times, box, template, decode_ahead)


@torch.inference_mode()
def run_batched(tracker: Tracker, sequences, on_done, on_error):
    """Track `sequences` tracker.batch at a time, in lockstep: every step, the next frame of
    each sequence in flight goes through one batched forward; a finished sequence's slot
    takes the next sequence. Each slot keeps its own template and previous box, so a
    sequence's boxes do not depend on its neighbours (up to the float rounding of batched
    GEMMs). Frames are read ahead in background threads (and decoded there where a core is
    free: fast.decode_ahead; otherwise a step's frames are decoded side by side,
    _decoding_pool) and the search crops of a step are cut, resized and normalised together
    on the model's device (fast.crop_resize_torch: the same bits as the released numpy
    crops, data.crop_resize). Calls on_done(seq, boxes (N, 4), times (N,))
    per finished sequence, in the order they finish, and on_error(seq, FrameError) for one
    that cannot be read. A frame's time is its share of the step's preprocessing and
    forward (decoding excluded); frame 0's is initialisation, as run_sequence records."""
    queue, slots = iter(sequences), [None] * tracker.batch
    ahead = fast.decode_ahead(tracker.device)  # frames decoded in the readers, or here

    def refill(i):
        slots[i] = None
        for seq in queue:
            try:
                slot = _start(tracker, seq, ahead)
            except ValueError as err:
                on_error(seq, err)
                continue
            if len(seq.frames) == 1:  # a one-frame sequence ends at initialisation
                on_done(seq, slot.boxes, slot.times)
                continue
            slots[i] = slot
            return

    def finish(i):
        slot = slots[i]
        if slot.next == len(slot.seq.frames):
            slot.close()
            on_done(slot.seq, slot.boxes, slot.times)
            refill(i)

    def fail(i, err):
        slots[i].close()
        on_error(slots[i].seq, err)
        refill(i)

    pool = None if ahead else _decoding_pool(tracker.batch)
    for i in range(len(slots)):
        refill(i)
    try:
        while any(slots):
            live, images = _next_frames(slots, fail, pool)
            if live:
                _step(tracker, [slots[i] for i in live], images)
                for i in live:
                    finish(i)
    finally:  # an error or an interrupt: no decoding thread outlives the run
        if pool is not None:  # first: a reader still in use by a pool thread could not be closed
            pool.shutdown(cancel_futures=True)
        for slot in filter(None, slots):
            slot.close()


def _decoding_pool(batch: int):
    """For run_batched where frames are decoded in its own thread (not fast.decode_ahead):
    threads that decode one step's frames side by side, one per usable core, where a step
    has several. PIL lets go of the GIL while it decodes, so between two forwards the
    decoding takes every core instead of one (SPEED.md). None at batch 1."""
    if batch == 1:
        return None
    return ThreadPoolExecutor(max_workers=fast.usable_cores(), thread_name_prefix="hit_decode")


def _next_frame(slot: _Slot):
    """A slot's next frame, or the ValueError (naming the file) that reading it raised."""
    try:
        return next(slot.frames)
    except ValueError as err:
        return err


def _next_frames(slots, fail, pool=None):
    """The next decoded frame of every slot -> (slot indices, images), side by side in
    `pool` where given (each slot's frames are read by one task at a time); a slot whose
    frame cannot be read is failed (and refilled) instead."""
    busy = [i for i, slot in enumerate(slots) if slot is not None]
    frames = list((pool.map if pool is not None else map)(_next_frame, [slots[i] for i in busy]))
    live, images = [], []
    for i, frame in zip(busy, frames):
        if isinstance(frame, ValueError):
            slot = slots[i]
            k, n = slot.next, len(slot.seq.frames)
            fail(i, FrameError(f"sequence {slot.seq.name}, frame {k + 1} of {n}: {frame}",
                               k + 1, slot.boxes[:k].copy(), slot.times[:k].copy()))
        else:
            live.append(i)
            images.append(frame)
    return live, images


def _step(tracker, slots, images):
    """One step for the slots in flight: their search crops together on the device, one
    forward (padded to tracker.batch rows where the mode needs it), each box mapped back."""
    t0 = time.perf_counter()
    crops, factors, _ = fast.crop_resize_torch(images, [s.box for s in slots], SEARCH_FACTOR,
                                               SEARCH_SIZE, tracker.device)
    searches = fast.normalize_torch(crops)  # (R, 3, 256, 256)
    templates = torch.cat([s.template for s in slots])  # R x (1, 3, 128, 128) -> (R, 3, 128, 128)
    pad = tracker.batch - len(slots) if tracker.mode in FIXED_BATCH_MODES else 0
    if pad:  # repeat the last row: its outputs are dropped
        templates = torch.cat([templates, templates[-1:].expand(pad, -1, -1, -1)])  # (B, 3, 128, 128)
        searches = torch.cat([searches, searches[-1:].expand(pad, -1, -1, -1)])  # (B, 3, 256, 256)
    preds, _ = tracker.forward(templates, searches)
    share = (time.perf_counter() - t0) / len(slots)
    for slot, pred, resize_factor, image in zip(slots, preds, factors, images):
        k = slot.next
        slot.box = tracker.next_box(pred, slot.box, resize_factor, image)
        slot.boxes[k], slot.times[k], slot.next = slot.box, share, k + 1


# ---------------------------------------------------------------------------------------
# 5. Drawing (Pillow only) and video files (PyAV, optional)
# ---------------------------------------------------------------------------------------

PRED_COLOUR, GT_COLOUR = (255, 40, 40), (40, 220, 40)
CURVE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable font, needs FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _rect(draw: ImageDraw.ImageDraw, box, scale: float, colour, width: int = 2) -> None:
    x, y, w, h = (float(v) * scale for v in box)
    if all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0:
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)


def draw_gif(frames, pred, gt=None, path="track.gif", max_side: int = 480, fps: float = 25):
    """Write an animated GIF of predicted (red) and ground-truth (green) boxes.

    `frames` are paths or RGB arrays; frames larger than `max_side` are downscaled.
    """
    images = []
    for i, frame in enumerate(frames):
        array = frame if isinstance(frame, np.ndarray) else data.read_image(frame)
        image = Image.fromarray(array)
        scale = min(1.0, max_side / max(image.size))
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.BILINEAR)
        # A palette image per frame keeps memory low on long sequences. The frame gets 254
        # adaptive colours and the boxes the last two entries, drawn after quantising: a
        # thin box on a busy frame would otherwise be merged into a dull frame colour.
        image = image.convert("P", palette=Image.ADAPTIVE, colors=254)
        palette = image.getpalette()[:254 * 3]
        image.putpalette(palette + [0] * (254 * 3 - len(palette)) + list(GT_COLOUR) + list(PRED_COLOUR))
        draw = ImageDraw.Draw(image)
        if gt is not None and i < len(gt):
            _rect(draw, gt[i], scale, 254)  # palette index of GT_COLOUR
        _rect(draw, pred[i], scale, 255)  # PRED_COLOUR
        images.append(image)
    if not images:
        raise ValueError("draw_gif: no frames")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)


PLOT_KINDS = {
    # kind: (summary score key(s), x label, y label, title, legend corner)
    "success": (("auc", "ao"), "Overlap threshold", "Overlap precision [%]", "Success plot",
                "lower left"),
    "precision": (("precision",), "Location error threshold [px]", "Distance precision [%]",
                  "Precision plot", "lower right"),
    "norm_precision": (("norm_precision",), "Normalized location error threshold",
                       "Distance precision [%]", "Normalized precision plot", "lower right"),
}


def _x_thresholds(kind: str, n: int) -> np.ndarray:
    if kind == "success":
        return GOT10K_THRESHOLDS if n == len(GOT10K_THRESHOLDS) else OVERLAP_THRESHOLDS
    return CENTER_THRESHOLDS if kind == "precision" else NORM_THRESHOLDS


def plot_curves(summaries: dict, path, kind: str = "success", size=(640, 480)) -> None:
    """Success / precision plot PNG: one curve per entry of {name: summary}, legend with
    each entry's score, sorted best first (as the toolkits draw them)."""
    if kind not in PLOT_KINDS:
        raise ValueError(f"kind must be one of {sorted(PLOT_KINDS)}, got {kind!r}")
    keys, xlabel, ylabel, title, corner = PLOT_KINDS[kind]
    entries = []
    for name, s in summaries.items():
        key = next(k for k in keys if k in s)
        curve = np.asarray(s[f"{kind}_curve"], dtype=float) * 100
        entries.append((s[key], name, key, _x_thresholds(kind, len(curve)), curve))
    entries.sort(key=lambda e: -e[0])

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)
    left, top, right, bottom = 64, 36, size[0] - 20, size[1] - 52
    x_max = float(entries[0][3][-1]) if entries else 1.0

    def to_px(x, y):  # data -> pixel coordinates
        return (left + (right - left) * x / x_max, bottom - (bottom - top) * y / 100)

    _axes(draw, (left, top, right, bottom), x_max, small)
    draw.text(((left + right) / 2, 8), title, fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, size[1] - 8), xlabel, fill="black", font=small, anchor="mb")
    _vertical_text(img, ylabel, (14, (top + bottom) / 2), small)
    for i, (_, _, _, xs, curve) in enumerate(entries):
        points = [to_px(x, y) for x, y in zip(xs, curve)]
        draw.line(points, fill=CURVE_COLOURS[i % len(CURVE_COLOURS)], width=2)
    short = {"auc": "AUC", "ao": "AO", "precision": "P", "norm_precision": "P_norm"}
    labels = [f"{name} [{short[key]} {score:.1f}]" for score, name, key, _, _ in entries]
    _legend(draw, labels, (left, top, right, bottom), corner, small)
    img.save(path)


def _axes(draw, box, x_max: float, font) -> None:
    left, top, right, bottom = box
    draw.rectangle([left, top, right, bottom], outline="black", width=1)
    for k in range(6):  # 6 ticks on each axis, light grid
        x = left + (right - left) * k / 5
        y = bottom - (bottom - top) * k / 5
        draw.line([x, top, x, bottom], fill=(225, 225, 225))
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.line([x, bottom, x, bottom + 5], fill="black")
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((x, bottom + 8), f"{x_max * k / 5:g}", fill="black", font=font, anchor="mt")
        draw.text((left - 8, y), f"{20 * k}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black", width=1)


def _vertical_text(img: Image.Image, text: str, centre, font) -> None:
    # Pillow cannot draw rotated text directly: draw it on a strip and rotate the strip.
    probe = ImageDraw.Draw(img)
    w, h = int(probe.textlength(text, font=font)) + 4, 18
    strip = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(strip).text((w / 2, h / 2), text, fill="black", font=font, anchor="mm")
    strip = strip.rotate(90, expand=True)
    img.paste(strip, (int(centre[0] - h / 2), int(centre[1] - w / 2)))


def _legend(draw, labels, box, corner: str, font) -> None:
    left, top, right, bottom = box
    row = 16
    width = max([draw.textlength(t, font=font) for t in labels] + [0]) + 34
    x0 = left + 10 if corner == "lower left" else right - 10 - width
    y0 = bottom - 10 - row * len(labels) - 6
    draw.rectangle([x0, y0, x0 + width, bottom - 10], fill="white", outline="black")
    for i, text in enumerate(labels):
        y = y0 + 6 + row * i + row / 2
        draw.line([x0 + 6, y, x0 + 24, y], fill=CURVE_COLOURS[i % len(CURVE_COLOURS)], width=3)
        draw.text((x0 + 30, y), text, fill="black", font=font, anchor="lm")


def _import_av():
    """PyAV (the maintained FFmpeg binding), imported on first use: it is optional."""
    try:
        import av
    except ImportError:
        raise ImportError("video files need PyAV: pip install av "
                          "(it is listed in requirements-deploy.txt)") from None
    return av


def _reason(err) -> str:
    return getattr(err, "strerror", None) or str(err)  # FFmpeg's words, without the errno


def _open_video(path):
    """-> (PyAV input container, its first video stream); bad files are ValueError."""
    av = _import_av()
    if not Path(path).exists():
        raise ValueError(f"video file {path} does not exist")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise ValueError(f"cannot read video {path}: {_reason(err)}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: no video stream (an empty or audio-only file)")
    return container, container.streams.video[0]


def video_info(path):
    """-> (frame rate, (width, height)) of a video file, from its header."""
    container, stream = _open_video(path)
    with container:
        return stream.average_rate or stream.guessed_rate or 25, (stream.width, stream.height)


def _declared_frames(container, stream) -> int:
    """The fewest frames the file's header promises: the exact count of its index (MP4,
    MOV, AVI), else duration x frame rate less one for rounding (MKV, WebM; the
    container's duration only when no other stream, say a longer audio track, can set
    it), else 0 (raw streams declare neither)."""
    if stream.frames:
        return stream.frames
    if stream.duration:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        seconds = container.duration / 1e6  # in FFmpeg's AV_TIME_BASE, microseconds
    else:
        return 0
    return max(0, round(seconds * float(stream.average_rate or 0)) - 1)


def read_video(path):
    """Yield (index, RGB uint8 (H, W, 3) array) for each frame of a video file.

    RGB is the order the network was trained on (the released demo reads with OpenCV,
    which gives BGR). A file that stops early raises ValueError naming it, after the
    frames before the damage: data that cannot be decoded (a cut-off MP4; the frames the
    decoder still holds come first), fewer frames than the header declares (a cut-off
    MKV decodes without complaint), or no frames at all.
    """
    av = _import_av()
    container, stream = _open_video(path)
    damage = []  # the decoding error that stopped the file, if any

    def decoded():
        try:
            for packet in container.demux(stream):
                yield from packet.decode()
        except av.FFmpegError as err:  # cut-off or damaged data
            damage.append(err)
            with contextlib.suppress(av.FFmpegError):  # the frames the decoder still holds
                yield from stream.codec_context.decode(None)

    count = 0
    with container:
        declared = _declared_frames(container, stream)
        for count, frame in enumerate(decoded(), 1):
            yield count - 1, frame.to_ndarray(format="rgb24")
    if damage:
        raise ValueError(f"{path}, frame {count + 1}: cannot decode (a truncated or damaged "
                         f"file): {_reason(damage[0])}")
    if count < declared:
        raise ValueError(f"{path}: truncated: {count} frames decoded, its header declares "
                         f"{declared} or more")
    if count == 0:
        raise ValueError(f"{path}: no frames (an empty video)")


class VideoWriter:
    """Write frames with the tracked box and its score drawn (Pillow) to a video file:
    H.264 (libx264) where FFmpeg has it and the size is even, else MPEG-4 part 2. The
    container comes from the file name's extension (.mp4, .mkv, ...)."""

    def __init__(self, path, fps, size):
        self.av, self.path = _import_av(), Path(path)
        width, height = size
        even = width % 2 == 0 and height % 2 == 0  # libx264's yuv420p needs even sizes
        codec = "libx264" if even and "libx264" in self.av.codecs_available else "mpeg4"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.container = self.av.open(str(self.path), "w")
        except (self.av.FFmpegError, ValueError) as err:  # ValueError: unknown extension
            raise ValueError(f"cannot write video {self.path}: {_reason(err)}") from None
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        if codec == "mpeg4":  # its default 200 kbit/s smears; about 0.2 bits per pixel
            self.stream.bit_rate = max(200_000, int(0.2 * width * height * float(fps)))
        self.font = _font(max(12, height // 24))

    def write(self, image: np.ndarray, box, score=None) -> None:
        """Draw `box` (x, y, w, h) and `score` (None: "init") on RGB `image`, append it."""
        picture = Image.fromarray(image)
        draw = ImageDraw.Draw(picture)
        _rect(draw, box, 1.0, PRED_COLOUR, width=max(2, picture.height // 240))
        label = "init" if score is None else f"{score:.2f}"
        _, _, w, h = draw.textbbox((0, 0), label, font=self.font)
        x, y = max(0.0, float(box[0])), float(box[1]) - h - 4  # above the box's corner
        y = y if y >= 0 else max(0.0, float(box[1]))  # no room above: inside it
        draw.rectangle([x, y, x + w + 4, y + h + 4], fill=PRED_COLOUR)
        draw.text((x + 2, y + 2), label, fill="white", font=self.font)
        self._mux(self.av.VideoFrame.from_ndarray(np.asarray(picture), format="rgb24"))

    def _mux(self, frame) -> None:
        try:
            for packet in self.stream.encode(frame):  # frame None: flush the encoder
                self.container.mux(packet)
        except self.av.FFmpegError as err:
            raise ValueError(f"cannot write video {self.path}: {_reason(err)}") from None

    def close(self) -> None:
        try:
            self._mux(None)
        finally:
            self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# 6. Command line
# ---------------------------------------------------------------------------------------

DATASETS = ("got10k", "lasot", "trackingnet", "otb", "folder")
EXAMPLES = """examples:
  track one folder of frames (init box from --init or DIR/groundtruth.txt line 1):
    python track.py --checkpoint HiT_Base.pth.tar --sequence DIR [--init x,y,w,h] [--gif out.gif]
  track a video file, write it back with the box and score drawn (needs PyAV: pip install av):
    python track.py --checkpoint C --video clip.mp4 --init x,y,w,h [--out-video tracked.mp4]
  run a dataset (resumable; GOT-10k gets the submission layout):
    python track.py --checkpoint C --dataset lasot --root R --split test --out results/hit_base
  score result folders (no model needed):
    python track.py --analyze --dataset lasot --root R --split test \\
        --results results/hit_base results/hit_small --json summary.json --plots plots/
"""


def parse_box(text: str):
    """'x,y,w,h' -> 4 floats (argparse type): finite, width and height > 0."""
    try:
        box = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h, got {text!r}")
    if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected finite x,y,w,h with w, h > 0, got {text!r}")
    return box


def positive_int(text: str) -> int:
    """argparse type for counts such as --threads."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Track with HiT and score results as pytracking / the GOT-10k toolkit do.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="released *.pth.tar or a checkpoint of this project")
    p.add_argument("--sequence", help="folder of frames (optional groundtruth.txt)")
    p.add_argument("--init", type=parse_box,
                   help="initial box x,y,w,h in pixels (a negative x: --init=-5,3,30,30)")
    p.add_argument("--gif", help="write an animated GIF of the boxes (with --sequence)")
    p.add_argument("--video", help="video file to track, any format FFmpeg reads (needs --init "
                                   "and PyAV: pip install av); frames go in as RGB")
    p.add_argument("--out-video", help="write the video back with the box and score drawn (with "
                                       "--video; same size and frame rate; H.264, else MPEG-4)")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--root", help="dataset root")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--out", help="result file, one x,y,w,h line per frame (--sequence, --video; "
                                 "default: ./<name>.txt) or folder (--dataset)")
    p.add_argument("--analyze", action="store_true", help="score --results folders")
    p.add_argument("--results", nargs="+",
                   help="result folders to score; each after the first is also compared with "
                        "the first, paired per sequence (difference, standard error, wins)")
    p.add_argument("--json", help="write the summary (percent) to this file")
    p.add_argument("--plots", help="write the success / precision plot PNGs into this folder "
                                   "(default: no plots)")
    p.add_argument("--static-box", action="store_true",
                   help="with --analyze: score the static box too (the first box held for "
                        "every frame), first, so that every tracker is compared with it")
    p.add_argument("--uav", action="store_true",
                   help="pytracking's UAV123 rule: invalid frames count as precision hits")
    p.add_argument("--device", help="torch device (default: cuda, else mps, else cpu)")
    p.add_argument("--mode", default="fused", choices=fast.MODES,
                   help="inference mode (fast.prepare; speeds in bench.py; default: fused)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="with --dataset: track this many sequences in lockstep, one batched "
                        "forward per step (default 1). Under torchrun each rank (one GPU per "
                        "rank where present) takes every world-th sequence")
    return p


# What each command uses (argparse dests): any other flag given with it is an error, not
# silently ignored. It needs the ones in REQUIRED.
RUN = {"checkpoint", "device", "mode", "threads", "out"}
COMMANDS = {"sequence": RUN | {"init", "gif"},
            "video": RUN | {"init", "out_video"},
            "dataset": RUN | {"root", "split", "batch"},
            "analyze": {"dataset", "root", "split", "results", "json", "plots", "static_box", "uav"}}
REQUIRED = {"sequence": ["checkpoint"], "video": ["checkpoint", "init"],
            "dataset": ["checkpoint", "root", "out"], "analyze": ["dataset", "root", "results"]}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_args(p: argparse.ArgumentParser, args) -> None:
    given = [c for c in ("sequence", "video", "analyze") if getattr(args, c)]
    given += ["dataset"] if args.dataset and not args.analyze else []
    if len(given) != 1:
        p.error("give one of --sequence, --video, --dataset or --analyze (see --help)"
                + (f"; got {', '.join(map(_flag, given))}" if given else ""))
    command = given[0]
    stray = [d for d, v in vars(args).items()
             if d != command and d not in COMMANDS[command] and v != p.get_default(d)]
    if stray:
        p.error(f"{', '.join(map(_flag, stray))} {'does' if len(stray) == 1 else 'do'} not go with {_flag(command)}")
    missing = [d for d in REQUIRED[command] if not getattr(args, d)]
    if missing:
        p.error(f"{_flag(command)} needs {', '.join(map(_flag, missing))}")
    if command == "analyze" and len({Path(f).resolve() for f in args.results}) != len(args.results):
        p.error("--results: a folder is given twice")


def format_boxes(boxes) -> str:
    return "".join("%.4f,%.4f,%.4f,%.4f\n" % tuple(b) for b in boxes)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file, flushed to the disk, then renamed: a crash or a power
    cut leaves the old file or the whole new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_boxes(path) -> np.ndarray:
    """Result file with comma-, tab- or space-separated x,y,w,h lines -> (N, 4). Every box
    must be finite with w, h >= 0, as the toolkits require of a tracker's output."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:  # e.g. UTF-16, as PowerShell's > writes
        raise ValueError(f"cannot read results file {path}: {err}") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        try:
            rows.append([float(v) for v in parts])
        except ValueError:
            raise ValueError(f"{path}:{i}: not numbers: {line!r}") from None
        if len(parts) != 4:
            raise ValueError(f"{path}:{i}: expected 4 values x,y,w,h, got {len(parts)}")
        if not all(math.isfinite(v) for v in rows[-1]) or min(rows[-1][2:]) < 0:
            raise ValueError(f"{path}:{i}: invalid box (NaN, infinite, or negative width/height): {line!r}")
    return np.array(rows, dtype=np.float64).reshape(-1, 4)  # (N, 4); an empty file's (0,) -> (0, 4)


def result_path(folder, seq_name: str, dataset: str) -> Path:
    # GOT-10k submission layout <seq>/<seq>_001.txt; everything else <seq>.txt.
    if dataset == "got10k":
        return Path(folder) / seq_name / f"{seq_name}_001.txt"
    return Path(folder) / f"{seq_name}.txt"


def _device(name):
    """--device -> torch.device; a misspelt or absent device is bad input (ValueError)."""
    if not name:
        return fast.default_device()
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: {err}") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise ValueError(f"--device {name!r}: no {device.type} device on this machine")
    return device


def _make_tracker(args, batch: int = 1) -> Tracker:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    model = hit.load_checkpoint(args.checkpoint, device=device)
    tracker = Tracker(model, device=device, mode=args.mode, batch=batch)
    if tracker.path != args.mode:  # `fast` has several paths: say which one runs
        print(f"mode {args.mode}: {tracker.path}", file=sys.stderr)
    return tracker


def _fps(times) -> float:
    # frame 0 is initialisation; fps counts tracked frames, as the toolkits report speed
    t = np.asarray(times[1:] if len(times) > 1 else times)
    return float(len(t) / t.sum()) if t.sum() > 0 else float("nan")


def _stop_keeping_boxes(err, boxes, out: Path):
    """Write the boxes computed before `err` (none: no file), then stop with one line."""
    if len(boxes) == 0:
        raise SystemExit(f"error: {err}") from None
    write_atomic(out, format_boxes(boxes))
    raise SystemExit(f"error: {err} (the {len(boxes)} boxes before it are written to {out})")


def _read_sequence(folder: Path, init):
    """--sequence's folder as data.Sequences; with --init its ground truth is only drawn
    and scored, so an unreadable one is left out with a warning instead of stopping."""
    try:
        return data.read_folder(folder)
    except ValueError as err:
        frames = data.list_frames(folder / "img" if (folder / "img").is_dir() else folder)
        if init is None or not frames:
            raise
        print(f"warning: {err}; tracking from --init without it", file=sys.stderr)
        return [data.Sequence(folder.name, frames)]


def cmd_sequence(args) -> None:
    folder = Path(args.sequence)
    sequences = _read_sequence(folder, args.init)
    if len(sequences) != 1:
        raise SystemExit(f"error: {folder} holds {len(sequences)} sequences; "
                         "use --dataset folder --root for a folder of sequences")
    seq = sequences[0]
    if args.init is None and (seq.gt is None or len(seq.gt) == 0):
        raise SystemExit(f"error: no --init given and no {folder / 'groundtruth.txt'}")
    tracker = _make_tracker(args)
    out = Path(args.out) if args.out else Path.cwd() / f"{folder.resolve().name}.txt"
    try:
        boxes, times = run_sequence(tracker, seq, args.init)
    except (FrameError, Interrupted) as err:  # keep what was computed, then stop with one line
        _stop_keeping_boxes(err, err.boxes, out)
    write_atomic(out, format_boxes(boxes))
    print(f"{seq.name}: {len(boxes)} frames, {_fps(times):.1f} fps on {tracker.device}"
          f" ({tracker.mode}); boxes written to {out}")
    if args.gif:
        draw_gif(seq.frames, boxes, seq.gt, args.gif)
        print(f"GIF written to {args.gif}")


def cmd_video(args) -> None:
    try:
        _import_av()
    except ImportError as err:
        raise SystemExit(f"error: {err}") from None
    video = Path(args.video)
    fps, size = video_info(video)  # a missing or unreadable file fails before the model loads
    tracker = _make_tracker(args)
    out = Path(args.out) if args.out else Path.cwd() / f"{video.stem}.txt"
    boxes, times, start = [], [], time.perf_counter()
    writer = VideoWriter(args.out_video, fps, size) if args.out_video else None
    try:
        with writer or contextlib.nullcontext():  # closed (playable) on errors too
            for i, image in read_video(video):
                t0 = time.perf_counter()
                try:
                    if i == 0:
                        tracker.initialize(image, args.init)
                        box, score = tracker.state, None
                    else:
                        box, score = tracker.track(image)
                except ValueError as err:  # an init box outside the frame
                    raise ValueError(f"{video}, frame {i + 1}: {err}") from None
                times.append(time.perf_counter() - t0)
                boxes.append(box)
                if writer:
                    writer.write(image, box, score)
    except (ValueError, KeyboardInterrupt) as err:  # keep what was computed, then stop with one line
        _stop_keeping_boxes(err if isinstance(err, ValueError) else "interrupted", boxes, out)
    write_atomic(out, format_boxes(boxes))
    overall = len(boxes) / (time.perf_counter() - start)
    print(f"{video.name}: {len(boxes)} frames, {_fps(times):.1f} fps on {tracker.device} "
          f"({tracker.mode}; {overall:.1f} fps with decoding and writing); boxes written to "
          f"{out}" + (f", video to {args.out_video}" if writer else ""))


def _shard():
    """(rank, world) under torchrun (its environment), else (0, 1); joins the process group
    (gloo: only small results travel between ranks) so that rank 0 can report for all."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return rank, world


def _rank_device(args, rank: int):
    """One GPU per rank under torchrun (LOCAL_RANK); the CPU or --device otherwise."""
    device = _device(args.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def write_result(out: Path, dataset: str, seq, boxes, times) -> None:
    """A sequence's result files, each written atomically; the box file marks completion."""
    target = result_path(out, seq.name, dataset)
    if dataset == "got10k":  # time file first: the box file marks completion
        write_atomic(target.with_name(f"{seq.name}_time.txt"), "".join("%.8f\n" % t for t in times))
    write_atomic(target, format_boxes(boxes))


def _finished(out: Path, seq, dataset: str) -> bool:
    """Whether a resumed run can skip `seq`: its box file holds a valid box per frame (a
    file cut short or damaged some other way is tracked again and replaced)."""
    path = result_path(out, seq.name, dataset)
    try:
        return path.exists() and len(load_boxes(path)) == len(seq.frames)
    except ValueError:
        return False


def cmd_dataset(args) -> None:
    from tqdm import tqdm

    sequences = data.read_dataset(args.dataset, args.root, args.split)
    rank, world = _shard()
    out, mine = Path(args.out), sequences[rank::world]  # each rank writes its own sequences
    todo = [s for s in mine if not _finished(out, s, args.dataset)]  # resumable
    args.device = str(_rank_device(args, rank))
    tracker = _make_tracker(args, batch=args.batch)
    failed, frames, t0 = {}, [0], time.perf_counter()
    bar = tqdm(total=len(todo), unit="seq", desc=f"{args.dataset} {args.split}"
               + (f" rank {rank}/{world}" if world > 1 else ""), position=rank)

    def done(seq, boxes, times):
        write_result(out, args.dataset, seq, boxes, times)
        frames[0] += len(boxes)
        bar.update(1)
        bar.set_postfix(fps=f"{frames[0] / (time.perf_counter() - t0):.1f}")

    def error(seq, err):  # a broken frame or ground truth: report, go on
        failed[seq.name] = str(err)
        bar.write(f"error: {err}; sequence skipped")  # no result file: a rerun retries it
        bar.update(1)

    run_batched(tracker, todo, done, error)
    bar.close()
    _report(len(todo) - len(failed), len(mine) - len(todo), failed, out, world)


def _report(tracked: int, skipped: int, failed: dict, out: Path, world: int) -> None:
    """Rank 0 prints the summary of every rank once all are done; failures end in an error."""
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (tracked, skipped, failed))
        tracked, skipped = sum(p[0] for p in parts), sum(p[1] for p in parts)
        failed = {k: v for p in parts for k, v in p[2].items()}
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return
    print(f"{tracked} sequences tracked, {skipped} already done, {len(failed)} failed; "
          f"results in {out}")
    if failed:
        lines = "".join(f"\n  {name}: {why}" for name, why in failed.items())
        raise SystemExit(f"error: {len(failed)} sequence(s) failed and have no result file "
                         f"(a rerun retries them):{lines}")


def _image_wh(frame):
    with Image.open(frame) as im:  # reads the header only
        return im.size


def _collect(folder, sequences, dataset: str) -> list:
    """(pred, gt, ...) per sequence from a result folder; folder None: the static box (the
    first ground-truth box held for every frame), the floor any tracker must beat."""
    results = []
    for seq in sequences:
        path = None if folder is None else result_path(folder, seq.name, dataset)
        if path is not None and not path.exists():
            raise SystemExit(f"error: result file for sequence {seq.name} not found: {path}")
        if seq.gt is None or (len(seq.gt) == 1 and len(seq.frames) > 1):
            raise SystemExit(f"error: sequence {seq.name} has no full ground truth to score "
                             "against (a test split with first-frame boxes only?)")
        if path is None:
            pred = np.repeat(seq.gt[:1], len(seq.frames), axis=0)
        else:
            pred = load_boxes(path)
            _check_result(pred, seq.gt, dataset, path)
        if dataset == "got10k":
            results.append((pred, seq.gt, seq.visible, _image_wh(seq.frames[0])))
        else:  # pytracking uses visibility flags for LaSOT only
            results.append((pred, seq.gt, seq.visible if dataset == "lasot" else None))
    return results


def _check_result(pred, gt, dataset: str, path) -> None:
    """Fail on a result file the scoring would refuse, naming the file (the scoring
    itself only sees arrays)."""
    try:
        if dataset == "got10k":
            if pred.shape != gt.shape:
                raise ValueError(f"{len(pred)} predicted boxes for {len(gt)} ground-truth frames")
        else:
            _prepare_pred(pred.copy(), gt)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _names(folders) -> list:
    names = [Path(f).resolve().name for f in folders]
    return names if len(set(names)) == len(names) else [str(f) for f in folders]


def analyze(dataset: str, root, split: str, folders, uav: bool = False, static: bool = False) -> dict:
    """Score result folders (and, with static, the static box first) -> {name: summary}."""
    sequences = data.read_dataset(dataset, root, split)
    summaries = {}
    named = ([("static box", None)] if static else []) + list(zip(_names(folders), folders))
    for name, folder in named:
        results = _collect(folder, sequences, dataset)
        summaries[name] = (got10k_summary(results) if dataset == "got10k"
                           else ope_summary(results, uav=uav))
    return summaries


def paired(first, other) -> dict:
    """Per-sequence comparison of two trackers on the same sequences (percent): the mean
    difference other - first with its standard error, and on how many sequences each is
    ahead. Far tighter than comparing two averages: most of their spread is which
    sequences are hard, shared by both. Every sequence weighs the same here, so for GOT-10k
    the mean difference can differ slightly from the difference of the frame-pooled AOs."""
    a, b = np.asarray(first, float), np.asarray(other, float)
    keep = ~(np.isnan(a) | np.isnan(b))
    d = b[keep] - a[keep]
    if d.size < 2:
        raise ValueError("a paired comparison needs at least 2 sequences with scores")
    return {"mean_diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size)),
            "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "sequences": int(d.size)}


def _score_keys(dataset: str):
    return ("ao", "sr50", "sr75") if dataset == "got10k" else ("auc", "precision", "norm_precision")


def cmd_analyze(args) -> None:
    summaries = analyze(args.dataset, args.root, args.split, args.results, args.uav, args.static_box)
    keys = _score_keys(args.dataset)
    width = max(len(n) for n in summaries) + 2
    print(f"{'results':<{width}}" + "".join(f"{k:>16}" for k in keys) + f"{'sequences':>12}")
    for name, s in summaries.items():
        scores = "".join(f"{s[k]:>16.2f}" for k in keys)
        print(f"{name:<{width}}{scores}{s['sequences']:>12}")
    names = list(summaries)
    try:
        pairs = {n: paired(summaries[names[0]]["per_sequence"], summaries[n]["per_sequence"])
                 for n in names[1:]}
    except ValueError as e:
        pairs = {}
        print(f"no paired comparison: {e}")
    for n, p in pairs.items():
        print(f"{n} vs {names[0]}, paired per sequence: {keys[0]} {p['mean_diff']:+.2f} "
              f"(standard error {p['se']:.2f}), ahead on {p['better']} and behind on "
              f"{p['worse']} of {p['sequences']} sequences")
    if args.plots:  # only when asked: never PNGs dropped into the working directory
        plots = Path(args.plots)
        plots.mkdir(parents=True, exist_ok=True)
        kinds = ["success"] if args.dataset == "got10k" else list(PLOT_KINDS)  # GOT-10k: AO only
        for kind in kinds:
            plot_curves(summaries, plots / f"{kind}_plot.png", kind)
        print(f"plots written to {plots}")
    if args.json:
        table = {n: {k: s[k] for k in keys + ("sequences",)} for n, s in summaries.items()}
        report = {"dataset": args.dataset, "split": args.split, "results": table,
                  "paired_vs_first": pairs}
        write_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    command = (cmd_analyze if args.analyze else cmd_sequence if args.sequence
               else cmd_video if args.video else cmd_dataset)
    try:
        command(args)
    except (ValueError, OSError) as err:
        # Bad input: data.py, hit.py and this file raise ValueError naming the file, line
        # or value (a missing folder, a malformed ground-truth line, a corrupt checkpoint),
        # and OSError names the path it could not write; one line says it, a traceback
        # would bury it.
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:  # --dataset: each finished sequence's files are written already
        raise SystemExit("interrupted" + ("; the same command resumes" if command is cmd_dataset else "")) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
