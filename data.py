"""Data for HiT: image I/O, the released crop/resize, dataset readers and training pairs.

Paper: "Exploring Lightweight Hierarchical Vision Transformers for Efficient Visual
Tracking" (ICCV 2023), Sec. 3.4 (template/search crops) and Sec. 4.1 (training data:
LaSOT, GOT-10k, COCO, TrackingNet). What the paper leaves out (a crop's corner and zero
padding, OpenCV's INTER_LINEAR resize, how pairs are sampled and augmented) follows the
released implementation, as each function says. The procedural stand-in set: synth.py.
Boxes are (x, y, w, h) in pixels unless a name says otherwise.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
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
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        gray = np.clip(arr, 0, 255) if img.mode == "F" else np.clip(arr.astype(np.int64), 0, 65535) >> 8
        return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)  # (H,W) -> (H,W,3)
    if img.mode != "RGB":
        img = img.convert("RGBA" if "transparency" in img.info else img.mode).convert("RGB")
    return np.array(img)


def read_image(path, raw: bytes | None = None) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB (see pil_to_rgb); `raw`: its bytes, if
    already read. EXIF orientation is not applied (annotations refer to the stored grid)."""
    try:
        with Image.open(io.BytesIO(raw) if raw is not None else path) as img:
            img.load()
            return pil_to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


# ----------------------------------------------------------------------------- resize


def _linear_taps(src_len: int, dst_len: int, clamp: bool):
    """Source indices and 11-bit fixed-point weights of OpenCV's INTER_LINEAR (cv::resize):
    scale = 1 / (dst/src) in double; f = float((d + 0.5) * scale - 0.5); s = floor(f);
    f -= s. Horizontally (clamp=True) taps before the first / at or after the last pixel
    use (0, f=0) / (src-1, f=0); vertically only the row indices are clamped. Each weight
    is rounded on its own (half to even), so the two need not sum to 2048."""
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
    return np.clip(s, 0, src_len - 1), np.clip(s + 1, 0, src_len - 1), c0, c1


def _vertical_pass(h0: np.ndarray, h1: np.ndarray, cy0: np.ndarray, cy1: np.ndarray) -> np.ndarray:
    """Combine two int32 row-pass buffers exactly as OpenCV's uint8 vertical pass does.

    OpenCV's VResizeLinearVec_32s8u computes t = mulhi16(H0 >> 4, b0) + mulhi16(H1 >> 4, b1);
    out = sat_u8((t + 2) >> 2) on the first floor(n / 8) * 8 elements of a row (8 int16
    lanes, the SSE baseline of opencv-python wheels), the scalar (H0*b0 + H1*b1 + 2^21) >> 22
    on the rest: they differ by up to 1 grey level. Crops of 128 and 256 pixels take the
    vector path alone, exact in int32 (|H >> 4| < 2^15, |b| <= 2^11); the scalar needs int64.
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
    """Two-pass fixed-point bilinear resampling of a uint8 (H, W, C) array, bit-exact with
    cv2.resize(INTER_LINEAR) on x86. ys/xs are (i0, i1, c0, c1) tap tables (_linear_taps);
    a zero weight stands for a zero (padding) pixel."""
    y0, y1, cy0, cy1 = ys
    x0, x1, cx0, cx1 = xs
    _, width, ch = src.shape
    lo, hi = min(y0.min(), y1.min()), max(y0.max(), y1.max()) + 1  # the rows the taps read
    # (rows, W, C) -> (rows, W*C): a view, or for a flipped frame a copy of those rows only
    plane = src[lo:hi].reshape(hi - lo, width * ch)
    lanes = np.arange(ch)
    col0 = (x0[:, None] * ch + lanes).ravel()  # (out_w, C) -> (out_w*C,)
    col1 = (x1[:, None] * ch + lanes).ravel()
    w0 = np.repeat(cx0.astype(np.int32), ch)  # (out_w,) -> (out_w*C,)
    w1 = np.repeat(cx1.astype(np.int32), ch)
    # Row pass (HResizeLinear): exact integer sums, (out_h, out_w*C) int32 per row tap.
    h0, h1 = (rows[:, col0] * w0 + rows[:, col1] * w1 for rows in (plane[y0 - lo], plane[y1 - lo]))
    out = _vertical_pass(h0, h1, cy0.astype(np.int32), cy1.astype(np.int32))
    return out.reshape(len(y0), len(x0), ch)  # (out_h, out_w*C) -> (out_h, out_w, C)


def _axis_taps(start: int, sz: int, img_len: int, out_size: int, clamp: bool):
    """Taps of one axis of the crop [start, start + sz) of an image axis of img_len pixels,
    at image indices; taps in the zero padding get weight 0. The released padding past the
    end is one pixel too large, so the last image pixel inside a crop is zeroed (on purpose)."""
    i0, i1, c0, c1 = _linear_taps(sz, out_size, clamp)
    lo, hi = max(0, -start), sz - max(start + sz - img_len + 1, 0)  # the crop pixels that show the image
    valid0, valid1 = (i0 >= lo) & (i0 < hi), (i1 >= lo) & (i1 < hi)
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
    crop_xyxy = (x1, y1, x2, y2) in image pixels, x2 - x1 = sz). The padded crop is never
    materialised: padding taps get a zero weight (the same arithmetic), so huge crops stay cheap.
    """
    check_image(image)
    ys, xs, resize_factor, crop_xyxy = crop_taps(image.shape[:2], box_xywh, factor, out_size)
    return _resample(image, ys, xs), resize_factor, crop_xyxy


