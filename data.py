"""Data for HiT: image I/O, the released crop/resize, dataset readers and training pairs.

Paper: "Exploring Lightweight Hierarchical Vision Transformers for Efficient Visual
Tracking" (ICCV 2023), Sec. 3.4 (training objective, template/search crops) and
Sec. 4.1 (training data: LaSOT, GOT-10k, COCO, TrackingNet). The paper gives the crop
factors and the data sets; the numbers here that it leaves out (where a crop's corner
lands, its zero padding, OpenCV's INTER_LINEAR resize, how pairs are sampled, jittered
and augmented) follow the released implementation, and each function says which.
The procedural data set that stands in for the real ones lives in synth.py.

Boxes are (x, y, w, h) in pixels unless a name says otherwise.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
_COEF_SCALE = 2048  # OpenCV INTER_RESIZE_COEF_SCALE (11 fractional bits)
SIMD_LANES = 8     # int16 lanes of opencv-python's SSE baseline build (see _vertical_pass)

# ----------------------------------------------------------------------------- images


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded PIL image as uint8 (H, W, 3) RGB, converted the way cv2.imread(IMREAD_COLOR)
    does in the released code: alpha dropped, palette/grayscale expanded, 16-bit images
    keep their high byte (v >> 8, OpenCV's png_set_strip_16 when 8-bit output is asked)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.int64)
        gray = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H,W) -> (H,W,3)
    if img.mode == "F":
        gray = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H,W) -> (H,W,3)
    if img.mode != "RGB":
        img = img.convert("RGBA" if "transparency" in img.info else img.mode)
        img = img.convert("RGB")
    return np.array(img)


def read_image(path, raw: bytes | None = None) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB (see pil_to_rgb); `raw`: the file's
    bytes, already read. EXIF orientation is not applied (dataset annotations refer to the
    stored pixel grid)."""
    try:
        with Image.open(io.BytesIO(raw) if raw is not None else path) as img:
            img.load()
            return pil_to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


# ----------------------------------------------------------------------------- resize


