"""Track with HiT and score trackers the way the standard toolkits do.

HiT (ICCV 2023, "Exploring Lightweight Hierarchical Vision Transformers for Efficient
Visual Tracking") tracks with a fixed template and no post-processing (paper Sec. 3.4):
each frame is cropped around the previous box, the network predicts the new box, and the
box is mapped back to the image, all as the released tracker does it: template crop of
side ceil(sqrt(w*h) * 2) resized to 128, search crop of side ceil(sqrt(w*h) * 4) around
the previous box resized to 256 (crop rules: data.crop_resize), the prediction mapped
back around the previous box's exact centre and clipped with a 10-pixel margin; no
window or scale penalty, no template update. The evaluation protocol is paper Sec. 4
(one-pass evaluation as pytracking's analysis computes it for LaSOT, TrackingNet, UAV123
and NFS; the official GOT-10k toolkit for GOT-10k).

Contents, in reading order:
  1. `map_box_back`, `clip_box`, then `Tracker(model, device=None, mode="fused")` with
     `initialize` / `track`: one tracked frame, top to bottom (crops: data.py);
  2. sequence and dataset runs: `run_sequence`, batched `run_batched`, result files;
  3. metrics (numpy in, numbers out): `ope_summary`, `got10k_summary`, `paired`;
  4. drawing with Pillow: `draw_gif`, `plot_curves`; video files with PyAV (optional):
     `read_video`, `VideoWriter`;
  5. the command line (`python track.py --help`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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

# -------------------- 1. One tracked frame: the released tracker's box rules, then Tracker

TEMPLATE_FACTOR, TEMPLATE_SIZE = 2.0, 128
SEARCH_FACTOR, SEARCH_SIZE = 4.0, 256


def map_box_back(pred_cxcywh, prev_box, resize_factor: float, search_size: int = SEARCH_SIZE):
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


class Tracker:
    """HiT single-object tracker: fixed first-frame template, no post-processing.

    `mode` is one of fast.MODES: the model is prepared with fast.prepare (in place; every
    mode except "eager" folds BatchNorm first, as the released tracker does). Crops go in
    as float32 in every mode: each prepared model casts to its own precision inside.
    `path` says what runs (for `fast`, which of its paths); `batch` is the widest forward
    (run_batched's slots).
    """

    def __init__(self, model: torch.nn.Module, device=None, mode: str = "fused", batch: int = 1):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.mode, self.batch = mode, batch
        self.model = fast.prepare(model, mode, self.device, batch)
        self.exact_cuda = self.device.type == "cuda" and mode in fast.EXACT_MODES  # float32, not TF32
        self.path = fast.path_of(self.model, mode)
        self.template = None  # (1, 3, 128, 128) normalised, on device
        self.state = None  # previous box (x, y, w, h) in pixels
        self.last_timing = {}  # ms of the last track(): preprocess / network / postprocess

    def crops(self, images, boxes, factor: float, size: int):
        """N RGB images, N boxes -> (normalised crops (N, 3, size, size) float32 on the
        device, N resize factors): data.crop_resize, then data.normalize (ImageNet mean/std)."""
        if self.mode == "eager":  # the paper's path, as written in data.py (numpy: a CPU tensor as an array)
            cut = [data.crop_resize(np.asarray(image), box, factor, size) for image, box in zip(images, boxes)]
            crops = torch.stack([data.normalize(crop) for crop, _, _ in cut])  # N x (3, S, S) -> (N, 3, S, S)
            return crops.to(self.device), [resize_factor for _, resize_factor, _ in cut]
        # Every other mode: the same crops as batched torch ops on the model's device, the
        # same bits (tests/test_track.py::test_real_tiny_prepared_in_place_crops_and_tracks), faster.
        crops, resize_factors, _ = fast.crop_resize_torch(images, boxes, factor, size, self.device)
        return fast.normalize_torch(crops), resize_factors

    def template_crop(self, image, box):
        """(checked box, template (1, 3, 128, 128) on the device) for a first frame."""
        image = data.check_image(image)
        box = tuple(map(float, data.check_box(box, image.shape[:2])))  # (x, y, w, h)
        return box, self.crops([image], [box], TEMPLATE_FACTOR, TEMPLATE_SIZE)[0]

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
        self.state, self.template = self.template_crop(image, box)

    @torch.inference_mode()
    def track(self, image):
        """-> ((x, y, w, h) in pixels, corner-map score (hit.CornerHead.from_maps))."""
        if self.template is None:
            raise ValueError("track() called before initialize()")
        image = data.check_image(image)
        t0 = time.perf_counter()
        search, resize_factors = self.crops([image], [self.state], SEARCH_FACTOR, SEARCH_SIZE)  # (1, 3, 256, 256)
        hit.sync(self.device)  # so that the timing split is honest
        t1 = time.perf_counter()
        preds, scores = self.forward(self.template, search)
        t2 = time.perf_counter()
        self.state, score = self.next_box(preds[0], self.state, resize_factors[0], image), scores[0]
        t3 = time.perf_counter()
        self.last_timing = {"preprocess": 1e3 * (t1 - t0), "network": 1e3 * (t2 - t1), "postprocess": 1e3 * (t3 - t2)}
        return self.state, score


# -------------------- 2. Sequences and datasets


def track_frames(tracker: Tracker, images, init_box):
    """Yield (image, box, score, seconds) per image: the first initialises with `init_box`
    (score None), the others are tracked. Seconds cover initialize / track only, not
    reading the image (as pytracking records)."""
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        if i == 0:
            tracker.initialize(image, init_box)
            box, score = tracker.state, None
        else:
            box, score = tracker.track(image)
        yield image, box, score, time.perf_counter() - t0


def _arrays(boxes, times):
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(times, np.float64)  # (N, 4), (N,)


class FrameError(ValueError):
    """A frame that could not be read or tracked (a truncated JPEG, an initial box outside
    the image), with the boxes and times of the frames before it, for the caller to keep."""

    def __init__(self, message: str, frame: int, boxes: np.ndarray, times: np.ndarray):
        super().__init__(message)
        self.frame = frame  # 1-based number of the frame that failed
        self.boxes, self.times = boxes, times  # (frame - 1, 4), (frame - 1,)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during run_sequence, with the boxes and times of the frames done before it."""

    def __init__(self, boxes: np.ndarray, times: np.ndarray):
        super().__init__(f"interrupted after {len(boxes)} frames")
        self.boxes, self.times = boxes, times


def _frame_error(seq, err, boxes, times) -> FrameError:
    """`err` at the frame after the len(boxes) done, naming the sequence and the frame."""
    k = len(boxes) + 1
    return FrameError(f"sequence {seq.name}, frame {k} of {len(seq.frames)}: {err}", k, boxes, times)


def _init_box(seq):
    if seq.gt is None or len(seq.gt) == 0:
        raise ValueError(f"sequence {seq.name}: no init box and no ground truth")
    return seq.gt[0]


def run_sequence(tracker: Tracker, seq, init_box=None):
    """Track `seq` (data.Sequence) -> (boxes (N, 4), seconds per frame (N,)). Frame 0
    initialises with `init_box` or the first ground-truth box and reports that box. A frame
    that cannot be read or tracked raises FrameError, and Ctrl-C Interrupted, each holding
    the boxes so far."""
    init_box = _init_box(seq) if init_box is None else init_box
    boxes, times = [], []
    try:
        for _, box, _, seconds in track_frames(tracker, map(data.read_image, seq.frames), init_box):
            boxes.append(box)
            times.append(seconds)
    except ValueError as err:  # the message of data.read_image names the file
        raise _frame_error(seq, err, *_arrays(boxes, times)) from err
    except KeyboardInterrupt:
        raise Interrupted(*_arrays(boxes, times)) from None
    return _arrays(boxes, times)


class _Slot:
    """One sequence in flight in run_batched: frame 0 read and initialised (FrameError if it
    cannot be), its own template and previous box, and its frames 1, 2, ... read (and, where
    a core is free, decoded) ahead in a background thread (fast.prefetch_images)."""

    def __init__(self, tracker: Tracker, seq, decode_ahead: bool):
        n, init_box = len(seq.frames), _init_box(seq)
        try:
            image = data.read_image(seq.frames[0])
            t0 = time.perf_counter()
            self.box, self.template = tracker.template_crop(image, init_box)
        except ValueError as err:
            raise _frame_error(seq, err, np.zeros((0, 4)), np.zeros(0)) from err
        self.seq, self.boxes, self.times, self.next = seq, np.zeros((n, 4)), np.zeros(n), 1  # filled as it goes
        self.boxes[0], self.times[0] = self.box, time.perf_counter() - t0
        self.frames = fast.prefetch_images(seq.frames[1:], decode=decode_ahead)

    def close(self):
        self.frames.close()  # stops and joins the decoding thread


@torch.inference_mode()
def run_batched(tracker: Tracker, sequences, on_done, on_error):
    """Track `sequences` tracker.batch at a time, in lockstep: every step, the next frame of
    each sequence in flight goes through one batched forward; a finished sequence's slot
    takes the next sequence. Each slot keeps its own template and previous box, so a
    sequence's boxes do not depend on its neighbours (up to the float rounding of batched
    GEMMs). Frames are read ahead in background threads (and decoded there where a core is
    free: fast.decode_ahead; else side by side in a thread pool); a step's search crops
    are cut together (Tracker.crops). Calls on_done(seq, boxes (N, 4), times (N,)) per
    finished sequence, in the order they finish, and on_error(seq, FrameError) for one that
    cannot be read. A frame's time is its share of the step's preprocessing and forward
    (decoding excluded); frame 0's is initialisation, as run_sequence records."""
    queue, slots = iter(sequences), [None] * tracker.batch
    ahead = fast.decode_ahead(tracker.device)  # frames decoded in the readers, or here

    def refill(i):
        slots[i] = None
        for seq in queue:
            try:
                slot = _Slot(tracker, seq, ahead)
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

    # Frames decoded here rather than in the readers: a step's frames side by side, one
    # thread per usable core; PIL lets go of the GIL while it decodes (SPEED.md).
    pool = None if ahead or tracker.batch == 1 else ThreadPoolExecutor(
        max_workers=fast.usable_cores(), thread_name_prefix="hit_decode")
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
            fail(i, _frame_error(slot.seq, frame, slot.boxes[:slot.next].copy(), slot.times[:slot.next].copy()))
        else:
            live.append(i)
            images.append(frame)
    return live, images


def _step(tracker, slots, images):
    """One step for the slots in flight: their search crops together on the device, one
    forward (padded to tracker.batch rows where the mode needs it), each box mapped back."""
    t0 = time.perf_counter()
    searches, factors = tracker.crops(images, [s.box for s in slots], SEARCH_FACTOR, SEARCH_SIZE)  # (R, 3, 256, 256)
    templates = torch.cat([s.template for s in slots])  # R x (1, 3, 128, 128) -> (R, 3, 128, 128)
    pad = tracker.batch - len(slots) if tracker.mode in fast.FIXED_BATCH_MODES else 0
    if pad:  # repeat the last row: its outputs are dropped
        templates = torch.cat([templates, templates[-1:].expand(pad, -1, -1, -1)])  # (B, 3, 128, 128)
        searches = torch.cat([searches, searches[-1:].expand(pad, -1, -1, -1)])  # (B, 3, 256, 256)
    preds, _ = tracker.forward(templates, searches)
    share = (time.perf_counter() - t0) / len(slots)
    for slot, pred, resize_factor, image in zip(slots, preds, factors, images):
        k = slot.next
        slot.box = tracker.next_box(pred, slot.box, resize_factor, image)
        slot.boxes[k], slot.times[k], slot.next = slot.box, share, k + 1


def result_path(folder, seq_name: str, dataset: str) -> Path:
    # GOT-10k submission layout <seq>/<seq>_001.txt; everything else <seq>.txt.
    if dataset == "got10k":
        return Path(folder) / seq_name / f"{seq_name}_001.txt"
    return Path(folder) / f"{seq_name}.txt"


def write_result(out: Path, dataset: str, seq, boxes, times) -> None:
    """A sequence's result files, each written atomically; the box file marks completion."""
    target = result_path(out, seq.name, dataset)
    if dataset == "got10k":  # time file first: the box file marks completion
        data.write_atomic(target.with_name(f"{seq.name}_time.txt"), "".join("%.8f\n" % t for t in times))
    data.write_atomic(target, data.format_boxes(boxes))


def finished(out: Path, seq, dataset: str) -> bool:
    """Whether a resumed run can skip `seq`: its box file holds a valid box per frame (a
    file cut short or damaged some other way is tracked again and replaced)."""
    path = result_path(out, seq.name, dataset)
    try:
        return path.exists() and len(data.read_boxes(path, results=True)) == len(seq.frames)
    except ValueError:
        return False


def static_box(seq) -> np.ndarray:
    """The first ground-truth box held for every frame (N, 4): the floor any tracker must beat."""
    return np.repeat(seq.gt[:1], len(seq.frames), axis=0)  # (1, 4) -> (N, 4)


# -------------------- 3. Metrics

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
    # pytracking's pixel centre x + (w - 1) / 2; (N, 2)
    diff = (pred[:, :2] + 0.5 * (pred[:, 2:] - 1.0)) - (gt[:, :2] + 0.5 * (gt[:, 2:] - 1.0))
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
    return {"auc": float(mean["success_curve"].mean() * 100), "precision": float(mean["precision_curve"][20] * 100),
            "norm_precision": float(mean["norm_precision_curve"][20] * 100), "sequences": len(results),
            "per_sequence": [float(c[0].mean() * 100) for c in per_seq], **mean}  # per_sequence: each one's AUC


def iou_got10k(pred, gt, image_wh=None) -> np.ndarray:
    """GOT-10k toolkit `rect_iou`: continuous corners (x2 = x + w), optional clipping of
    both boxes to the image (its `bound` = resolution), eps in the union, result in [0, 1]."""
    pred, gt = _boxes(pred, "pred"), _boxes(gt, "gt")
    if image_wh is not None:
        wh = np.asarray(image_wh, np.float64)
        for r in (pred, gt):
            r[:, :2] = np.clip(r[:, :2], 0, wh)
            r[:, 2:] = np.clip(r[:, 2:], 0, wh - r[:, :2])
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
    return {"ao": float(ious.mean() * 100), "sr50": float((ious > 0.5).mean() * 100),
            "sr75": float((ious > 0.75).mean() * 100), "sequences": len(results),
            # each sequence's mean IoU (NaN when it has no evaluable frame), for paired comparisons
            "per_sequence": [float(i.mean() * 100) if i.size else float("nan") for i in pooled],
            "success_curve": (ious[:, None] > GOT10K_THRESHOLDS).mean(axis=0)}


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


# -------------------- 4. Drawing (Pillow only) and video files (PyAV, optional)

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
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


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

    _axes(draw, (left, top, right, bottom), x_max, small)
    draw.text(((left + right) / 2, 8), title, fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, size[1] - 8), xlabel, fill="black", font=small, anchor="mb")
    strip = Image.new("RGB", (int(draw.textlength(ylabel, font=small)) + 4, 18), "white")
    ImageDraw.Draw(strip).text((strip.width / 2, 9), ylabel, fill="black", font=small, anchor="mm")
    img.paste(strip.rotate(90, expand=True), (5, int((top + bottom - strip.width) / 2)))  # Pillow draws no rotated text
    for i, (_, _, _, xs, curve) in enumerate(entries):
        points = [(left + (right - left) * x / x_max, bottom - (bottom - top) * y / 100) for x, y in zip(xs, curve)]
        draw.line(points, fill=CURVE_COLOURS[i % len(CURVE_COLOURS)], width=2)
    short = {"auc": "AUC", "ao": "AO", "precision": "P", "norm_precision": "P_norm"}
    labels = [f"{name} [{short[key]} {score:.1f}]" for score, name, key, _, _ in entries]
    _legend(draw, labels, (left, top, right, bottom), corner, small)
    img.save(path)