def crop_taps(image_hw, box_xywh, factor: float, out_size: int):
    """The released crop geometry as image-space tap tables (see crop_resize): (ys, xs,
    resize_factor, crop_xyxy), ys and xs ready for _resample or fast.py's torch resample."""
    x, y, w, h = map(float, check_box(box_xywh))
    sz = math.ceil(math.sqrt(w * h) * factor)
    if sz < 1:
        raise ValueError(f"crop of box {tuple(box_xywh)} x{factor} is smaller than 1 pixel")
    im_h, im_w = image_hw
    x1 = round(x + 0.5 * w - sz * 0.5)  # Python round: half to even, as released
    y1 = round(y + 0.5 * h - sz * 0.5)
    xs, ys = _axis_taps(x1, sz, im_w, out_size, True), _axis_taps(y1, sz, im_h, out_size, False)
    return ys, xs, out_size / sz, (x1, y1, x1 + sz, y1 + sz)


def box_in_crop(box_xywh, crop_center_xy, resize_factor: float, out_size: int) -> np.ndarray:
    """An image box in crop pixels (x, y, w, h), as the released `transform_image_to_crop`:
    the crop centre (the unrounded centre of the box the crop was cut around) lands on
    (out_size - 1) / 2 and sizes scale by resize_factor."""
    box = np.asarray(box_xywh, np.float64)
    center_out = (out_size - 1) / 2 + (box[:2] + 0.5 * box[2:] - np.asarray(crop_center_xy)) * resize_factor
    wh_out = box[2:] * resize_factor
    return np.concatenate([center_out - 0.5 * wh_out, wh_out])


