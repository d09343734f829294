"""Tests for data.py and synth.py: the released crop/resize arithmetic, image decoding, every
dataset reader (valid and malformed layouts written here), the procedural set and PairDataset."""
import dataclasses
import gc
import hashlib
import json
import math
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import fast  # noqa: E402
import synth  # noqa: E402

# ----------------------------------------------------------------------------- helpers


def _f32(v: float) -> float:
    return float(np.float32(v))


def reference_resize(src: np.ndarray, out_w: int, out_h: int, lanes: int = 8) -> np.ndarray:
    """Independent pixel-loop transcription of OpenCV's uint8 INTER_LINEAR (x86)."""
    h, w, c = src.shape
    sx, sy = 1.0 / (out_w / w), 1.0 / (out_h / h)
    def taps(d, scale, n, clamp):
        f = _f32((d + 0.5) * scale - 0.5)
        s = math.floor(f)
        f = _f32(f - s)
        if clamp and s < 0:
            f, s = 0.0, 0
        if clamp and s >= n - 1:
            f, s = 0.0, n - 1
        return s, round(_f32(_f32(1.0 - f) * 2048)), round(_f32(f * 2048))
    out = np.zeros((out_h, out_w, c), np.uint8)
    for dy in range(out_h):
        s, b0, b1 = taps(dy, sy, h, False)
        r0, r1 = min(max(s, 0), h - 1), min(max(s + 1, 0), h - 1)
        for dx in range(out_w):
            t, a0, a1 = taps(dx, sx, w, True)
            for k in range(c):
                rows = [int(src[r, t, k]) * a0 + int(src[r, min(t + 1, w - 1), k]) * a1 for r in (r0, r1)]
                if dx * c + k < lanes * ((out_w * c) // lanes):
                    v = (((rows[0] >> 4) * b0) >> 16) + (((rows[1] >> 4) * b1) >> 16)
                    v = (v + 2) >> 2
                else:
                    v = (rows[0] * b0 + rows[1] * b1 + (1 << 21)) >> 22
                out[dy, dx, k] = min(max(v, 0), 255)
    return out


def resize(src, out_w, out_h):
    """cv2.resize(src, (out_w, out_h), INTER_LINEAR) as data.py computes it (crop_resize's arithmetic)."""
    return data._resample(src, data._linear_taps(src.shape[0], out_h, False), data._linear_taps(src.shape[1], out_w, True))


def released_crop(image, box, factor, out_size):
    """Materialised released sample_target: slice, zero pad (with the off-by-one), resize."""
    x, y, w, h = box
    sz = math.ceil(math.sqrt(w * h) * factor)
    x1, y1 = round(x + 0.5 * w - sz * 0.5), round(y + 0.5 * h - sz * 0.5)
    x2, y2 = x1 + sz, y1 + sz
    H, W = image.shape[:2]
    x1p, y1p = max(0, -x1), max(0, -y1)
    x2p, y2p = max(x2 - W + 1, 0), max(y2 - H + 1, 0)
    crop = image[y1 + y1p:y2 - y2p, x1 + x1p:x2 - x2p]
    padded = np.pad(crop, ((y1p, y2p), (x1p, x2p), (0, 0)))
    assert padded.shape[:2] == (sz, sz)
    return reference_resize(padded, out_size, out_size) if sz <= 40 else resize(padded, out_size, out_size)


def ramp_image(h=10, w=10):
    v = (10 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype(np.uint8)
    return np.stack([v, v + 1, v + 2], axis=2)  # (h, w) x3 -> (h, w, 3)


def save_jpg(path: Path, value=128, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def write(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------- resize


def test_resize_is_opencv_inter_linear():
    src = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    out = resize(src, 2, 2)
    blocks = src.astype(int).reshape(2, 2, 2, 2, 3).transpose(0, 2, 1, 3, 4).reshape(2, 2, 4, 3)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, (blocks.sum(axis=2) + 2) // 4)
    src = np.repeat(np.array([[0, 100], [200, 40]], np.uint8)[:, :, None], 3, axis=2)
    out = resize(src, 4, 4)[:, :, 0]
    # Corners clamp to the source corners; out[0,1] = 0.75*0 + 0.25*100 (top row clamps);
    # out[1,1] = 0.75*25 + 0.25*(0.75*200 + 0.25*40) = 58.75 -> 59.
    assert out[0, 0] == 0 and out[0, 3] == 100 and out[3, 0] == 200 and out[3, 3] == 40
    assert out[0, 1] == 25 and out[0, 2] == 75 and out[1, 1] == 59
    row = (np.arange(8) * 10).astype(np.uint8)
    src = np.repeat(np.repeat(row[None, :, None], 2, axis=0), 3, axis=2)
    out = resize(src, 4, 1)
    np.testing.assert_array_equal(out[0, :, 0], [5, 25, 45, 65])
    rng = np.random.default_rng(0)
    for size in [(7, 5), (256, 256), (33, 70)]:
        const = np.full((19, 23, 3), 173, np.uint8)
        assert (resize(const, *size) == 173).all()
    img = rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize(img, 9, 13), img)
    for src_hw, out_wh in [((9, 11), (6, 5)), ((5, 6), (13, 7)), ((16, 16), (16, 8)), ((12, 7), (3, 9)),
                           ((21, 21), (16, 16))]:  # against the pixel-loop reference
        img = np.random.default_rng(1).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
        np.testing.assert_array_equal(resize(img, *out_wh), reference_resize(img, *out_wh))
    # OpenCV's SIMD vertical pass floors three times, its scalar tail once; they can differ.
    h0, h1 = np.array([[41987]], np.int32), np.array([[156521]], np.int32)
    b0, b1 = np.array([985], np.int32), np.array([1063], np.int32)
    vec = data._vertical_pass(np.repeat(h0, 8, 1), np.repeat(h1, 8, 1), b0, b1)
    scalar = data._vertical_pass(h0, h1, b0, b1)  # row of 1 element < 8 lanes: scalar path
    # SIMD: (2624*985 >> 16) + (9782*1063 >> 16) = 39 + 158 = 197; (197 + 2) >> 2 = 49.
    # Scalar: (41987*985 + 156521*1063 + 2^21) >> 22 = 209836170 >> 22 = 50.
    assert vec.tolist() == [[49] * 8] and scalar.tolist() == [[50]]
    mixed = data._vertical_pass(np.repeat(h0, 9, 1), np.repeat(h1, 9, 1), b0, b1)
    assert mixed.tolist() == [[49] * 8 + [50]]  # 8 lanes, then the scalar tail
    # The hand case of test_vector_and_scalar_paths_differ_where_opencv_does, 8 lanes + a tail ...
    h0, h1 = torch.full((1, 1, 9), 41987, dtype=torch.int32), torch.full((1, 1, 9), 156521, dtype=torch.int32)
    b0, b1 = torch.tensor([[[985]]], dtype=torch.int32), torch.tensor([[[1063]]], dtype=torch.int32)
    assert fast._vertical_pass_torch(h0, h1, b0, b1).tolist() == [[[49] * 8 + [50]]]
    # ... and values the crops never produce (negative, overflowing int32 products): numpy's
    # arithmetic shifts and wrapping int32 products are torch's too.
    rng = np.random.default_rng(6)
    h = rng.integers(-2**31, 2**31, (2, 5, 21), dtype=np.int64).astype(np.int32)
    b = rng.integers(-2**15, 2**15, (2, 5), dtype=np.int64).astype(np.int32)
    want = data._vertical_pass(h[0], h[1], b[0], b[1])
    t = torch.from_numpy(h)[:, None]  # (2, 5, 21) -> (2, 1, 5, 21)
    bt = torch.from_numpy(b)[:, None, :, None]  # (2, 5) -> (2, 1, 5, 1)
    got = fast._vertical_pass_torch(t[0].clone(), t[1].clone(), bt[0], bt[1])  # it overwrites its inputs
    assert torch.equal(got[0], torch.from_numpy(want))


# ----------------------------------------------------------------------------- crop


def test_crop_is_the_released_padded_crop():
    img = ramp_image()
    crop, factor, corner = data.crop_resize(img, (6, 6, 4, 4), 1.0, 4)
    assert crop.shape == (4, 4, 3) and factor == 1.0 and corner == (6, 6, 10, 10)
    # Released off-by-one: right/bottom pad is 1 though the crop ends exactly at the edge.
    np.testing.assert_array_equal(crop[:3, :3, 0], [[66, 67, 68], [76, 77, 78], [86, 87, 88]])
    assert (crop[3] == 0).all() and (crop[:, 3] == 0).all()
    img = ramp_image()
    crop, _, corner = data.crop_resize(img, (-1, -1, 4, 4), 1.0, 4)
    assert corner == (-1, -1, 3, 3)
    assert (crop[0] == 0).all() and (crop[:, 0] == 0).all()
    np.testing.assert_array_equal(crop[1:, 1:, 0], [[0, 1, 2], [10, 11, 12], [20, 21, 22]])
    np.testing.assert_array_equal(crop[1:, 1:, 2], [[2, 3, 4], [12, 13, 14], [22, 23, 24]])
    img = ramp_image(20, 20)
    assert data.crop_resize(img, (0.5, 0.5, 4, 4), 1.0, 4)[2][:2] == (0, 0)   # round(0.5) = 0
    assert data.crop_resize(img, (1.5, 2.5, 4, 4), 1.0, 4)[2][:2] == (2, 2)   # round(1.5) = round(2.5) = 2
    crop, factor, corner = data.crop_resize(img, (3, 4, 2, 8), 2.0, 16)
    assert corner == (0, 4, 8, 12) and factor == 2.0 and crop.shape == (16, 16, 3)
    img = random_image()
    for box, factor, out in MATERIALISED_CASES:
        crop, factor_out, _ = data.crop_resize(img, box, factor, out)
        assert crop.shape == (out, out, 3)
        assert factor_out == out / math.ceil(math.sqrt(box[2] * box[3]) * factor)
        np.testing.assert_array_equal(crop, released_crop(img, box, factor, out))
        flipped = img[:, ::-1]  # a negative-stride view, as PairDataset's flipped frames
        want = released_crop(flipped.copy(), box, factor, out)
        np.testing.assert_array_equal(data.crop_resize(flipped, box, factor, out)[0], want)


MATERIALISED_CASES = [((2, 3, 5, 4), 2.0, 16), ((-3, 5, 6, 9), 2.0, 12), ((10, 12, 7, 7), 4.0, 32),
                      ((40, -20, 30, 25), 4.0, 64), ((0, 0, 3, 3), 4.0, 16)]


def random_image(h=24, w=30, seed=2):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_crop_errors_numpy_and_torch_box_in_crop_normalize():
    img = ramp_image()
    for box in [(0, 0, 0, 4), (0, 0, -1, 4), (np.nan, 0, 4, 4)]:
        with pytest.raises(ValueError, match="box"):
            data.crop_resize(img, box, 2.0, 8)
    with pytest.raises(ValueError, match="smaller than 1 pixel"):
        data.crop_resize(img, (0, 0, 4, 4), 0.0, 8)
    with pytest.raises(ValueError, match="uint8"):
        data.crop_resize(img.astype(np.float32), (0, 0, 4, 4), 2.0, 8)
    box = np.array([100.0, 50.0, 40.0, 20.0])
    out = data.box_in_crop(box, box[:2] + box[2:] / 2, 2.0, 256)
    np.testing.assert_allclose(out, [127.5 - 40, 127.5 - 20, 80, 40])
    crop = np.zeros((4, 5, 3), np.uint8)
    crop[..., 0] = 255
    t = data.normalize(crop)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert torch.allclose(t[0], torch.full((4, 5), (1 - 0.485) / 0.229))
    assert torch.allclose(t[1], torch.full((4, 5), -0.456 / 0.224))
    bright = data.normalize(np.full((2, 2, 3), 200, np.uint8), brightness=1.5)
    assert torch.allclose(bright[2], torch.full((2, 2), (1 - 0.406) / 0.225))  # clipped at 1
    img = ramp_image()
    assert fast.crop_resize_torch([], [], 2.0, 8)[0].shape == (0, 8, 8, 3)
    with pytest.raises(ValueError, match="1 images but 2 boxes"):
        fast.crop_resize_torch([img], [(0, 0, 4, 4)] * 2, 2.0, 8)
    with pytest.raises(ValueError, match="box"):
        fast.crop_resize_torch([img, img], [(0, 0, 4, 4), (0, 0, 0, 4)], 2.0, 8)
    with pytest.raises(ValueError, match="uint8"):
        fast.crop_resize_torch([img, img.astype(np.float32)], [(0, 0, 4, 4)] * 2, 2.0, 8)
    with pytest.raises(ValueError, match="uint8"):
        fast.crop_resize_torch([torch.from_numpy(img).float()], [(0, 0, 4, 4)], 2.0, 8)


# ----------------------------------------------------------------------------- preprocessing as tensors


def crop_cases():
    """(image, box, factor, out) of the crop tests above, plus crops at and beyond the
    edges, tiny and huge crops, odd image sizes and the tracker's 128 and 256 outputs."""
    ramp, ramp20, rand = ramp_image(), ramp_image(20, 20), random_image()
    frame = random_image(360, 640, seed=3)
    odd = random_image(37, 23, seed=4)
    return ([(ramp, (6, 6, 4, 4), 1.0, 4), (ramp, (-1, -1, 4, 4), 1.0, 4),
             (ramp20, (0.5, 0.5, 4, 4), 1.0, 4), (ramp20, (1.5, 2.5, 4, 4), 1.0, 4),
             (ramp20, (3, 4, 2, 8), 2.0, 16)]
            + [(rand, box, factor, out) for box, factor, out in MATERIALISED_CASES]
            + [(odd, (0.2, 0.3, 0.5, 0.5), 1.0, 7),           # a 1-pixel crop, upscaled
               (odd, (-50, -40, 3, 2), 4.0, 16),              # wholly outside: zeros
               (odd, (20, 35, 9, 5), 2.0, 33),                # bottom-right corner, odd out
               (frame, (600, 330, 60, 40), 4.0, 256),         # beyond the right/bottom edge
               (frame, (300, 150, 40, 30), 4.0, 256),         # a search crop inside
               (frame, (100, 80, 64, 48), 2.0, 128),          # a template crop
               (frame, (200, 100, 400, 300), 4.0, 256),       # huge: 1386 px over a 640x360 frame
               (frame, (0, 0, 1, 1), 2.0, 128)])              # tiny: 2 px to 128


def numpy_crops(cases):
    return [data.crop_resize(image, box, factor, out) for image, box, factor, out in cases]


def assert_same_crops(cases, device="cpu", as_tensor=False):
    """crop_resize_torch over the cases, batched per out size, equals crop_resize per crop."""
    for out in sorted({case[3] for case in cases}):
        for factor in sorted({case[2] for case in cases if case[3] == out}):
            group = [case for case in cases if case[2:] == (factor, out)]
            images = [torch.from_numpy(c[0]) if as_tensor else c[0] for c in group]
            crops, factors, corners = fast.crop_resize_torch(images, [c[1] for c in group], factor, out, device)
            assert crops.shape == (len(group), out, out, 3) and crops.dtype == torch.uint8
            for k, (crop, f, corner) in enumerate(numpy_crops(group)):
                assert torch.equal(crops[k].cpu(), torch.from_numpy(crop)), (group[k][1:], k)
                assert factors[k] == f and corners[k] == corner


def test_crop_resize_and_normalize_torch_equal_numpy(monkeypatch):
    assert_same_crops(crop_cases())
    assert_same_crops(crop_cases()[:6], as_tensor=True)  # uint8 tensors in, too
    # The CPU resamples search crops one at a time (_crops_per_step); an accelerator takes the
    # whole batch in one step, with mixed image sizes in one flat buffer: the same crops.
    monkeypatch.setattr(fast, "_crops_per_step", lambda count, out_size, device: count)
    assert_same_crops(crop_cases())
    crops = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    crops[0, 0, 0] = torch.tensor([0, 128, 255])
    got = fast.normalize_torch(crops)
    assert got.shape == (3, 3, 16, 16) and got.dtype == torch.float32
    assert torch.equal(got, torch.stack([data.normalize(c.numpy()) for c in crops]))
    frame = random_image(360, 640, seed=3)
    crop, f, corner = data.crop_resize(frame, (300, 150, 40, 30), 4.0, 256)
    got, fs, corners = fast.crop_resize_torch([frame], [(300, 150, 40, 30)], 4.0, 256)
    assert torch.equal(got[0], torch.from_numpy(crop)) and fs == [f] and corners == [corner]
    # Non-contiguous inputs (a channel-reversed view, a strided tensor) read the same pixels.
    flipped = frame[:, :, ::-1]
    view = torch.from_numpy(frame).flip(2)[::2, ::3]
    got, _, _ = fast.crop_resize_torch([flipped, view], [(50, 60, 30, 20)] * 2, 2.0, 128)
    for k, image in enumerate([np.ascontiguousarray(flipped), np.ascontiguousarray(view.numpy())]):
        assert torch.equal(got[k], torch.from_numpy(data.crop_resize(image, (50, 60, 30, 20), 2.0, 128)[0]))
    rng = np.random.default_rng(5)
    for trial in range(30):
        out = int(rng.choice([1, 5, 8, 13, 16, 31, 64, 128]))  # n = 3 * out: with and without a scalar tail
        factor = float(rng.choice([0.6, 1.0, 2.0, 4.0]))
        images, boxes = [], []
        for _ in range(int(rng.integers(1, 7))):
            h, w = (int(v) for v in rng.integers(1, 80, 2))
            images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            bw, bh = rng.uniform(0.2, 1.5 * max(h, w), 2)
            boxes.append((rng.uniform(-bw - 10, w + 10), rng.uniform(-bh - 10, h + 10), bw, bh))
        crops, factors, corners = fast.crop_resize_torch(images, boxes, factor, out)
        for k, (crop, f, corner) in enumerate(numpy_crops([(i, b, factor, out) for i, b in zip(images, boxes)])):
            assert torch.equal(crops[k], torch.from_numpy(crop)), (trial, k)
            assert factors[k] == f and corners[k] == corner


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_resize_and_normalize_torch_on_cuda_equal_cpu():
    assert_same_crops(crop_cases(), device="cuda")
    frame = random_image(360, 640, seed=3)
    boxes = [(300, 150, 40, 30), (600, 330, 60, 40)]
    crops, _, _ = fast.crop_resize_torch([frame, torch.from_numpy(frame).cuda()], boxes, 4.0, 256, "cuda")
    assert crops.is_cuda
    assert torch.equal(fast.normalize_torch(crops).cpu(), fast.normalize_torch(crops.cpu()))


# ----------------------------------------------------------------------------- images


def test_read_image_and_prefetch_errors_and_decoding_ahead(tmp_path, monkeypatch):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = data.read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8 and (out[..., 1] == gray).all()
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = data.read_image(tmp_path / "a.png")
    assert out.shape == (3, 4, 3) and (out[..., 0] == 200).all()
    deep = np.array([[0x1234, 0xFFFF], [0x00FF, 0x8000]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = data.read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[..., 2], [[0x12, 0xFF], [0x00, 0x80]])
    Image.fromarray(np.full((5, 5, 3), 90, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert data.read_image(tmp_path / "p.png").shape == (5, 5, 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        data.read_image(bad)
    with pytest.raises(ValueError, match="missing.png"):
        data.read_image(tmp_path / "missing.png")
    paths = prefetch_paths(tmp_path, 3)
    paths[1] = tmp_path / "gone.jpg"
    images = fast.prefetch_images(paths, decode=False)  # only the bytes are read ahead
    assert next(images).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="cannot read image .*gone.jpg"):
        next(images)
    monkeypatch.setattr(fast, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not fast.decode_ahead("cpu")  # the forward uses both cores
    assert fast.decode_ahead("cuda")  # the CPU waits on the GPU anyway
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert fast.decode_ahead("cpu")


def prefetch_paths(tmp_path, count, broken=None):
    paths = []
    for k in range(count):
        path = tmp_path / f"{k:03d}.jpg"
        if k == broken:
            path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
        else:
            save_jpg(path, value=10 * k, size=8 + k)
        paths.append(path)
    return paths


@pytest.mark.parametrize("decode", [True, False])
def test_prefetch_images_yields_in_order_and_raises_at_the_broken_file(tmp_path, decode):
    paths = prefetch_paths(tmp_path, 7)
    got = list(fast.prefetch_images(paths, depth=2, decode=decode))
    assert len(got) == 7
    for path, image in zip(paths, got):
        np.testing.assert_array_equal(image, data.read_image(path))
    assert list(fast.prefetch_images([], decode=decode)) == []
    paths = prefetch_paths(tmp_path, 6, broken=3)
    images = fast.prefetch_images(paths, depth=4, decode=decode)
    first = next(images)  # starts the thread
    time.sleep(0.3)  # it has decoded ahead up to the broken file by now
    assert first.shape == (8, 8, 3) and next(images).shape == (9, 9, 3) and next(images).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="003.jpg"):
        next(images)
    with pytest.raises(StopIteration):
        next(images)


def test_prefetch_images_stops_when_the_consumer_stops(tmp_path):
    paths = prefetch_paths(tmp_path, 2) * 50  # far more than depth ahead
    before = threading.active_count()
    images = fast.prefetch_images(paths, depth=1)
    next(images)
    time.sleep(0.1)  # the worker is blocked on a full queue
    closer = threading.Thread(target=images.close)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "closing the generator hung"
    assert threading.active_count() == before  # the worker has been joined
    for k, _ in enumerate(fast.prefetch_images(paths, depth=3)):  # break: same, via garbage collection
        if k == 5:
            break
    gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


# ----------------------------------------------------------------------------- readers


def test_read_folder_layouts_in_natural_order(tmp_path):
    for k in range(3):
        save_jpg(tmp_path / "seqA" / f"{k + 1:04d}.jpg")
    write(tmp_path / "seqA" / "groundtruth.txt", "1\t2\t3\t4\n5 6 7 8\n1,1,0,0\n")
    save_jpg(tmp_path / "seqB" / "img" / "0001.png")
    (seq_a,) = data.read_folder(tmp_path / "seqA")
    assert [p.name for p in seq_a.frames] == ["0001.jpg", "0002.jpg", "0003.jpg"]
    np.testing.assert_array_equal(seq_a.gt[1], [5, 6, 7, 8])
    assert seq_a.visible.tolist() == [True, True, False]  # zero-size box is not visible
    both = data.read_dataset("folder", tmp_path)
    assert [s.name for s in both] == ["seqA", "seqB"] and both[1].gt is None
    for name in ["frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "frame_11.jpg"]:
        save_jpg(tmp_path / "a" / name)
    assert [p.name for p in data.list_frames(tmp_path / "a")] == ["frame_1.jpg", "frame_2.jpg",
                                                                  "frame_10.jpg", "frame_11.jpg"]
    for name in ["10.jpg", "9.jpg", "0.jpg"]:  # TrackingNet
        save_jpg(tmp_path / "b" / name)
    assert [p.name for p in data.list_frames(tmp_path / "b")] == ["0.jpg", "9.jpg", "10.jpg"]


def test_read_folder_errors_twins_and_otb(tmp_path):
    save_jpg(tmp_path / "s" / "1.jpg")
    save_jpg(tmp_path / "s" / "2.jpg")
    write(tmp_path / "s" / "groundtruth.txt", "1,2,3,4\n1,2,3\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt:2: expected 4 values x,y,w,h, got 3"):
        data.read_folder(tmp_path / "s")
    write(tmp_path / "s" / "groundtruth.txt", "1,2,3,4\n1,2,x,4\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt:2: not numbers"):
        data.read_folder(tmp_path / "s")
    write(tmp_path / "s" / "groundtruth.txt", "1,2,3,4\n1,2,3,4\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt: 3 boxes for 2 frames"):
        data.read_folder(tmp_path / "s")
    save_jpg(tmp_path / "s" / "3.jpg")  # fewer boxes than frames, but more than the first
    write(tmp_path / "s" / "groundtruth.txt", "1,2,3,4\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt: 2 boxes for 3 frames .*or only the first"):
        data.read_folder(tmp_path / "s")
    write(tmp_path / "s" / "groundtruth.txt", "1,2,3,4\n")  # an init box alone is fine
    assert data.read_folder(tmp_path / "s")[0].gt.shape == (1, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        data.read_folder(tmp_path / "empty")
    write(tmp_path / "noframes" / "groundtruth.txt", "1,2,3,4\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt: ground truth but no image frames"):
        data.read_folder(tmp_path / "noframes")
    for seq in ["day1/cam", "day2/cam", "solo"]:
        save_jpg(tmp_path / "root" / seq / "1.jpg")
    write(tmp_path / "root" / "results" / "solo.txt", "1,2,3,4\n")  # results written under the root
    with pytest.raises(ValueError, match=r"two sequences named 'cam' \(.*day1/cam and .*day2/cam\)"):
        data.read_folder(tmp_path / "root")
    (tmp_path / "root" / "day2" / "cam").rename(tmp_path / "root" / "day2" / "cam2")
    save_jpg(tmp_path / "elsewhere" / "1.jpg")  # a sequence whose frames are linked in
    (tmp_path / "root" / "linked").mkdir()
    (tmp_path / "root" / "linked" / "img").symlink_to(tmp_path / "elsewhere")
    assert [s.name for s in data.read_folder(tmp_path / "root")] == ["cam", "cam2", "linked", "solo"]
    write(tmp_path / "otb" / "Bolt" / "groundtruth_rect.txt", "1,2,3,4\n")  # its img/ is missing
    save_jpg(tmp_path / "otb" / "Basketball" / "img" / "0001.jpg")
    write(tmp_path / "otb" / "Basketball" / "groundtruth_rect.txt", "1,2,3,4\n")
    with pytest.raises(ValueError, match=r"Bolt/groundtruth_rect\.txt: ground truth but no image frames"):
        data.read_otb(tmp_path / "otb")
    (tmp_path / "otb" / "Bolt" / "groundtruth_rect.txt").unlink()
    for k in (2, 3):  # Basketball: 3 frames, 2 boxes (as OTB's David: annotated from a later frame)
        save_jpg(tmp_path / "otb" / "Basketball" / "img" / f"000{k}.jpg")
    write(tmp_path / "otb" / "Basketball" / "groundtruth_rect.txt", "1,2,3,4\n1,2,3,4\n")
    with pytest.warns(UserWarning, match=r"2 boxes for 3 frames.*misaligned"):
        assert [s.name for s in data.read_otb(tmp_path / "otb")] == ["Basketball"]


def _got10k_layout(root: Path, split="train"):
    for name, n in [("GOT-10k_Train_000001", 3), ("GOT-10k_Train_000002", 2)]:
        for k in range(n):
            save_jpg(root / split / name / f"{k + 1:08d}.jpg")
        write(root / split / name / "groundtruth.txt", "".join(f"{k},{k},10,10\n" for k in range(n)))
    write(root / split / "list.txt", "GOT-10k_Train_000001\nGOT-10k_Train_000002\n")
    write(root / split / "GOT-10k_Train_000001" / "absence.label", "0\n1\n0\n")
    write(root / split / "GOT-10k_Train_000001" / "cover.label", "8\n0\n0\n")


def test_read_got10k_lasot_and_their_errors(tmp_path):
    _got10k_layout(tmp_path)
    seqs = data.read_got10k(tmp_path, "train")
    assert [s.name for s in seqs] == ["GOT-10k_Train_000001", "GOT-10k_Train_000002"]
    assert seqs[0].gt.shape == (3, 4) and seqs[0].visible.tolist() == [True, False, False]
    assert seqs[1].visible.tolist() == [True, True] and len(seqs[1].frames) == 2
    write(tmp_path / "vot_overlap.txt", "GOT-10k_Train_000001\n")
    kept = data.read_got10k(tmp_path, "train", exclude=tmp_path / "vot_overlap.txt")
    assert [s.name for s in kept] == ["GOT-10k_Train_000002"]
    assert len(data.read_dataset("got10k", tmp_path, "train")) == 2
    _got10k_layout(tmp_path)
    seq = tmp_path / "train" / "GOT-10k_Train_000002"
    write(seq / "groundtruth.txt", "1,1,10,10\n1,1,10,10,5\n")
    with pytest.raises(ValueError, match=r"GOT-10k_Train_000002.groundtruth\.txt:2: "):
        data.read_got10k(tmp_path, "train")
    write(seq / "groundtruth.txt", "1,1,10,10\n1,1,10,10\n1,1,10,10\n")
    with pytest.raises(ValueError, match="3 boxes but only 2 frames"):
        data.read_got10k(tmp_path, "train")
    write(seq / "groundtruth.txt", "1,1,10,10\n1,1,10,10\n")
    write(seq / "absence.label", "0\n")
    with pytest.raises(ValueError, match=r"absence\.label: 1 labels"):
        data.read_got10k(tmp_path, "train")
    write(seq / "absence.label", "0\nz\n")
    with pytest.raises(ValueError, match=r"absence\.label:2: not a number: \'z\'"):
        data.read_got10k(tmp_path, "train")
    names = data.lasot_test_names()
    assert len(names) == 280 and len(set(names)) == 280
    assert len({n.rsplit("-", 1)[0] for n in names}) == 70
    assert {"airplane-1", "zebra-17", "volleyball-19", "gecko-16"} <= set(names)
    _lasot_sequence(tmp_path, "airplane-1")   # a test video: excluded from train
    _lasot_sequence(tmp_path, "airplane-2")
    (seq,) = data.read_lasot(tmp_path, "train")
    assert seq.name == "airplane-2" and seq.visible.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="279 LaSOT test videos missing"):
        data.read_lasot(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        data.read_lasot(tmp_path, "val")
    d = _lasot_sequence(tmp_path, "bear-1", occ="0,1")
    with pytest.raises(ValueError, match=r"full_occlusion\.txt: 2 labels but the ground truth has 3"):
        data.read_lasot(tmp_path, "train")
    write(d / "full_occlusion.txt", "0,0,0\n")
    write(d / "groundtruth.txt", "1,2,3,4\n1,2,3,4\nnope\n")
    with pytest.raises(ValueError, match=r"bear-1.groundtruth\.txt:3: "):
        data.read_lasot(tmp_path, "train")


def _lasot_sequence(root: Path, name: str, n=3, occ="0,1,0", oov="0,0,1"):
    d = root / name.rsplit("-", 1)[0] / name
    for k in range(n):
        save_jpg(d / "img" / f"{k + 1:08d}.jpg")
    write(d / "groundtruth.txt", "".join(f"{k},{k},5,6\n" for k in range(n)))
    write(d / "full_occlusion.txt", occ + "\n")
    write(d / "out_of_view.txt", oov + "\n")
    return d


def test_read_trackingnet_otb_coco_and_unknown_datasets(tmp_path):
    for k in range(12):
        save_jpg(tmp_path / "TRAIN_0" / "frames" / "vidA_0" / f"{k}.jpg")
    write(tmp_path / "TRAIN_0" / "anno" / "vidA_0.txt", "".join(f"{k},0,4,4\n" for k in range(12)))
    save_jpg(tmp_path / "TEST" / "frames" / "vidB_1" / "0.jpg")
    save_jpg(tmp_path / "TEST" / "frames" / "vidB_1" / "1.jpg")
    write(tmp_path / "TEST" / "anno" / "vidB_1.txt", "3,3,4,4\n")
    (train,) = data.read_trackingnet(tmp_path, "train")
    assert [p.name for p in train.frames][9:] == ["9.jpg", "10.jpg", "11.jpg"]  # numeric order
    (test,) = data.read_dataset("trackingnet", tmp_path, "test")
    assert test.gt.shape == (1, 4) and len(test.frames) == 2
    assert len(data.read_trackingnet(tmp_path, "TRAIN_0")) == 1
    write(tmp_path / "TEST" / "anno" / "vidB_1.txt", "3;3;4;4\n")
    with pytest.raises(ValueError, match=r"vidB_1\.txt:1: "):
        data.read_trackingnet(tmp_path, "test")
    with pytest.raises(ValueError, match="no TrackingNet chunk"):
        data.read_trackingnet(tmp_path / "nowhere", "train")
    for k in range(3):
        save_jpg(tmp_path / "Basketball" / "img" / f"{k + 1:04d}.jpg")
        save_jpg(tmp_path / "bike1" / f"{k + 1:06d}.jpg")
    write(tmp_path / "Basketball" / "groundtruth_rect.txt", "1,2,3,4\n1\t2\t3\t4\nNaN,NaN,NaN,NaN\n")
    write(tmp_path / "bike1" / "bike1.txt", "1 2 3 4\n1 2 3 4\n1 2 3 4\n")
    seqs = data.read_dataset("otb", tmp_path)
    assert [s.name for s in seqs] == ["Basketball", "bike1"]
    assert seqs[0].visible.tolist() == [True, True, False]
    save_jpg(tmp_path / "NoGT" / "0001.jpg")
    with pytest.raises(ValueError, match="NoGT"):
        data.read_otb(tmp_path)
    meta = {"images": [{"id": 7, "file_name": "000007.jpg"}],
            "annotations": [{"id": 1, "image_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 1},
                            {"id": 3, "image_id": 7, "bbox": [1, 2, 0, 4], "iscrowd": 0}]}
    write(tmp_path / "annotations" / "instances_train2017.json", json.dumps(meta))
    (seq,) = data.read_dataset("coco", tmp_path, None)
    assert seq.name == "7_1" and seq.frames == [tmp_path / "train2017" / "000007.jpg"]
    np.testing.assert_array_equal(seq.gt, [[1, 2, 3, 4]])
    write(tmp_path / "annotations" / "instances_train2017.json", '{"images": [],\n "annotations": [,]}')
    with pytest.raises(ValueError, match=r"instances_train2017\.json:2: invalid JSON"):
        data.read_coco(tmp_path)
    meta["annotations"][0]["bbox"] = [1, 2]
    write(tmp_path / "annotations" / "instances_train2017.json", json.dumps(meta))
    with pytest.raises(ValueError, match="annotation #0"):
        data.read_coco(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.read_dataset("imagenet", ".", "train")


# ----------------------------------------------------------------------------- synth


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth.synth(root, sequences=4, frames=20, seed=3, size=(128, 96), val_fraction=0.25, progress=False)
    return root


# Recorded with the generator as it stood in data.py, before it moved to synth.py (and
# unchanged since, through the objects / patch / region kinds and their removal): the
# label files written, and the rendered frames (pixels before JPEG encoding, whose bytes
# are up to Pillow's libjpeg) with each sequence's JPEG quality, boxes and absence flags.
PINNED_LABELS = "8b9db81d48ce5dc9e863908f0187b7543ed34ec098b05ffb9b78bcebb594b4ab"
PINNED_FRAMES = ["80e96648c12f288818c342ebb2f9ad077a2d5c3202f181af0c28501d9231cebe",
                 "bcdbdb36d8ac77e9c3bcf74e63c077f9b0809dc5e1bbab413ffaed8c9c14b23c"]


def test_synth_layout_determinism_pinned_bytes_and_cli(synth_root, tmp_path):
    train, val = data.read_got10k(synth_root, "train"), data.read_got10k(synth_root, "val")
    assert len(train) == 3 and len(val) == 1
    for seq in train + val:
        assert len(seq.frames) == 20 and seq.gt.shape == (20, 4)
        assert data.read_image(seq.frames[0]).shape == (96, 128, 3)
        absent = np.loadtxt(seq.frames[0].parent / "absence.label", dtype=int)
        np.testing.assert_array_equal(seq.visible, (absent == 0) & (seq.gt[:, 2] > 0) & (seq.gt[:, 3] > 0))
        vis = seq.gt[seq.visible]
        assert (vis[:, :2] >= 0).all() and (vis[:, 0] + vis[:, 2] <= 128).all() and (vis[:, 1] + vis[:, 3] <= 96).all()
        assert seq.visible.any()
    synth.synth(tmp_path, sequences=4, frames=20, seed=3, size=(128, 96), val_fraction=0.25, progress=False,
                workers=2)  # the pool writes what one process writes (synth_root: workers=1)
    for rel in ["train/list.txt", "val/list.txt", "train/synth_00001/groundtruth.txt",
                "train/synth_00001/absence.label", "train/synth_00000/00000001.jpg",
                "val/synth_00003/00000020.jpg"]:
        assert (tmp_path / rel).read_bytes() == (synth_root / rel).read_bytes(), rel
    other = tmp_path / "other"
    synth.synth(other, sequences=1, frames=2, seed=4, size=(128, 96), val_fraction=0, progress=False)
    first = "train/synth_00000/00000001.jpg"
    assert (other / first).read_bytes() != (synth_root / first).read_bytes()
    pinned = tmp_path / "pinned"
    synth.synth(pinned, sequences=2, frames=4, seed=7, size=(128, 96), val_fraction=0.5, progress=False)
    labels = hashlib.sha256()
    for p in sorted(pinned.rglob("*")):
        if p.is_file() and p.suffix != ".jpg":
            labels.update(str(p.relative_to(pinned)).encode() + p.read_bytes())
    assert labels.hexdigest() == PINNED_LABELS
    for index, want in enumerate(PINNED_FRAMES):
        rng = np.random.default_rng([7, index])  # as synth._write_sequence seeds sequence `index`
        frames = hashlib.sha256(str(int(rng.integers(75, 96))).encode())  # the JPEG quality draw
        for frame, box, absent in synth.render_sequence(rng, 4, 128, 96):
            frames.update(frame.tobytes())
            frames.update(repr((tuple(int(v) for v in box), bool(absent))).encode())
        assert frames.hexdigest() == want, index
    out = subprocess.run([sys.executable, str(Path(synth.__file__)), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--sequences" in out.stdout
    out = subprocess.run([sys.executable, str(Path(synth.__file__)), "--out", str(synth_root / "x"),
                          "--workers", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "--workers 0" in out.stderr and not (synth_root / "x").exists()


def test_absence_rule_and_sequences_deterministic_inside_the_frame():
    """Absent when > 90 % of the target's alpha is covered or outside the frame."""
    rng = np.random.default_rng(0)
    sensor = {"rng": rng, "gain_log": np.zeros(1), "tint": np.ones(3), "blur_p": 0.0,
              "noise": np.zeros((96 + 32, 128 + 32, 3), np.float32)}
    alpha = np.zeros((96, 128), np.float32)
    alpha[40:60, 50:70] = 1  # a 20 x 20 target
    box = (50, 40, 20, 20)
    occluder = np.full((20, 20, 4), 255, np.uint8)
    for covered, absent in ((0.0, False), (0.5, False), (0.85, False), (0.95, True)):
        # An opaque 20 x 20 occluder over the same columns, covering the lowest rows.
        track = np.array([[60.0, 70 - 20 * covered, 20.0, 20.0]]) if covered else np.full((1, 4), np.nan)
        occluders = [(occluder, track)]
        frame, out_box, out_absent = synth._finish(np.zeros((96, 128, 3), np.float32), 0, sensor, occluders,
                                                   alpha, box, 400.0)
        assert out_box == box and out_absent is absent, covered
        assert frame.dtype == np.uint8 and frame.shape == (96, 128, 3)
    # Partly outside: the box is clipped to the frame; wholly outside: zeros and absent.
    edge = np.zeros((96, 128), np.float32)
    edge[0:10, 0:20] = 1
    _, out_box, out_absent = synth._finish(np.zeros((96, 128, 3), np.float32), 0, sensor, [], edge,
                                           (0, -10, 20, 20), 400.0)
    assert out_box == (0, 0, 20, 10) and not out_absent
    _, out_box, out_absent = synth._finish(np.zeros((96, 128, 3), np.float32), 0, sensor, [],
                                           np.zeros((96, 128), np.float32), (200, 10, 20, 20), 400.0)
    assert out_box == (0, 0, 0, 0) and out_absent
    def run(seed):
        return list(synth.render_sequence(np.random.default_rng([seed, 0]), 20, 128, 96))
    first, again, other = run(5), run(5), run(6)
    for (fa, ba, aa), (fb, bb, ab) in zip(first, again):
        np.testing.assert_array_equal(fa, fb)
        assert ba == bb and aa == ab
    assert any(not np.array_equal(fa, fo) for (fa, _, _), (fo, _, _) in zip(first, other))
    for seed in range(4):
        for frame, (x, y, w, h), absent in run(seed):
            assert frame.shape == (96, 128, 3) and frame.dtype == np.uint8
            if not absent:
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96


def test_ensure_redoes_an_interrupted_set_and_keeps_a_complete_one(tmp_path):
    folder = tmp_path / "synth"
    partial = tmp_path / "synth.partial"  # an interrupted generation
    (partial / "train").mkdir(parents=True)
    (partial / "train" / "stale.txt").write_text("x")
    assert synth.ensure(folder, 2, 3, 0, log=lambda *a: None) == folder
    assert json.loads((folder / synth.MARKER).read_text()) == {"sequences": 2, "frames": 3, "seed": 0}
    assert not partial.exists() and not (folder / "train" / "stale.txt").exists()
    stamp = (folder / synth.MARKER).stat().st_mtime_ns
    synth.ensure(folder, 2, 3, 0, log=lambda *a: None)  # cached: not regenerated
    assert (folder / synth.MARKER).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=re.escape(
            f"--synth-dir {folder} was made with {{'sequences': 2, 'frames': 3, 'seed': 0}}, not the "
            "{'sequences': 2, 'frames': 4, 'seed': 0} asked for: pass another --synth-dir")):
        synth.ensure(folder, 2, 4, 0, log=lambda *a: None)
    assert (folder / synth.MARKER).stat().st_mtime_ns == stamp  # kept as it was
    assert len(data.read_got10k(folder, "train")[0].frames) == 3
    write(tmp_path / "mine" / "precious.txt", "keep")
    with pytest.raises(ValueError, match="not made by train.py"):
        synth.ensure(tmp_path / "mine", 2, 3, 0, log=lambda *a: None)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"


# ----------------------------------------------------------------------------- pairs


def _sources(synth_root):
    return [("synth", data.read_got10k(synth_root, "train"))]


def _still(tmp_path, image, box, name="still"):
    Image.fromarray(image).save(tmp_path / f"{name}.png")
    return data.Sequence(name, [tmp_path / f"{name}.png"], np.array([box], np.float64), np.ones(1, bool))


def _pixels(t):  # normalised (3, S, S) -> 0..255 float (S, S, 3)
    mean_std = torch.tensor([data.IMAGENET_MEAN, data.IMAGENET_STD])[:, :, None, None]  # (2, 3) -> (2, 3, 1, 1)
    return ((t * mean_std[1] + mean_std[0]) * 255).permute(1, 2, 0).numpy()  # (3, S, S) -> (S, S, 3)


def pair_set(sources, weights=None, samples_per_epoch=60000, seed=0, **processing):
    """data.PairDataset with data.Processing's fields as keywords."""
    return data.PairDataset(sources, weights, samples_per_epoch, seed, data.Processing(**processing))


def test_pairs_shapes_determinism_flips_and_grayscale(synth_root, tmp_path):
    ds = pair_set(_sources(synth_root), samples_per_epoch=6, seed=0)
    assert len(ds) == 6
    for i in range(6):
        s = ds[i]
        assert s["template"].shape == (3, 128, 128) and s["search"].shape == (3, 256, 256)
        assert s["search_box"].shape == (4,) and s["search_box"].dtype == torch.float32
        cx, cy, w, h = s["search_box"].tolist()
        assert 0 < w <= 1 and 0 < h <= 1
        assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6 and 0 <= cy - h / 2 + 1e-6 and cy + h / 2 <= 1 + 1e-6
    with pytest.raises(IndexError):
        ds[6]
    a = pair_set(_sources(synth_root), samples_per_epoch=4, seed=5)
    pair, again = a[2], pair_set(_sources(synth_root), samples_per_epoch=4, seed=5)[2]
    for key in ("template", "search", "search_box"):
        assert torch.equal(pair[key], again[key])
    first = pair["search"]
    a.set_epoch(1)
    assert not torch.equal(a[2]["search"], first)
    c = pair_set(_sources(synth_root), samples_per_epoch=4, seed=6)
    assert not torch.equal(c[2]["search"], first)
    seq = _still(tmp_path, np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8),
                 [50.0, 40.0, 32.0, 24.0])
    kw = dict(samples_per_epoch=3, seed=1, center_jitter=0.0, scale_jitter=0.0, gray_prob=0.0, brightness=0.0)
    plain = pair_set([("still", [seq])], flip_prob=0.0, **kw)[0]
    flipped = pair_set([("still", [seq])], flip_prob=1.0, **kw)[0]  # joint, then each crop
    sz = math.ceil(math.sqrt(32 * 24) * 4)
    expected = [127.5 / 256, 127.5 / 256, 32 * 256 / sz / 256, 24 * 256 / sz / 256]
    np.testing.assert_allclose(plain["search_box"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(flipped["search_box"].numpy(), [1 - expected[0]] + expected[1:], atol=1e-6)
    # The joint flip moves the frame's box to W - 1 - x - w, as pytracking's flip does.
    image = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)  # (18,) -> (H 2, W 3, 3)
    out, box = data._flip_frame(image, np.array([0.0, 1.0, 1.0, 1.0]))
    assert out.tolist() == image[:, ::-1].tolist() and box.tolist() == [1.0, 1.0, 1.0, 1.0]
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1, 3.0 + 11.7 + 3.4 = 18.2
    assert data._to_gray(colours).tolist() == [[[76] * 3, [150] * 3, [29] * 3, [18] * 3]]
    seq = _still(tmp_path, np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8),
                 [50.0, 40.0, 32.0, 24.0])
    kw = dict(samples_per_epoch=1, seed=1, center_jitter=0.0, scale_jitter=0.0, brightness=0.0, flip_prob=0.0)
    for gray_prob, grey in [(1.0, True), (0.0, False)]:
        pair = pair_set([("still", [seq])], gray_prob=gray_prob, **kw)[0]
        for key in ("template", "search"):  # undo the normalisation, then compare channels
            rgb = _pixels(pair[key])
            same = np.abs(rgb[..., 0] - rgb[..., 1]).max() < 1e-3 and np.abs(rgb[..., 1] - rgb[..., 2]).max() < 1e-3
            assert same == grey, (key, gray_prob)


def test_pairs_flip_each_crop_on_its_own_as_released(tmp_path):
    """A still frame: R a horizontal ramp, G the target. About half of the pairs have a
    template mirrored against the search crop; each of the three flips (joint, template,
    search) is drawn with p 0.5, and the search box follows the search crop's flips."""
    image = np.zeros((120, 160, 3), np.uint8)
    image[:, :, 0] = (np.arange(160) * 1.5).astype(np.uint8)
    image[50:74, 60:92, 1] = 255
    seq = _still(tmp_path, image, [60.0, 50.0, 32.0, 24.0])
    kw = dict(seed=0, gray_prob=0.0, brightness=0.0, template_size=32, search_size=64)
    ds = pair_set([("ramp", [seq])], samples_per_epoch=400, center_jitter=0.0, scale_jitter=0.0, **kw)
    counts = np.zeros(4, int)  # template mirrored against search; joint, template, search flipped
    for i in range(len(ds)):
        s = ds[i]
        rising_t = bool(s["template"][0, 16, 20] > s["template"][0, 16, 12])  # R rises left to right
        rising_s = bool(s["search"][0, 32, 36] > s["search"][0, 32, 28])
        search_flip = {31.5: False, 32.5: True}[round(float(s["search_box"][0]) * 64, 4)]
        joint = rising_s == search_flip
        counts += [rising_t != rising_s, joint, rising_t == joint, search_flip]
    assert ((160 <= counts) & (counts <= 240)).all(), counts  # 400 draws of p 0.5: sd 10
    ds = pair_set([("ramp", [seq])], samples_per_epoch=20, center_jitter=2.0, scale_jitter=0.2, **kw)
    mirrored_misses = 0
    for i in range(len(ds)):
        s = ds[i]
        target = _pixels(s["search"])[:, :, 1] > 128  # (64, 64)
        cx, cy, w, h = (s["search_box"].numpy() * 64).tolist()
        ys, xs = np.nonzero(target)
        # Released conventions put the box up to about a pixel off the pixels' centroid: the
        # crop centre at (S - 1) / 2 (box_in_crop) and the joint flip's W - 1 (measured 1.45).
        assert abs(xs.mean() + 0.5 - cx) < 2.0 and abs(ys.mean() + 0.5 - cy) < 2.0, i
        assert abs(target.sum() - w * h) < 2 * (w + h), i
        mirrored_misses += abs(xs.mean() + 0.5 - (64 - cx)) > 2.0  # a box that missed a flip
    assert mirrored_misses >= 10


def _video(n, visible, name="v"):
    """A sequence of n frames (never read) with a valid box on each, `visible` as given."""
    return data.Sequence(name, [Path(f"{name}/{k}.jpg") for k in range(n)], np.tile([10.0, 10.0, 8.0, 8.0], (n, 1)),
                         np.asarray(visible, bool))


def test_sampler_frames_sequences_and_padding_as_released():
    ds = pair_set([("v", [_video(30, np.ones(30))])], max_gap=10)
    rng = np.random.default_rng(0)
    pairs = [ds._frames(30, np.arange(30), rng) for _ in range(1000)]
    # search in [t + 1, t + max_gap): max_id is exclusive, as released; t before the last frame
    assert {s - t for t, s in pairs} == set(range(1, 10)) and {t for t, _ in pairs} == set(range(29))
    assert ds._frames(1, np.arange(1), rng) == (0, 0)  # a still image gives both crops
    # Visible 0, 10-13, max_gap 2: from 0 the window must widen twice to reach 10, and each
    # widening redraws t, so t = 0 is rare (91 of 2,000 draws measured; without the redraw a
    # quarter); 13 has no later visible frame and is never kept.
    ds.processing = dataclasses.replace(ds.processing, max_gap=2)
    pairs = [ds._frames(20, np.array([0, 10, 11, 12, 13]), rng) for _ in range(400)]
    firsts = [t for t, _ in pairs]
    assert 1 <= firsts.count(0) <= 60 and 13 not in firsts
    assert {s for t, s in pairs if t == 0} <= {10, 11, 12, 13} and all(s > t for t, s in pairs)
    seqs = [_video(19, np.ones(19), "short"), _video(20, np.arange(20) < 4, "four"),
            _video(20, np.arange(20) < 5, "five"), _video(1, [True], "still"), _video(1, [False], "hidden")]
    ds = pair_set([("v", seqs)])
    assert [s.name for s, _ in ds.sources[0][1]] == ["five", "still"]
    with pytest.raises(ValueError, match=r"videos of 20 or more frames with 5 or more visible targets.*none in: \['v'\]"):
        pair_set([("v", seqs[:2])])
    with pytest.raises(ValueError, match="none in: no sources"):
        pair_set([])
    # The released check reads the resized padding mask at every 16th pixel (the backbone's grid); here
    # crops of 32 pixels resized to 32 (cells at 0 and 16).
    assert not data._padding_only((50, 50), (-16, 0, 16, 32), 32)  # crop pixel 16 is image column 0
    assert data._padding_only((50, 50), (-31, 0, 1, 32), 32)  # only crop pixel 31 shows the image
    assert data._padding_only((50, 50), (-40, 0, -8, 32), 32)
    assert not data._padding_only((50, 50), (34, 0, 66, 32), 32)
    # The released right padding is one too large: column 49, the crop's first, is dropped.
    assert data._padding_only((50, 50), (49, 0, 81, 32), 32)
    assert data._padding_only((50, 50), (0, 49, 32, 81), 32)


def test_pairs_keep_outside_targets_jitter_and_weigh_sources(tmp_path):
    seq = _still(tmp_path, np.full((200, 200, 3), 90, np.uint8), [96.0, 96.0, 8.0, 8.0])
    ds = pair_set([("s", [seq])], samples_per_epoch=40, seed=0, center_jitter=12.0, scale_jitter=0.0,
                          template_size=32, search_size=64)
    boxes = np.stack([ds[i]["search_box"].numpy() for i in range(len(ds))])
    xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    outside = (boxes[:, 2] == 0) | (boxes[:, 3] == 0)
    assert 5 <= outside.sum() < 40  # measured 16 of 40
    assert np.isin(xyxy[outside & (boxes[:, 2] == 0)][:, [0, 2]], [0.0, 1.0]).all()
    assert ((xyxy >= 0) & (xyxy <= 1)).all()
    # Released jitter: size * exp(N(0, scale)), centre within +-center/2 * sqrt(jittered area).
    rng = np.random.default_rng(0)
    box = np.array([100.0, 50.0, 40.0, 10.0])  # centre (120, 55), sqrt(area) 20
    for center, scale in [(3.5, 0.5), (1.0, 0.25)]:
        out = np.array([data.jitter_box(box, rng, scale, center) for _ in range(2000)])
        size = out[:, 2:]
        offset = np.abs(out[:, :2] + size / 2 - [120.0, 55.0]) / np.sqrt(size.prod(1, keepdims=True))
        assert offset.max() <= center / 2 + 1e-9 and offset.max() > 0.9 * center / 2
        # 4,000 log-sizes: the sample std's standard error is about scale / sqrt(2 * 4000)
        # = 1.1 % of scale, so 5 % is over 4 standard errors (and the draws are seeded)
        assert abs(np.log(size / box[2:]).std() - scale) < 0.05 * scale
    np.testing.assert_allclose(data.jitter_box(box, rng, 0.0, 0.0), box)
    with pytest.raises(ValueError, match="jitter must be >= 0"):
        pair_set([("v", [data.Sequence("v", [Path("x.png")], box[None], np.ones(1, bool))])],
                         center_jitter=-1.0)
    seqs = {name: [_still(tmp_path, np.full((64, 64, 3), value, np.uint8), [20.0, 20.0, 16.0, 16.0], name)]
            for name, value in [("dark", 0), ("bright", 255)]}
    kw = dict(samples_per_epoch=8, seed=0, gray_prob=0.0, brightness=0.0, template_size=32, search_size=64)
    only_bright = pair_set([("dark", seqs["dark"]), ("bright", seqs["bright"])], weights=[0, 1], **kw)
    assert all(only_bright[i]["template"][0].max() > 2.0 for i in range(8))  # (1 - 0.485) / 0.229 = 2.25
    mixed = pair_set([("dark", seqs["dark"]), ("bright", seqs["bright"])], **kw)
    assert len({bool(mixed[i]["template"][0].max() > 2.0) for i in range(8)}) == 2
    with pytest.raises(ValueError, match="weights"):
        pair_set([("dark", seqs["dark"])], weights=[1, 1])