def _axes(draw, box, x_max: float, font) -> None:
    left, top, right, bottom = box
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
    """Yield an RGB uint8 (H, W, 3) array per frame of a video file (RGB: the network's
    order; the released demo feeds OpenCV's BGR). A file that stops early raises ValueError
    naming it, after the frames before the damage: data that cannot be decoded (a cut-off
    MP4; the frames the decoder still holds come first), fewer frames than the header
    declares (a cut-off MKV decodes without complaint), or no frames at all."""
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
            yield frame.to_ndarray(format="rgb24")
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


# -------------------- 5. Command line

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
    """'x,y,w,h' -> 4 floats (argparse type): finite, width and height > 0 (data.check_box)."""
    try:
        return tuple(float(v) for v in data.check_box(text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h, got {text!r}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Track with HiT and score results as pytracking / the GOT-10k toolkit do.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="released *.pth.tar or a checkpoint of this project")
    p.add_argument("--sequence", help="folder of frames (optional groundtruth.txt)")
    p.add_argument("--init", type=parse_box, help="initial box x,y,w,h in pixels (a negative x: --init=-5,3,30,30)")
    p.add_argument("--gif", help="write an animated GIF of the boxes (with --sequence)")
    p.add_argument("--video", help="video file to track, any format FFmpeg reads (needs --init and PyAV)")
    p.add_argument("--out-video", help="write the video back with the box and score drawn (H.264, else MPEG-4)")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--root", help="dataset root")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--out", help="result file (--sequence, --video; default ./<name>.txt) or folder (--dataset)")
    p.add_argument("--analyze", action="store_true", help="score --results folders")
    p.add_argument("--results", nargs="+", help="result folders to score; each after the first is also "
                   "compared with the first, paired per sequence (difference, standard error, wins)")
    p.add_argument("--json", help="write the summary (percent) to this file")
    p.add_argument("--plots", help="write the success / precision plot PNGs into this folder")
    p.add_argument("--static-box", action="store_true", help="with --analyze: score the static box "
                   "(the first box held for every frame) first, so that every tracker is compared with it")
    p.add_argument("--uav", action="store_true", help="pytracking's UAV123 rule: invalid frames are precision hits")
    p.add_argument("--device", help="auto (the default: cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--mode", default="fused", choices=fast.MODES, help="fast.prepare's mode (SPEED.md; default fused)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=1, help="with --dataset: track this many sequences in lockstep, "
                   "one batched forward per step. Under torchrun each rank (one GPU per rank where present) "
                   "takes every world-th sequence")
    return p