def normalize(crop: np.ndarray, brightness: float = 1.0) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): RGB/255 (times an optional brightness
    factor, clipped to [0, 1] as the released ToTensorAndJitter) then ImageNet mean/std."""
    # (H,W,3) -> (3,H,W); made contiguous while still uint8, so the float ops run on contiguous memory
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous().float()
    t = t.div_(255.0) if brightness == 1.0 else t.mul_(brightness / 255.0).clamp_(0.0, 1.0)
    # (3,) -> (3,1,1) each
    return t.sub_(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).div_(torch.tensor(IMAGENET_STD).view(3, 1, 1))


# ----------------------------------------------------------------------------- annotations


@dataclass
class Sequence:
    """One video or still image; gt: a row per frame, or only the first frame's (test splits)."""
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
    spaces; blank lines skipped. Ground truth (results=False) may hold NaN (an unannotated
    frame, UAV123) and must hold a box; a results file (results=True) may be empty but every
    box must be finite with w, h >= 0, as the toolkits require. Errors name path:line."""
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
    """A 0/1 (or small integer) label file, one value a line (GOT-10k) or all on one line
    (LaSOT), of exactly `count` values."""
    path = Path(path)
    values = []
    for lineno, line in enumerate(_read_lines(path), 1):
        for field in (f for f in _SEP.split(line.strip()) if f):
            try:
                values.append(int(float(field)))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: not a number: {field!r}") from None
    if len(values) != count:
        raise ValueError(f"{path}: {len(values)} labels but the ground truth has {count} boxes")
    return np.asarray(values, np.int64)


def _frame_key(path: Path):
    # Natural order: runs of digits compare as numbers (TrackingNet's 2.jpg before 10.jpg);
    # re.split with a group alternates text and digits, so str meets str and int meets int.
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
    for name in (n for n in names if n not in skip):
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
    "airplane:1,9,13,15 basketball:1,6,7,11 bear:2,4,6,17 bicycle:2,7,9,18 bird:2,3,15,17 boat:3,4,12,17 "
    "book:3,10,11,19 bottle:1,12,14,18 bus:2,5,17,19 car:2,6,9,17 cat:1,3,18,20 cattle:2,7,12,13 "
    "spider:14,16,18,20 coin:3,6,7,18 crab:3,6,12,18 surfboard:12,4,5,8 cup:1,4,7,17 deer:4,8,10,14 "
    "dog:1,7,15,19 guitar:3,8,10,16 person:1,5,10,12 pig:2,10,13,18 rubicCube:1,6,14,19 swing:10,14,17,20 "
    "drone:13,15,2,7 pool:12,15,3,7 rabbit:10,13,17,19 racing:10,15,16,20 robot:1,19,5,8 sepia:13,16,6,8 "
    "sheep:3,5,7,9 skateboard:16,19,3,8 tank:14,16,6,9 tiger:12,18,4,6 train:1,11,20,7 truck:16,3,6,7 "
    "turtle:16,5,8,9 umbrella:17,19,2,9 yoyo:15,17,19,7 zebra:10,14,16,17 elephant:1,12,16,18 "
    "goldfish:3,7,8,10 hat:1,2,5,18 kite:4,6,10,15 motorcycle:1,3,9,18 mouse:1,8,9,17 flag:3,9,5,2 "
    "frog:3,4,20,9 gametarget:1,2,7,13 hand:2,3,9,16 helmet:5,11,19,13 licenseplate:6,12,13,15 "
    "electricfan:1,10,18,20 chameleon:3,6,11,20 crocodile:3,4,10,14 gecko:1,5,16,19 fox:2,3,5,20 "
    "giraffe:2,10,13,15 gorilla:4,6,9,13 hippo:1,7,9,20 horse:1,4,12,15 kangaroo:2,5,11,14 leopard:1,7,16,20 "
    "lion:1,5,12,20 lizard:1,3,6,13 microphone:2,6,14,16 monkey:3,4,9,17 shark:2,3,5,6 squirrel:8,11,13,19 "
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
        return next((d for d in (root / name.rsplit("-", 1)[0] / name, root / name) if (d / "img").is_dir()), None)

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
    chunks = {"train": [f"TRAIN_{i}" for i in range(12) if (root / f"TRAIN_{i}").is_dir()], "test": ["TEST"]}.get(
        split, [c.strip() for c in split.split(",") if c.strip()])
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
        files = {im["id"]: root / split / im["file_name"] for im in meta["images"]}
        anns = meta["annotations"]
    except OSError as err:
        raise ValueError(f"cannot read {ann_path}: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann_path}:{err.lineno}: invalid JSON ({err.msg})") from err
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
    readers = {"got10k": lambda: read_got10k(root, split or "train"), "lasot": lambda: read_lasot(root, split or "train"),
               "trackingnet": lambda: read_trackingnet(root, split or "train"), "otb": lambda: read_otb(root),
               "folder": lambda: read_folder(root), "coco": lambda: read_coco(root, split or "train2017")}
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(readers)}")
    return readers[name]()


# ----------------------------------------------------------------------------- training pairs


def jitter_box(box_xywh, rng: np.random.Generator, scale_jitter: float, center_jitter: float) -> np.ndarray:
    """Released search-box jitter (STARK `_get_jittered_box`): size * exp(N(0,1) * scale),
    centre moved by sqrt(jittered area) * center_jitter * U(-0.5, 0.5) per axis."""
    box = np.asarray(box_xywh, np.float64)
    size = box[2:] * np.exp(rng.standard_normal(2) * scale_jitter)
    center = box[:2] + 0.5 * box[2:] + math.sqrt(float(np.prod(size))) * center_jitter * (rng.random(2) - 0.5)
    return np.concatenate([center - 0.5 * size, size])


def _usable_frames(seq: Sequence):
    """Indices of the frames the released sampler draws (a visible target, a valid box), or
    None for a sequence it skips (`sample_seq_from_dataset`): a video under 20 frames or with
    at most 4 such frames; a still image (one frame, as COCO's) needs only its box."""
    n = min(len(seq.gt), len(seq.frames))
    visible = np.ones(n, bool) if seq.visible is None else seq.visible[:n]
    usable = np.flatnonzero(visible & _box_ok(seq.gt[:n]))
    return usable if (len(usable) == 1 if n == 1 else n >= 20 and len(usable) > 4) else None


def _to_gray(image: np.ndarray) -> np.ndarray:
    # cv2.cvtColor(RGB2GRAY) on uint8: BT.601 luma in 14-bit fixed point, replicated to 3 channels.
    gray = ((image.astype(np.int32) @ np.array([4899, 9617, 1868], np.int32) + (1 << 13)) >> 14).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)  # (H,W) -> (H,W,3)