def _linear_taps(src_len: int, dst_len: int, clamp: bool):
    """Source indices and 11-bit fixed-point weights of OpenCV's INTER_LINEAR.

    Mirrors cv::resize: scale = 1 / (dst/src) in double; f = float((d + 0.5) * scale - 0.5);
    s = floor(f); f -= s (float). Horizontally (clamp=True) taps left of the image use
    (s=0, f=0) and taps at/after the last pixel use (s=src-1, f=0); vertically f is not
    clamped, only the two row indices are. Each weight is rounded on its own (cvRound,
    half to even), so the two weights need not sum to 2048.
    """
    scale = 1.0 / (dst_len / src_len)
    f = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s.astype(np.float32)
    if clamp:
        low, high = s < 0, s >= src_len - 1
        f[low | high] = 0.0
        s[low] = 0
        s[high] = src_len - 1
    c0 = np.rint((np.float32(1.0) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    c1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    i0 = np.clip(s, 0, src_len - 1)
    i1 = np.clip(s + 1, 0, src_len - 1)
    return i0, i1, c0, c1


def _vertical_pass(h0: np.ndarray, h1: np.ndarray, cy0: np.ndarray, cy1: np.ndarray) -> np.ndarray:
    """Combine two int32 row-pass buffers exactly as OpenCV's uint8 vertical pass does.

    OpenCV's VResizeLinearVec_32s8u (universal intrinsics) computes, per element,
    t = mulhi16(H0 >> 4, b0) + mulhi16(H1 >> 4, b1); out = sat_u8((t + 2) >> 2).
    It covers the first floor(n / 8) * 8 elements of a row (8 int16 lanes on the SSE
    baseline of opencv-python wheels); the rest take the scalar path
    (H0*b0 + H1*b1 + 2^21) >> 22. Both differ by up to 1 grey level, hence the split.
    Crops of 128 and 256 pixels (n = 384, 768) are covered by the vector path alone.
    int32 is exact for the vector path (|H >> 4| < 2^15, |b| <= 2^11); the scalar
    path needs int64.
    """
    n = h0.shape[1]
    b0, b1 = cy0[:, None], cy1[:, None]  # (out,) -> (out, 1): one weight per output row
    vec = SIMD_LANES * (n // SIMD_LANES)
    t, t1 = h0[:, :vec] >> 4, h1[:, :vec] >> 4  # in-place from here: this runs every frame
    t *= b0
    t >>= 16
    t1 *= b1
    t1 >>= 16
    t += t1
    t += 2
    t >>= 2
    if vec < n:
        tail = (h0[:, vec:].astype(np.int64) * b0 + h1[:, vec:].astype(np.int64) * b1 + (1 << 21)) >> 22
        t = np.concatenate([t, tail.astype(np.int32)], axis=1)
    return np.clip(t, 0, 255).astype(np.uint8)


def _resample(src, ys, xs) -> np.ndarray:
    """Two-pass fixed-point bilinear resampling of a uint8 (H, W, C) array.

    ys/xs are (i0, i1, c0, c1) tap tables; a zero weight stands for a zero (padding) pixel.
    """
    y0, y1, cy0, cy1 = ys
    x0, x1, cx0, cx1 = xs
    height, width, ch = src.shape
    plane = src.reshape(height, width * ch)  # (H, W, C) -> (H, W*C): one gather per tap
    lanes = np.arange(ch)
    col0 = (x0[:, None] * ch + lanes).ravel()  # (out_w, C) -> (out_w*C,)
    col1 = (x1[:, None] * ch + lanes).ravel()
    w0 = np.repeat(cx0.astype(np.int32), ch)  # (out_w,) -> (out_w*C,)
    w1 = np.repeat(cx1.astype(np.int32), ch)
    # Row pass (HResizeLinear): exact integer sums, (out_h, out_w*C) int32 per row tap.
    h0, h1 = (rows[:, col0] * w0 + rows[:, col1] * w1 for rows in (plane[y0], plane[y1]))
    out = _vertical_pass(h0, h1, cy0.astype(np.int32), cy1.astype(np.int32))
    return out.reshape(len(y0), len(x0), ch)  # (out_h, out_w*C) -> (out_h, out_w, C)


def resize_linear(src: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Bit-exact emulation of cv2.resize(src, (out_w, out_h), interpolation=INTER_LINEAR)
    on uint8 (H, W, C) images (x86 build). Same size returns a copy, as OpenCV does.

    OpenCV's special case for an exact 2x downscale (INTER_AREA fast path) gives the same
    numbers as the formula here, so it needs no branch. Newer OpenCV releases (2025+) add
    a separate exact-2x-upscale path that is not emulated.
    """
    if src.dtype != np.uint8 or src.ndim != 3:
        raise ValueError(f"resize_linear expects uint8 (H, W, C), got {src.dtype} {src.shape}")
    h, w = src.shape[:2]
    if (h, w) == (out_h, out_w):
        return src.copy()
    return _resample(src, _linear_taps(h, out_h, False), _linear_taps(w, out_w, True))


def _padded_taps(taps, start: int, pad_lo: int, pad_hi: int, sz: int, img_len: int):
    """Re-target crop-space taps at image indices; taps in the zero padding get weight 0."""
    i0, i1, c0, c1 = taps
    valid0 = (i0 >= pad_lo) & (i0 < sz - pad_hi)
    valid1 = (i1 >= pad_lo) & (i1 < sz - pad_hi)
    return (np.clip(i0 + start, 0, img_len - 1), np.clip(i1 + start, 0, img_len - 1),
            np.where(valid0, c0, 0), np.where(valid1, c1, 0))


def check_image(image) -> np.ndarray:
    """A frame as every reader and the tracker take it: PIL image (any mode) or RGB uint8
    (H, W, 3) numpy array (a torch tensor of that dtype and shape passes too) -> array."""
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise ValueError(f"image must be a numpy array or PIL image, got {type(image).__name__}")
    if image.dtype not in (np.uint8, torch.uint8) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 RGB (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    return image


def check_box(box, image_hw=None) -> np.ndarray:
    """A box (x, y, w, h) given by a user: 4 finite numbers, w, h > 0, and when image_hw
    is given, at least partly inside the image -> float64 (4,)."""
    try:
        b = np.array([float(v) for v in box], np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers (x, y, w, h), got {box!r}") from None
    if b.shape != (4,):
        raise ValueError(f"box must be 4 numbers (x, y, w, h), got {box!r}")
    if not np.isfinite(b).all():
        raise ValueError(f"box has non-finite values: {box!r}")
    if b[2] <= 0 or b[3] <= 0:
        raise ValueError(f"box must have positive width and height, got {box!r}")
    if image_hw is not None:
        height, width = image_hw
        if b[0] >= width or b[1] >= height or b[0] + b[2] <= 0 or b[1] + b[3] <= 0:
            raise ValueError(f"box {box!r} lies fully outside the {width}x{height} image")
    return b


def crop_resize(image: np.ndarray, box_xywh, factor: float, out_size: int):
    """Square crop of side ceil(sqrt(w*h)*factor) around the box, zero padded and resized
    to out_size, exactly as the released `sample_target`: the corner is rounded with
    Python's round (half to even) and the right/bottom padding is one pixel too large.

    Returns (crop uint8 (out_size, out_size, 3), resize_factor = out_size / sz,
    crop_xyxy = (x1, y1, x2, y2) in image pixels, x2 - x1 = sz).

    The padded crop is never materialised: padding taps get a zero weight, which is the
    same arithmetic as resizing the zero-padded array, so huge crops stay cheap.
    """
    check_image(image)
    ys, xs, resize_factor, crop_xyxy = crop_taps(image.shape[:2], box_xywh, factor, out_size)
    return _resample(image, ys, xs), resize_factor, crop_xyxy


def crop_taps(image_hw, box_xywh, factor: float, out_size: int):
    """The released crop geometry as image-space tap tables (see crop_resize).

    Returns (ys, xs, resize_factor, crop_xyxy); ys and xs are (i0, i1, c0, c1) arrays of
    out_size entries, ready for _resample (numpy) or fast.py's batched torch resample.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
        raise ValueError(f"box must be finite with positive size, got {tuple(box_xywh)}")
    sz = math.ceil(math.sqrt(w * h) * factor)
    if sz < 1:
        raise ValueError(f"crop of box {tuple(box_xywh)} x{factor} is smaller than 1 pixel")
    im_h, im_w = image_hw
    x1 = round(x + 0.5 * w - sz * 0.5)  # Python round: half to even, as released
    y1 = round(y + 0.5 * h - sz * 0.5)
    x2, y2 = x1 + sz, y1 + sz
    # Released padding: right/bottom pad is one larger than needed, so the last image
    # column/row inside the crop is replaced by zeros (reproduced on purpose).
    x1_pad, y1_pad = max(0, -x1), max(0, -y1)
    x2_pad, y2_pad = max(x2 - im_w + 1, 0), max(y2 - im_h + 1, 0)
    xs = _padded_taps(_linear_taps(sz, out_size, True), x1, x1_pad, x2_pad, sz, im_w)
    ys = _padded_taps(_linear_taps(sz, out_size, False), y1, y1_pad, y2_pad, sz, im_h)
    return ys, xs, out_size / sz, (x1, y1, x2, y2)


def box_in_crop(box_xywh, crop_center_xy, resize_factor: float, out_size: int) -> np.ndarray:
    """Map an image box into crop pixels with the released training transform
    (pytracking/STARK `transform_image_to_crop`): the crop centre (the unrounded centre of
    the box the crop was cut around) lands on (out_size - 1) / 2 and sizes scale by
    resize_factor. Returns (x, y, w, h) in crop pixels (divide by out_size to normalise).
    """
    box = np.asarray(box_xywh, np.float64)
    center = box[:2] + 0.5 * box[2:]
    center_out = (out_size - 1) / 2 + (center - np.asarray(crop_center_xy, np.float64)) * resize_factor
    wh_out = box[2:] * resize_factor
    return np.concatenate([center_out - 0.5 * wh_out, wh_out])


def normalize(crop: np.ndarray, brightness: float = 1.0) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): RGB/255 (times an optional brightness
    factor, clipped to [0, 1] as the released ToTensorAndJitter) then ImageNet mean/std."""
    # (H,W,3) -> (3,H,W); made contiguous while still uint8, so the float ops run on contiguous memory
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous().float()
    if brightness == 1.0:
        t = t.div_(255.0)
    else:
        t = t.mul_(brightness / 255.0).clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)  # (3,) -> (3,1,1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)  # (3,) -> (3,1,1)
    return t.sub_(mean).div_(std)


# ----------------------------------------------------------------------------- annotations


@dataclass
class Sequence:
    """One video (or one still-image object). gt has a row per frame, or only the first
    frame's (test splits, or a folder with just an init box)."""
    name: str
    frames: list
    gt: np.ndarray | None = None
    visible: np.ndarray | None = None


_SEP = re.compile(r"[,\s]+")


def _read_lines(path: Path) -> list:
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def read_boxes(path, results=False) -> np.ndarray:
    """A box file -> (N, 4) float64: one x,y,w,h per line, separated by commas, tabs or
    spaces; blank lines skipped. Ground truth (results=False) may hold NaN (an
    unannotated frame, UAV123) and must hold a box; a tracker's results file
    (results=True) may be empty but every box must be finite with w, h >= 0, as the
    toolkits require. Errors name path:line."""
    path = Path(path)
    rows = []
    for lineno, line in enumerate(_read_lines(path), 1):
        fields = [f for f in _SEP.split(line.strip()) if f]
        if not fields:
            continue
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: not numbers: {line!r}") from None
        if len(fields) != 4:
            raise ValueError(f"{path}:{lineno}: expected 4 values x,y,w,h, got {len(fields)}: {line!r}")
        if results and (not np.isfinite(rows[-1]).all() or min(rows[-1][2:]) < 0):
            raise ValueError(f"{path}:{lineno}: invalid box (NaN, infinite, or negative width/height): {line!r}")
    if not rows and not results:
        raise ValueError(f"{path}: no boxes")
    return np.asarray(rows, np.float64).reshape(-1, 4)  # (N, 4); an empty file's (0,) -> (0, 4)


def format_boxes(boxes) -> str:
    """(N, 4) boxes -> the text of a results file, as the toolkits read it."""
    return "".join("%.4f,%.4f,%.4f,%.4f\n" % tuple(b) for b in boxes)


def write_atomic(path, content) -> None:
    """Write `content` (str, bytes, or a function given the open binary file) to a
    temporary file, flushed to the disk, then renamed: a crash or a power cut leaves the
    old file or the whole new one, never part of one, and no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_flags(path, count: int) -> np.ndarray:
    """Parse a 0/1 (or small integer) label file: one value per line (GOT-10k) or all on
    one comma-separated line (LaSOT). Must hold exactly `count` values."""
    path = Path(path)
    values = []
    for lineno, line in enumerate(_read_lines(path), 1):
        for field in (f for f in _SEP.split(line.strip()) if f):
            try:
                values.append(int(float(field)))
            except ValueError:
                raise ValueError(f"{path}, line {lineno}: non-numeric label {field!r}") from None
    if len(values) != count:
        raise ValueError(f"{path}: {len(values)} labels but the ground truth has {count} boxes")
    return np.asarray(values, np.int64)


def _frame_key(path: Path):
    # Natural order: runs of digits compare as numbers, so 2.jpg comes before 10.jpg
    # (TrackingNet's 0.jpg ... 10.jpg) and frame_2.jpg before frame_10.jpg; zero-padded
    # names (GOT-10k, LaSOT) keep their order. re.split with a group alternates text and
    # digits, so every position compares str with str or int with int.
    parts = re.split(r"(\d+)", path.name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], path.name


def list_frames(folder) -> list:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"frame folder {folder} does not exist")
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=_frame_key)


def _box_ok(gt: np.ndarray) -> np.ndarray:
    return np.isfinite(gt).all(axis=1) & (gt[:, 2] > 0) & (gt[:, 3] > 0)


def _sequence(name, frames, gt, visible, gt_path) -> Sequence:
    if gt is not None and len(frames) < len(gt):
        raise ValueError(f"{gt_path}: {len(gt)} boxes but only {len(frames)} frames found "
                         f"in {Path(frames[0]).parent if frames else 'the sequence folder'}")
    if gt is not None:
        visible = _box_ok(gt) if visible is None else visible & _box_ok(gt)
    return Sequence(name, frames, gt, visible)


def read_folder(folder) -> list:
    """A folder of frames (or with an img/ subfolder) and an optional groundtruth.txt is
    one sequence; a folder of such folders gives one sequence per subfolder."""
    folder = Path(folder)
    frame_dir = folder / "img" if (folder / "img").is_dir() else folder
    frames = list_frames(frame_dir)
    gt_path = folder / "groundtruth.txt"
    if frames:
        gt = read_boxes(gt_path) if gt_path.is_file() else None
        if gt is not None and len(gt) not in (1, len(frames)):  # scoring would pair the wrong rows
            raise ValueError(f"{gt_path}: {len(gt)} boxes for {len(frames)} frames in {frame_dir} "
                             f"(expected one per frame, or only the first)")
        return [_sequence(folder.name, frames, gt, None, gt_path)]
    if gt_path.is_file():
        raise ValueError(f"{gt_path}: ground truth but no image frames ({', '.join(IMAGE_EXTS)}) in {frame_dir}")
    seqs = [s for d in sorted(folder.iterdir()) if d.is_dir() and _holds_frames(d) for s in read_folder(d)]
    if not seqs:
        raise ValueError(f"{folder}: no image frames ({', '.join(IMAGE_EXTS)}) found")
    _check_unique_names(seqs)
    return seqs


def _holds_frames(folder: Path) -> bool:
    """Whether a folder or one below it holds frames or a groundtruth.txt: read_folder
    skips the others (a results folder written under the root, for example)."""
    for _, _, files in os.walk(folder, followlinks=True):  # frames are often linked in (img -> ...)
        if any(f == "groundtruth.txt" or Path(f).suffix.lower() in IMAGE_EXTS for f in files):
            return True
    return False


def _check_unique_names(seqs) -> None:
    """Results files are named by sequence: two sequences of one name would share one."""
    seen = {}
    for seq in seqs:
        where = Path(seq.frames[0]).parent
        if seq.name in seen:
            raise ValueError(f"two sequences named {seq.name!r} ({seen[seq.name]} and {where}): "
                             f"their results would share one file; rename one folder")
        seen[seq.name] = where


def _names_from_list(list_path: Path) -> list:
    return [ln.strip() for ln in _read_lines(list_path) if ln.strip()]


def read_got10k(root, split: str, exclude=None) -> list:
    """GOT-10k: root/<split>/list.txt, each sequence folder with 00000001.jpg...,
    groundtruth.txt (first frame only in test), absence.label (1 = absent) and
    cover.label (0 = fully covered); visible = not absent and cover > 0 (pytracking).
    `exclude` is a file of sequence names to skip (the released VOT-overlap filter)."""
    base = Path(root) / split
    list_path = base / "list.txt"
    if list_path.is_file():
        names = _names_from_list(list_path)
    elif base.is_dir():
        names = sorted(d.name for d in base.iterdir() if (d / "groundtruth.txt").is_file())
    else:
        raise ValueError(f"GOT-10k split folder {base} does not exist")
    skip = set(_names_from_list(Path(exclude))) if exclude else set()
    seqs = []
    for name in names:
        if name in skip:
            continue
        d = base / name
        gt_path = d / "groundtruth.txt"
        if not gt_path.is_file():
            raise ValueError(f"{list_path}: sequence {name} has no {gt_path}")
        gt = read_boxes(gt_path)
        visible = np.ones(len(gt), bool)
        if (d / "absence.label").is_file():
            visible &= read_flags(d / "absence.label", len(gt)) == 0
        if (d / "cover.label").is_file():
            visible &= read_flags(d / "cover.label", len(gt)) > 0
        seqs.append(_sequence(name, list_frames(d), gt, visible, gt_path))
    return seqs


# The standard LaSOT test split (Fan et al., CVPR 2019): 4 videos for each of 70 classes.
_LASOT_TEST = (
    "airplane:1,9,13,15 basketball:1,6,7,11 bear:2,4,6,17 bicycle:2,7,9,18 bird:2,3,15,17 "
    "boat:3,4,12,17 book:3,10,11,19 bottle:1,12,14,18 bus:2,5,17,19 car:2,6,9,17 "
    "cat:1,3,18,20 cattle:2,7,12,13 spider:14,16,18,20 coin:3,6,7,18 crab:3,6,12,18 "
    "surfboard:12,4,5,8 cup:1,4,7,17 deer:4,8,10,14 dog:1,7,15,19 guitar:3,8,10,16 "
    "person:1,5,10,12 pig:2,10,13,18 rubicCube:1,6,14,19 swing:10,14,17,20 drone:13,15,2,7 "
    "pool:12,15,3,7 rabbit:10,13,17,19 racing:10,15,16,20 robot:1,19,5,8 sepia:13,16,6,8 "
    "sheep:3,5,7,9 skateboard:16,19,3,8 tank:14,16,6,9 tiger:12,18,4,6 train:1,11,20,7 "
    "truck:16,3,6,7 turtle:16,5,8,9 umbrella:17,19,2,9 yoyo:15,17,19,7 zebra:10,14,16,17 "
    "elephant:1,12,16,18 goldfish:3,7,8,10 hat:1,2,5,18 kite:4,6,10,15 motorcycle:1,3,9,18 "
    "mouse:1,8,9,17 flag:3,9,5,2 frog:3,4,20,9 gametarget:1,2,7,13 hand:2,3,9,16 "
    "helmet:5,11,19,13 licenseplate:6,12,13,15 electricfan:1,10,18,20 chameleon:3,6,11,20 "
    "crocodile:3,4,10,14 gecko:1,5,16,19 fox:2,3,5,20 giraffe:2,10,13,15 gorilla:4,6,9,13 "
    "hippo:1,7,9,20 horse:1,4,12,15 kangaroo:2,5,11,14 leopard:1,7,16,20 lion:1,5,12,20 "
    "lizard:1,3,6,13 microphone:2,6,14,16 monkey:3,4,9,17 shark:2,3,5,6 squirrel:8,11,13,19 "
    "volleyball:1,13,18,19")


def lasot_test_names() -> list:
    return [f"{cls}-{n}" for item in _LASOT_TEST.split()
            for cls, nums in [item.split(":")] for n in nums.split(",")]


def _read_lasot_sequence(d: Path) -> Sequence:
    gt_path = d / "groundtruth.txt"
    if not gt_path.is_file():
        raise ValueError(f"LaSOT sequence {d} has no groundtruth.txt")
    gt = read_boxes(gt_path)
    visible = np.ones(len(gt), bool)
    for flag_file in ("full_occlusion.txt", "out_of_view.txt"):
        if (d / flag_file).is_file():
            visible &= read_flags(d / flag_file, len(gt)) == 0
    return _sequence(d.name, list_frames(d / "img"), gt, visible, gt_path)


def read_lasot(root, split: str) -> list:
    """LaSOT: root/<class>/<class>-<n>/{img/, groundtruth.txt, full_occlusion.txt,
    out_of_view.txt} (a flat root/<class>-<n> layout, as in LaSOTTesting, works too).
    "test" = the standard 280-video list, "train" = every other video found."""
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"LaSOT split must be 'train' or 'test', got {split!r}")
    test = lasot_test_names()

    def locate(name):
        for d in (root / name.rsplit("-", 1)[0] / name, root / name):
            if (d / "img").is_dir():
                return d
        return None

    if split == "test":
        dirs = [locate(n) for n in test]
        missing = [n for n, d in zip(test, dirs) if d is None]
        if missing:
            raise ValueError(f"{root}: {len(missing)} LaSOT test videos missing, e.g. {missing[:3]}")
        return [_read_lasot_sequence(d) for d in dirs]
    skip = set(test)
    dirs = sorted({p.parent for p in root.glob("*/*/img")} | {p.parent for p in root.glob("*/img")})
    return [_read_lasot_sequence(d) for d in dirs if d.name not in skip]


def read_trackingnet(root, split: str) -> list:
    """TrackingNet: <chunk>/frames/<seq>/<i>.jpg (from 0) and <chunk>/anno/<seq>.txt.
    split "train" = the TRAIN_0..TRAIN_11 chunks present, "test" = TEST, or explicit
    chunk names separated by commas (e.g. "TRAIN_0,TRAIN_1")."""
    root = Path(root)
    if split == "train":
        chunks = [f"TRAIN_{i}" for i in range(12) if (root / f"TRAIN_{i}").is_dir()]
    elif split == "test":
        chunks = ["TEST"]
    else:
        chunks = [c.strip() for c in split.split(",") if c.strip()]
    if not chunks or not all((root / c / "anno").is_dir() for c in chunks):
        raise ValueError(f"{root}: no TrackingNet chunk with an anno/ folder for split {split!r}")
    seqs = []
    for chunk in chunks:
        for anno in sorted((root / chunk / "anno").glob("*.txt")):
            gt = read_boxes(anno)
            frames = list_frames(root / chunk / "frames" / anno.stem)
            seqs.append(_sequence(anno.stem, frames, gt, None, anno))
    return seqs


def read_otb(root) -> list:
    """OTB / UAV123 / NFS-like: one folder per sequence holding img/ (or the frames) and
    one ground-truth file: groundtruth_rect.txt, groundtruth.txt or <name>.txt."""
    root = Path(root)
    seqs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        frame_dir = d / "img" if (d / "img").is_dir() else d
        frames = list_frames(frame_dir)
        gt_path = next((d / n for n in ("groundtruth_rect.txt", "groundtruth.txt", f"{d.name}.txt")
                        if (d / n).is_file()), None)
        if not frames and gt_path is not None:  # a sequence whose frames are missing
            raise ValueError(f"{gt_path}: ground truth but no image frames in {frame_dir}")
        if not frames:
            continue
        if gt_path is None:
            raise ValueError(f"{d}: no groundtruth_rect.txt, groundtruth.txt or {d.name}.txt")
        gt = read_boxes(gt_path)
        if 1 < len(gt) < len(frames):  # OTB's David, Tiger1, ... are annotated from a later frame
            warnings.warn(f"{gt_path}: {len(gt)} boxes for {len(frames)} frames; frames 1-{len(gt)} get "
                          f"them, so a sequence annotated from a later frame is misaligned: keep only its "
                          f"annotated frames in {frame_dir}")
        seqs.append(_sequence(d.name, frames, gt, None, gt_path))
    if not seqs:
        raise ValueError(f"{root}: no sequence folders with frames")
    return seqs


def read_coco(root, split: str = "train2017") -> list:
    """COCO: annotations/instances_<split>.json, images in root/<split>/. Each non-crowd
    object with w, h > 0 becomes a 1-frame Sequence named "<image_id>_<ann_id>"."""
    root = Path(root)
    ann_path = root / "annotations" / f"instances_{split}.json"
    try:
        with open(ann_path) as fh:
            meta = json.load(fh)
    except OSError as err:
        raise ValueError(f"cannot read {ann_path}: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann_path}, line {err.lineno}: invalid JSON ({err.msg})") from err
    try:
        files = {im["id"]: root / split / im["file_name"] for im in meta["images"]}
        anns = meta["annotations"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{ann_path}: missing COCO field {err}") from err
    seqs = []
    for k, ann in enumerate(anns):
        try:
            box = np.asarray(ann["bbox"], np.float64).reshape(1, 4)  # [x,y,w,h] -> (1,4)
            frame = files[ann["image_id"]]
            crowd, ann_id = ann.get("iscrowd", 0), ann["id"]
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{ann_path}: annotation #{k} is malformed ({err!r})") from err
        if not crowd and box[0, 2] > 0 and box[0, 3] > 0:
            seqs.append(Sequence(f"{ann['image_id']}_{ann_id}", [frame], box, np.ones(1, bool)))
    return seqs


def read_dataset(name: str, root, split: str | None = None) -> list:
    """Dispatch: got10k, lasot, trackingnet, otb, folder, coco."""
    readers = {
        "got10k": lambda: read_got10k(root, split or "train"),
        "lasot": lambda: read_lasot(root, split or "train"),
        "trackingnet": lambda: read_trackingnet(root, split or "train"),
        "otb": lambda: read_otb(root),
        "folder": lambda: read_folder(root),
        "coco": lambda: read_coco(root, split or "train2017"),
    }
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(readers)}")
    return readers[name]()


# ----------------------------------------------------------------------------- training pairs


def jitter_box(box_xywh, rng: np.random.Generator, scale_jitter: float, center_jitter: float) -> np.ndarray:
    """Released search-box jitter (STARK `_get_jittered_box`): size * exp(N(0,1) * scale),
    centre moved by sqrt(jittered area) * center_jitter * U(-0.5, 0.5) per axis."""
    box = np.asarray(box_xywh, np.float64)
    size = box[2:] * np.exp(rng.standard_normal(2) * scale_jitter)
    max_offset = math.sqrt(float(np.prod(size))) * center_jitter
    center = box[:2] + 0.5 * box[2:] + max_offset * (rng.random(2) - 0.5)
    return np.concatenate([center - 0.5 * size, size])


def _ellipse_alpha(w: int, h: int, feather: float = 0.15) -> np.ndarray:
    """(h, w) float32 alpha: 1 inside an ellipse filling the box, ramping to 0 over its
    outer `feather` fraction, so a pasted patch has no rectangular edge to give it away."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    r = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)  # (h, w), 1 on the inscribed ellipse
    return np.clip((1.0 - r) / feather, 0.0, 1.0)


def paste_patch(image: np.ndarray, patch: np.ndarray, box_xywh) -> np.ndarray:
    """A copy of image (H, W, 3) uint8 with patch resized into box (x, y, w, h) through an
    elliptical soft mask; the parts of the box outside the image are dropped."""
    x, y, w, h = (int(round(float(v))) for v in box_xywh)
    w, h = max(w, 1), max(h, 1)
    resized = np.asarray(Image.fromarray(patch).resize((w, h), Image.BILINEAR), np.float32)
    alpha = _ellipse_alpha(w, h)[..., None]  # (h, w, 1)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, image.shape[1]), min(y + h, image.shape[0])
    out = image.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    src, a = resized[y0 - y:y1 - y, x0 - x:x1 - x], alpha[y0 - y:y1 - y, x0 - x:x1 - x]
    dst = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.round(a * src + (1.0 - a) * dst).astype(np.uint8)
    return out


def _usable_frames(seq: Sequence) -> np.ndarray:
    """Indices of the frames with a visible target and a valid box (the released sampler
    draws only these)."""
    n = min(len(seq.gt), len(seq.frames))
    visible = np.ones(n, bool) if seq.visible is None else seq.visible[:n]
    return np.flatnonzero(visible & _box_ok(seq.gt[:n]))


def _box_pixels(image: np.ndarray, box_xywh):
    """The pixels of image inside box (x, y, w, h), rounded and clipped to the image; None
    when fewer than 2 x 2 remain."""
    x, y, w, h = (int(round(float(v))) for v in box_xywh)
    patch = image[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)]
    return patch if patch.shape[0] >= 2 and patch.shape[1] >= 2 else None


def _to_gray(crop: np.ndarray) -> np.ndarray:
    # ITU-R BT.601 luma as cv2.cvtColor(RGB2GRAY), replicated to 3 channels.
    gray = np.rint(crop @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)  # (H,W) -> (H,W,3)


class PairDataset(torch.utils.data.Dataset):
    """Template/search training pairs as the released HiT/STARK sampler (paper Sec. 3.4
    and 4.1; the released configs mix LaSOT, GOT-10k, COCO and TrackingNet 1:1:1:1).

    sources: list of (name, list[Sequence]); weights: sampling weight per source (default
    equal). Sample i of epoch e depends only on (seed, e, i); call set_epoch(e) each epoch.
    Under DDP every rank builds it with the same seed and reads its own indices (train.py
    gives rank r of w the indices r, r + w, r + 2w, ...), so the ranks draw different
    pairs and an epoch holds the same pairs however many processes draw it.
    Returns {"template": (3, T, T), "search": (3, S, S)} ImageNet-normalised float32 and
    "search_box" (4,) float32 (cx, cy, w, h) normalised to the search crop, its xyxy
    clipped to [0, 1].

    Released behaviour kept: causal frame order (template frame before the search frame,
    at most max_gap apart, the gap widened by 5 until a visible frame exists), only frames
    with visible targets, still images give both crops, template without jitter, search
    jitter centre 3.5 / scale 0.5, joint grayscale p 0.05, joint horizontal flip p 0.5
    (applied to the crops; the box centre becomes 1 - cx), brightness factor
    U(0.8, 1.2) drawn per crop as ToTensorAndJitter. Simplification: the released
    sampler also skips videos with fewer than 20 frames; here 2 usable frames suffice.

    Not released: distractor_prob > 0 makes that fraction of pairs *distractor pairs*
    (see _distract): the target and a look-alike, both pasted, on opposite sides of the
    search crop's centre, so only the template tells which one to box. At 0 (the
    default) no extra random number is drawn and every pair is the released sampler's.
    """

    def __init__(self, sources, weights=None, samples_per_epoch=60000, seed=0, max_gap=200,
                 template_size=128, search_size=256, template_factor=2.0, search_factor=4.0,
                 center_jitter=3.5, scale_jitter=0.5, gray_prob=0.05, flip_prob=0.5,
                 brightness=0.2, distractor_prob=0.0):
        self.sources = [(name, [s for s in seqs if s.gt is not None and len(s.gt)]) for name, seqs in sources]
        empty = [name for name, seqs in self.sources if not seqs]
        if not self.sources or empty:
            raise ValueError(f"every source needs annotated sequences; empty: {empty or 'no sources'}")
        w = np.ones(len(self.sources)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(self.sources),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights {weights} do not match {len(self.sources)} sources")
        self.probs = w / w.sum()
        self.samples_per_epoch, self.seed, self.max_gap = int(samples_per_epoch), int(seed), int(max_gap)
        self.sizes = (int(template_size), int(search_size))
        self.factors = (float(template_factor), float(search_factor))
        if center_jitter < 0 or scale_jitter < 0:
            raise ValueError(f"jitter must be >= 0, got center {center_jitter}, scale {scale_jitter}")
        self.jitter = (float(center_jitter), float(scale_jitter))
        self.probs_aug = (float(gray_prob), float(flip_prob), float(brightness))
        if not 0.0 <= distractor_prob <= 1.0:
            raise ValueError(f"distractor_prob must be in [0, 1], got {distractor_prob}")
        self.distractor_prob = float(distractor_prob)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _frames(self, seq: Sequence, rng):
        """(template, search) frame indices, released causal order, or None to redraw."""
        n = min(len(seq.gt), len(seq.frames))
        usable = _usable_frames(seq)
        if n == 1:
            return (0, 0) if len(usable) else None
        if len(usable) < 2:
            return None
        t = int(rng.choice(usable[:-1]))
        later = usable[usable > t]
        # Released: widen the window by 5 frames until it holds a visible search frame.
        gap = self.max_gap + 5 * max(0, math.ceil((later[0] - t - self.max_gap) / 5))
        return t, int(rng.choice(later[later <= t + gap]))

    def _try(self, rng):
        """One draw of the released sampler; None when it must be redrawn."""
        source = self.sources[rng.choice(len(self.sources), p=self.probs)][1]
        seq = source[rng.integers(len(source))]
        ids = self._frames(seq, rng)
        if ids is None:
            return None
        center_jitter, scale_jitter = self.jitter
        search_box = jitter_box(seq.gt[ids[1]], rng, scale_jitter, center_jitter)
        draws = rng.random(4)  # grayscale, flip, brightness of template, of search
        template_img = read_image(seq.frames[ids[0]])
        search_img = template_img if ids[1] == ids[0] else read_image(seq.frames[ids[1]])
        search_gt = seq.gt[ids[1]]
        if self.distractor_prob > 0 and rng.random() < self.distractor_prob:
            pasted = self._distract(search_img, search_gt, search_box[2:], source, rng)
            if pasted is None:
                return None
            search_img, search_gt, search_box = pasted
        (t_size, s_size), (t_factor, s_factor) = self.sizes, self.factors
        try:
            template, _, _ = crop_resize(template_img, seq.gt[ids[0]], t_factor, t_size)
            search, factor, _ = crop_resize(search_img, search_box, s_factor, s_size)
        except ValueError:
            return None  # degenerate jittered box: the released sampler also redraws
        box = box_in_crop(search_gt, search_box[:2] + 0.5 * search_box[2:], factor, s_size) / s_size
        xyxy = np.clip(np.concatenate([box[:2], box[:2] + box[2:]]), 0.0, 1.0)
        if (xyxy[2:] - xyxy[:2] <= 0).any():
            return None  # target entirely outside the search crop
        return self._finish(template, search, xyxy, draws)

    def _distract(self, image, target_xywh, search_size_wh, source, rng):
        """(image, target box, search box) of a distractor pair, or None to redraw.

        The target and a look-alike are both pasted, through the same soft elliptical mask,
        on opposite sides of the search crop's centre, 1.15-1.6 box sizes apart (max-norm,
        so they never overlap); the crop moves by at most 0.1 box size. Where the target
        was, a blur of its surroundings covers it. The look-alike is another sequence's
        target (its box in a random frame) at the target's size x U(0.8, 1.25). Both
        candidates look pasted and sit as far from the crop centre, so neither the centre
        prior nor the paste's edge tells them apart: only the template does."""
        other = source[rng.integers(len(source))]
        usable = _usable_frames(other)
        if not len(usable):
            return None
        k = int(rng.choice(usable))
        look_alike = _box_pixels(read_image(other.frames[k]), other.gt[k])
        target_patch = _box_pixels(image, target_xywh)
        if look_alike is None or target_patch is None:
            return None
        target = np.asarray(target_xywh, np.float64)
        centre, size = target[:2] + 0.5 * target[2:], target[2:]
        # The offset between the two, on the square's boundary in box sizes (max-norm `reach`):
        # boxes up to 1.25x the target's never overlap it (0.5 + 0.625 < 1.15).
        reach = rng.uniform(1.15, 1.6)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        offset = reach * direction / np.abs(direction).max() * size
        crop_centre = centre + size * rng.uniform(-0.1, 0.1, 2)
        cover = 1.8 * size  # an ellipse this big holds the whole box at full opacity
        cover_box = np.concatenate([centre - 0.5 * cover, cover])
        blur = _box_pixels(image, cover_box)
        if blur is None:
            return None
        blur = np.asarray(Image.fromarray(blur).resize((3, 3), Image.BOX), np.float64)  # (3, 3, 3)
        blur[1, 1] = (blur.sum((0, 1)) - blur[1, 1]) / 8  # the ring's colours, not the target's
        blur = np.round(blur).astype(np.uint8)
        out = paste_patch(image, blur, cover_box)
        d_size = size * rng.uniform(0.8, 1.25)
        out = paste_patch(out, look_alike, np.concatenate([centre - 0.5 * offset - 0.5 * d_size, d_size]))
        moved = np.concatenate([centre + 0.5 * offset - 0.5 * size, size])
        if (moved[:2] < 0).any() or (moved[:2] + moved[2:] > [image.shape[1], image.shape[0]]).any():
            return None  # the moved target would leave the frame (after d_size's draw: the measured pairs)
        out = paste_patch(out, target_patch, moved)
        search_wh = np.asarray(search_size_wh, np.float64)
        return out, moved, np.concatenate([crop_centre - 0.5 * search_wh, search_wh])

    def _finish(self, template, search, xyxy, draws):
        gray_prob, flip_prob, brightness = self.probs_aug
        if draws[0] < gray_prob:
            template, search = _to_gray(template), _to_gray(search)
        if draws[1] < flip_prob:
            template, search = template[:, ::-1], search[:, ::-1]
            xyxy = np.array([1.0 - xyxy[2], xyxy[1], 1.0 - xyxy[0], xyxy[3]])
        factors = 1.0 - brightness + 2.0 * brightness * draws[2:]  # U(1 - b, 1 + b) per crop
        cxcywh = np.concatenate([(xyxy[:2] + xyxy[2:]) / 2, xyxy[2:] - xyxy[:2]])
        return {"template": normalize(template, float(factors[0])),
                "search": normalize(search, float(factors[1])),
                "search_box": torch.from_numpy(cxcywh.astype(np.float32))}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        for _ in range(100):
            sample = self._try(rng)
            if sample is not None:
                return sample
        raise RuntimeError(f"no valid training pair after 100 draws "
                           f"(seed {self.seed}, epoch {self.epoch}, index {index})")


def crop_to_crop(inner_xyxy, inner_size: int, outer_xyxy, outer_size: int) -> np.ndarray:
    """(a, bx, by): pixel (u, v) of one crop is pixel (a u + bx, a v + by) of another crop
    of the same image. Both from crop_resize, whose resize maps crop pixel u to image
    x = x1 + (u + 0.5) * sz / out - 0.5 (OpenCV's pixel-centre rule)."""
    s_in = (inner_xyxy[2] - inner_xyxy[0]) / inner_size  # image pixels per crop pixel
    s_out = (outer_xyxy[2] - outer_xyxy[0]) / outer_size
    shift = np.asarray(inner_xyxy[:2], np.float64) - np.asarray(outer_xyxy[:2], np.float64)
    b = (shift + 0.5 * s_in) / s_out - 0.5
    return np.array([s_in / s_out, b[0], b[1]])


class ViewPairDataset(torch.utils.data.Dataset):
    """Two crops of one frame for train.py's backbone pre-training (--pretrain-minutes; not
    in the paper, which starts from ImageNet LeViT): a template crop (factor 2, 128) and a
    search crop (factor 4, 256) around a jittered box, as PairDataset cuts them, and the
    map between their pixels (crop_to_crop), so that every template token has a known
    search token showing the same content.

    The box is the annotated target with probability 1 - random_box_prob, else a box of
    about the target's size anywhere in the frame, so that matching is learned on
    backgrounds and textures too. Per crop brightness U(0.8, 1.2), joint grayscale p 0.05;
    no flip. Sample i depends only on (seed, i). Returns {"template", "search"} normalised
    float32 and "view_map" (3,) float32 (a, bx, by): template pixel (u, v) is search pixel
    (a u + bx, a v + by).
    """

    def __init__(self, sources, samples=10**9, seed=0, template_size=128, search_size=256,
                 template_factor=2.0, search_factor=4.0, center_jitter=1.0, scale_jitter=0.25,
                 random_box_prob=0.5, gray_prob=0.05, brightness=0.2):
        annotated = [s for _, seqs in sources for s in seqs if s.gt is not None]
        # (sequence, its usable frame indices), worked out once rather than per sample
        self.sequences = [(s, u) for s, u in ((s, _usable_frames(s)) for s in annotated) if len(u)]
        if not self.sequences:
            raise ValueError("view pairs need at least one sequence with a visible, valid box")
        self.samples, self.seed = int(samples), int(seed)
        self.sizes = (int(template_size), int(search_size))
        self.factors = (float(template_factor), float(search_factor))
        self.jitter = (float(center_jitter), float(scale_jitter))
        self.random_box_prob, self.gray_prob, self.brightness = float(random_box_prob), float(gray_prob), float(brightness)

    def __len__(self) -> int:
        return self.samples

    @staticmethod
    def _random_box(image_hw, size_wh, rng) -> np.ndarray:
        """A box of size_wh x exp(N(0, 0.5)) (at most half the frame), uniformly inside the frame."""
        frame = np.array(image_hw[::-1], np.float64)  # (W, H)
        size = np.minimum(np.asarray(size_wh, np.float64) * np.exp(0.5 * rng.standard_normal(2)), frame / 2)
        size = np.maximum(size, 4.0)
        return np.concatenate([rng.random(2) * (frame - size), size])

    def _try(self, rng):
        seq, usable = self.sequences[rng.integers(len(self.sequences))]
        k = int(rng.choice(usable))
        image = read_image(seq.frames[k])
        box = np.asarray(seq.gt[k], np.float64)
        if rng.random() < self.random_box_prob:
            box = self._random_box(image.shape[:2], box[2:], rng)
        search_box = jitter_box(box, rng, self.jitter[1], self.jitter[0])
        (t_size, s_size), (t_factor, s_factor) = self.sizes, self.factors
        draws = rng.random(3)  # grayscale, brightness of template, of search
        try:
            template, _, t_xyxy = crop_resize(image, box, t_factor, t_size)
            search, _, s_xyxy = crop_resize(image, search_box, s_factor, s_size)
        except ValueError:
            return None  # a degenerate jittered box: redraw
        if draws[0] < self.gray_prob:
            template, search = _to_gray(template), _to_gray(search)
        factors = 1.0 - self.brightness + 2.0 * self.brightness * draws[1:]
        view_map = crop_to_crop(t_xyxy, t_size, s_xyxy, s_size)
        return {"template": normalize(template, float(factors[0])), "search": normalize(search, float(factors[1])),
                "view_map": torch.from_numpy(view_map.astype(np.float32))}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, int(index)])
        for _ in range(100):
            sample = self._try(rng)
            if sample is not None:
                return sample
        raise RuntimeError(f"no valid view pair after 100 draws (seed {self.seed}, index {index})")


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="HiT data tools: dataset smoke check "
                                     "(the procedural data set: python synth.py --help).")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("show", help="read a dataset and print sequence/frame counts")
    s.add_argument("dataset", choices=["got10k", "lasot", "trackingnet", "otb", "folder", "coco"])
    s.add_argument("root", help="dataset root folder")
    s.add_argument("split", nargs="?", default=None, help="split (train/val/test, COCO: train2017)")
    args = parser.parse_args(argv)
    try:
        seqs = read_dataset(args.dataset, args.root, args.split)
    except ValueError as err:  # bad input: one line naming the file, not a traceback
        raise SystemExit(f"error: {err}") from None
    n_frames = sum(len(q.frames) for q in seqs)
    n_visible = sum(int(q.visible.sum()) for q in seqs if q.visible is not None)
    print(f"{args.dataset} {args.split or ''}: {len(seqs)} sequences, {n_frames} frames, {n_visible} visible boxes")
    if seqs:
        q = seqs[0]
        print(f"first: {q.name} ({len(q.frames)} frames, first box {None if q.gt is None else q.gt[0].tolist()})")


if __name__ == "__main__":
    main(sys.argv[1:])