# The flags (argparse dests) each command uses, any other is an error, and those it needs.
RUN = {"checkpoint", "device", "mode", "threads", "out"}
COMMANDS = {"sequence": RUN | {"init", "gif"}, "video": RUN | {"init", "out_video"},
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
    for flag, value in (("--batch", args.batch), ("--threads", args.threads)):
        if value is not None and value < 1:
            p.error(f"{flag} must be >= 1, got {value}")


def _make_tracker(args, batch: int = 1, device=None) -> Tracker:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device or hit.parse_device(args.device)
    model = hit.load_checkpoint(args.checkpoint, device=device)
    tracker = Tracker(model, device=device, mode=args.mode, batch=batch)
    if tracker.path != args.mode:  # `fast` has several paths: say which one runs
        print(f"mode {args.mode}: {tracker.path}", file=sys.stderr)
    return tracker


def _done(name: str, boxes, times, tracker: Tracker, out: Path, extra: str = "") -> None:
    """Write the boxes of --sequence / --video and say so, with the tracking speed: frame 0
    is initialisation, so fps counts tracked frames, as the toolkits report speed."""
    data.write_atomic(out, data.format_boxes(boxes))
    t = np.asarray(times[1:] if len(times) > 1 else times)
    fps = float(len(t) / t.sum()) if t.sum() > 0 else float("nan")
    print(f"{name}: {len(boxes)} frames, {fps:.1f} fps on {tracker.device} ({tracker.mode}{extra}); "
          f"boxes written to {out}")


def _stop_keeping_boxes(err, boxes, out: Path):
    """Write the boxes computed before `err` (none: no file), then stop with one line."""
    if len(boxes) == 0:
        raise SystemExit(f"error: {err}") from None
    data.write_atomic(out, data.format_boxes(boxes))
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
    _done(seq.name, boxes, times, tracker, out)
    if args.gif:
        draw_gif(seq.frames, boxes, seq.gt, args.gif)
        print(f"GIF written to {args.gif}")


def cmd_video(args) -> None:
    video = Path(args.video)
    fps, size = video_info(video)  # a missing or unreadable file fails before the model loads
    try:
        data.check_box(args.init, size[::-1])  # (width, height) -> (height, width)
    except ValueError as err:
        raise ValueError(f"{video}, frame 1: {err}") from None
    tracker = _make_tracker(args)
    out = Path(args.out) if args.out else Path.cwd() / f"{video.stem}.txt"
    boxes, times, start = [], [], time.perf_counter()
    writer = VideoWriter(args.out_video, fps, size) if args.out_video else None
    try:
        with contextlib.closing(writer) if writer else contextlib.nullcontext():  # playable on errors too
            for image, box, score, seconds in track_frames(tracker, read_video(video), args.init):
                boxes.append(box)
                times.append(seconds)
                if writer:
                    writer.write(image, box, score)
    except (ValueError, KeyboardInterrupt) as err:  # keep what was computed, then stop with one line
        _stop_keeping_boxes(err if isinstance(err, ValueError) else "interrupted", boxes, out)
    overall = len(boxes) / (time.perf_counter() - start)
    _done(video.name, boxes, times, tracker, out, f"; {overall:.1f} fps with decoding and writing")
    if writer:
        print(f"video written to {args.out_video}")


def _shard(args):
    """(rank, world, device) under torchrun: each rank tracks every world-th sequence, on
    its own GPU (LOCAL_RANK) where it has one, and joins the process group (gloo: only
    small results travel between ranks) so that rank 0 can report for all. Else (0, 1, --device)."""
    rank, world, local_rank = hit.distributed_env()
    device = hit.parse_device(args.device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return rank, world, device


def cmd_dataset(args) -> None:
    from tqdm import tqdm

    sequences = data.read_dataset(args.dataset, args.root, args.split)
    rank, world, device = _shard(args)
    out, mine = Path(args.out), sequences[rank::world]  # each rank writes its own sequences
    todo = [s for s in mine if not finished(out, s, args.dataset)]  # resumable
    tracker = _make_tracker(args, args.batch, device)
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
    """(pred, gt, ...) per sequence from a result folder; folder None: the static box."""
    results = []
    for seq in sequences:
        if seq.gt is None or (len(seq.gt) == 1 and len(seq.frames) > 1):
            raise SystemExit(f"error: sequence {seq.name} has no full ground truth to score "
                             "against (a test split with first-frame boxes only?)")
        pred = static_box(seq) if folder is None else _read_result(folder, seq, dataset)
        if dataset == "got10k":
            results.append((pred, seq.gt, seq.visible, _image_wh(seq.frames[0])))
        else:  # pytracking uses visibility flags for LaSOT only
            results.append((pred, seq.gt, seq.visible if dataset == "lasot" else None))
    return results


def _read_result(folder, seq, dataset: str) -> np.ndarray:
    """A sequence's result boxes, refused (naming the file) where the scoring would refuse them."""
    path = result_path(folder, seq.name, dataset)
    if not path.exists():
        raise SystemExit(f"error: result file for sequence {seq.name} not found: {path}")
    pred = data.read_boxes(path, results=True)
    try:
        if dataset != "got10k":
            _prepare_pred(pred.copy(), seq.gt)
        elif pred.shape != seq.gt.shape:
            raise ValueError(f"{len(pred)} predicted boxes for {len(seq.gt)} ground-truth frames")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return pred


def analyze(dataset: str, root, split: str, folders, uav: bool = False, static: bool = False) -> dict:
    """Score result folders (and, with static, the static box first) -> {name: summary}."""
    sequences = data.read_dataset(dataset, root, split)
    summaries, names = {}, [Path(f).resolve().name for f in folders]
    names = names if len(set(names)) == len(names) else [str(f) for f in folders]
    named = ([("static box", None)] if static else []) + list(zip(names, folders))
    for name, folder in named:
        results = _collect(folder, sequences, dataset)
        summaries[name] = (got10k_summary(results) if dataset == "got10k"
                           else ope_summary(results, uav=uav))
    return summaries


def cmd_analyze(args) -> None:
    summaries = analyze(args.dataset, args.root, args.split, args.results, args.uav, args.static_box)
    keys = ("ao", "sr50", "sr75") if args.dataset == "got10k" else ("auc", "precision", "norm_precision")
    width = max(len(n) for n in summaries) + 2
    print(f"{'results':<{width}}" + "".join(f"{k:>16}" for k in keys) + f"{'sequences':>12}")
    for name, s in summaries.items():
        print(f"{name:<{width}}" + "".join(f"{s[k]:>16.2f}" for k in keys) + f"{s['sequences']:>12}")
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
        data.write_atomic(args.json, json.dumps(report, indent=2) + "\n")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    command = (cmd_analyze if args.analyze else cmd_sequence if args.sequence
               else cmd_video if args.video else cmd_dataset)
    try:
        command(args)
    except (ValueError, OSError, ImportError) as err:  # bad input, named; a missing package: one line
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:  # --dataset: each finished sequence's files are written already
        raise SystemExit("interrupted" + ("; the same command resumes" if command is cmd_dataset else "")) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