def _flip_frame(image: np.ndarray, box_xywh) -> tuple:
    """pytracking's RandomHorizontalFlip of a frame and its box: column i goes to W - 1 - i
    and the box's x to W - 1 - x - w (one pixel left of the exact mirror, as released)."""
    x, y, w, h = box_xywh
    return image[:, ::-1], np.array([image.shape[1] - 1 - x - w, y, w, h])


def _padding_only(image_hw, crop_xyxy, out_size: int, stride: int = 16) -> bool:
    """Whether the released processing rejects a crop: its padding mask (any non-zero
    weight on padding, after the bilinear resize) read by nearest-neighbour downsampling to
    the backbone's grid (out_size // stride cells) is padding in every cell."""
    n = max(1, out_size // stride)
    cells = (np.arange(n) * (out_size / n)).astype(np.int64)  # F.interpolate(nearest)'s source pixels
    sz, inside = crop_xyxy[2] - crop_xyxy[0], []
    for start, length, clamp in ((crop_xyxy[1], image_hw[0], False), (crop_xyxy[0], image_hw[1], True)):
        c0, c1 = _linear_taps(sz, out_size, clamp)[2:]
        p0, p1 = _axis_taps(start, sz, length, out_size, clamp)[2:]
        inside.append(((p0 == c0) & (p1 == c1))[cells].any())  # the padding took none of its weight
    return not all(inside)


@dataclass(frozen=True)
class Processing:
    """The released processing settings (paper Sec. 4.1, the released configs); train.py
    sets the jitter from --center-jitter / --scale-jitter."""
    max_gap: int = 200  # frames between template and search
    template_size: int = 128
    search_size: int = 256
    template_factor: float = 2.0  # crop side / sqrt(w h) of the box
    search_factor: float = 4.0
    center_jitter: float = 3.5  # search crop only
    scale_jitter: float = 0.5
    gray_prob: float = 0.05
    flip_prob: float = 0.5  # the joint flip and each crop's own
    brightness: float = 0.2

    def __post_init__(self):
        if self.center_jitter < 0 or self.scale_jitter < 0:
            raise ValueError(f"jitter must be >= 0, got center {self.center_jitter}, scale {self.scale_jitter}")


class PairDataset(torch.utils.data.Dataset):
    """Template/search training pairs as the released HiT/STARK sampler and processing
    (paper Sec. 3.4, 4.1). sources: list of (name, list[Sequence]), drawn by `weights`
    (default equal, the released 1:1:1:1). Sample i of epoch e depends only on (seed, e, i)
    (call set_epoch(e)), so DDP ranks reading their own indices draw different pairs.
    Returns {"template": (3, T, T), "search": (3, S, S)} ImageNet-normalised float32 and
    "search_box" (4,) float32 (cx, cy, w, h) in the search crop, its xyxy clipped to [0, 1]
    (zero-area when the target lies outside the crop, as released).

    As released: videos under 20 frames or with at most 4 visible targets are skipped
    (a still image gives both crops); the template frame t is a visible frame before the
    last, the search frame a visible one in [t + 1, t + max_gap); while there is none the
    window widens by 5 and t is redrawn. Settings: `processing` (Processing). On the frames,
    jointly: grayscale (gray_prob), horizontal flip (flip_prob). The template crop around its box, the search crop around
    the jittered box; a crop of padding only is redrawn. On each crop on its own: brightness
    U(1 - b, 1 + b) and a flip (flip_prob; the box follows the search crop's), so in about
    half of the pairs the template is the mirror image of the search crop's target.
    """

    def __init__(self, sources, weights=None, samples_per_epoch=60000, seed=0, processing=Processing()):
        self.sources = [(name, [(s, u) for s in seqs if s.gt is not None and len(s.gt)
                                for u in [_usable_frames(s)] if u is not None]) for name, seqs in sources]
        empty = [name for name, seqs in self.sources if not seqs]
        if not self.sources or empty:
            raise ValueError(f"every source needs annotated sequences the sampler can draw (videos of 20 or "
                             f"more frames with 5 or more visible targets, or still images); "
                             f"none in: {empty or 'no sources'}")
        w = np.ones(len(self.sources)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(self.sources),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights {weights} do not match {len(self.sources)} sources")
        self.probs = w / w.sum()
        self.samples_per_epoch, self.seed, self.processing = int(samples_per_epoch), int(seed), processing
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _frames(self, n: int, usable: np.ndarray, rng):
        """(template, search) frame indices of a sequence of n frames, released causal order."""
        if n == 1:
            return 0, 0
        gap = self.processing.max_gap
        while True:  # ends: a drawable video has 4 or more visible frames before the last
            t = int(rng.choice(usable[usable < n - 1]))
            later = usable[(usable > t) & (usable < t + gap)]
            if len(later):
                return t, int(rng.choice(later))
            gap += 5

    def _try(self, rng):
        """One draw of the released sampler and processing; None when it must be redrawn."""
        seqs = self.sources[rng.choice(len(self.sources), p=self.probs)][1]
        seq, usable = seqs[rng.integers(len(seqs))]
        ids = self._frames(min(len(seq.gt), len(seq.frames)), usable, rng)
        p = self.processing
        sizes, factors = (p.template_size, p.search_size), (p.template_factor, p.search_factor)
        draws = rng.random(6)  # joint: grayscale, flip; per crop: flip, brightness (template, search)
        images = {i: read_image(seq.frames[i]) for i in set(ids)}
        crops = []
        for k, i in enumerate(ids):
            image, box = images[i], np.asarray(seq.gt[i], np.float64)
            image = _to_gray(image) if draws[0] < p.gray_prob else image
            image, box = _flip_frame(image, box) if draws[1] < p.flip_prob else (image, box)
            crop_box = jitter_box(box, rng, p.scale_jitter, p.center_jitter) if k else box
            try:
                crop, factor, xyxy = crop_resize(image, crop_box, factors[k], sizes[k])
            except ValueError:
                return None  # degenerate jittered box: the released processing also redraws
            if _padding_only(image.shape[:2], xyxy, sizes[k]):
                return None
            crops.append(crop)
        # box, crop_box and factor are the search frame's (the loop's last)
        box = box_in_crop(box, crop_box[:2] + 0.5 * crop_box[2:], factor, sizes[1]) / sizes[1]
        xyxy = np.clip(np.concatenate([box[:2], box[:2] + box[2:]]), 0.0, 1.0)
        # Per crop, as released (joint=False): brightness U(1 - b, 1 + b), a flip the box follows.
        template, search = (c[:, ::-1] if d < p.flip_prob else c for c, d in zip(crops, draws[2:4]))
        if draws[3] < p.flip_prob:
            xyxy = np.array([1.0 - xyxy[2], xyxy[1], 1.0 - xyxy[0], xyxy[3]])
        gains = 1.0 - p.brightness + 2.0 * p.brightness * draws[4:]
        cxcywh = np.concatenate([(xyxy[:2] + xyxy[2:]) / 2, xyxy[2:] - xyxy[:2]])
        return {"template": normalize(template, float(gains[0])), "search": normalize(search, float(gains[1])),
                "search_box": torch.from_numpy(cxcywh.astype(np.float32))}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        for _ in range(100):
            sample = self._try(rng)
            if sample is not None:
                return sample
        raise RuntimeError(f"no valid training pair after 100 draws (seed {self.seed}, epoch {self.epoch}, index {index})")
