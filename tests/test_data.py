"""Tests for data.py and synth.py: the released crop/resize arithmetic, image decoding,
every dataset reader (valid and malformed layouts written here), the procedural set and
PairDataset."""
import gc
import hashlib
import json
import math
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
    return reference_resize(padded, out_size, out_size) if sz <= 40 else data.resize_linear(padded, out_size, out_size)


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


def test_resize_downscale_2x_is_block_average():
    src = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    out = data.resize_linear(src, 2, 2)
    blocks = src.astype(int).reshape(2, 2, 2, 2, 3).transpose(0, 2, 1, 3, 4).reshape(2, 2, 4, 3)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, (blocks.sum(axis=2) + 2) // 4)


def test_resize_upscale_hand_computed():
    src = np.repeat(np.array([[0, 100], [200, 40]], np.uint8)[:, :, None], 3, axis=2)
    out = data.resize_linear(src, 4, 4)[:, :, 0]
    # Corners clamp to the source corners; out[0,1] = 0.75*0 + 0.25*100 (top row clamps);
    # out[1,1] = 0.75*25 + 0.25*(0.75*200 + 0.25*40) = 58.75 -> 59.
    assert out[0, 0] == 0 and out[0, 3] == 100 and out[3, 0] == 200 and out[3, 3] == 40
    assert out[0, 1] == 25 and out[0, 2] == 75 and out[1, 1] == 59


def test_resize_ramp_halves_exactly():
    row = (np.arange(8) * 10).astype(np.uint8)
    src = np.repeat(np.repeat(row[None, :, None], 2, axis=0), 3, axis=2)
    out = data.resize_linear(src, 4, 1)
    np.testing.assert_array_equal(out[0, :, 0], [5, 25, 45, 65])


def test_resize_constant_and_identity():
    rng = np.random.default_rng(0)
    for size in [(7, 5), (256, 256), (33, 70)]:
        const = np.full((19, 23, 3), 173, np.uint8)
        assert (data.resize_linear(const, *size) == 173).all()
    img = rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.resize_linear(img, 9, 13), img)


@pytest.mark.parametrize("src_hw,out_wh", [((9, 11), (6, 5)), ((5, 6), (13, 7)), ((16, 16), (16, 8)),
                                           ((12, 7), (3, 9)), ((21, 21), (16, 16))])
def test_resize_matches_pixel_loop_reference(src_hw, out_wh):
    img = np.random.default_rng(1).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.resize_linear(img, *out_wh), reference_resize(img, *out_wh))


def test_vector_and_scalar_paths_differ_where_opencv_does():
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


# ----------------------------------------------------------------------------- crop


def test_crop_right_bottom_edge_drops_last_pixel():
    img = ramp_image()
    crop, factor, corner = data.crop_resize(img, (6, 6, 4, 4), 1.0, 4)
    assert crop.shape == (4, 4, 3) and factor == 1.0 and corner == (6, 6, 10, 10)
    # Released off-by-one: right/bottom pad is 1 though the crop ends exactly at the edge.
    np.testing.assert_array_equal(crop[:3, :3, 0], [[66, 67, 68], [76, 77, 78], [86, 87, 88]])
    assert (crop[3] == 0).all() and (crop[:, 3] == 0).all()


def test_crop_left_top_padding():
    img = ramp_image()
    crop, _, corner = data.crop_resize(img, (-1, -1, 4, 4), 1.0, 4)
    assert corner == (-1, -1, 3, 3)
    assert (crop[0] == 0).all() and (crop[:, 0] == 0).all()
    np.testing.assert_array_equal(crop[1:, 1:, 0], [[0, 1, 2], [10, 11, 12], [20, 21, 22]])
    np.testing.assert_array_equal(crop[1:, 1:, 2], [[2, 3, 4], [12, 13, 14], [22, 23, 24]])


def test_crop_corner_uses_half_to_even_rounding():
    img = ramp_image(20, 20)
    assert data.crop_resize(img, (0.5, 0.5, 4, 4), 1.0, 4)[2][:2] == (0, 0)   # round(0.5) = 0
    assert data.crop_resize(img, (1.5, 2.5, 4, 4), 1.0, 4)[2][:2] == (2, 2)   # round(1.5) = round(2.5) = 2
    crop, factor, corner = data.crop_resize(img, (3, 4, 2, 8), 2.0, 16)
    assert corner == (0, 4, 8, 12) and factor == 2.0 and crop.shape == (16, 16, 3)


MATERIALISED_CASES = [((2, 3, 5, 4), 2.0, 16), ((-3, 5, 6, 9), 2.0, 12), ((10, 12, 7, 7), 4.0, 32),
                      ((40, -20, 30, 25), 4.0, 64), ((0, 0, 3, 3), 4.0, 16)]


def random_image(h=24, w=30, seed=2):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("box,factor,out", MATERIALISED_CASES)
def test_crop_matches_materialised_released_crop(box, factor, out):
    img = random_image()
    crop, factor_out, _ = data.crop_resize(img, box, factor, out)
    assert crop.shape == (out, out, 3)
    assert factor_out == out / math.ceil(math.sqrt(box[2] * box[3]) * factor)
    np.testing.assert_array_equal(crop, released_crop(img, box, factor, out))


def test_crop_rejects_bad_boxes():
    img = ramp_image()
    for box in [(0, 0, 0, 4), (0, 0, -1, 4), (np.nan, 0, 4, 4)]:
        with pytest.raises(ValueError, match="box"):
            data.crop_resize(img, box, 2.0, 8)
    with pytest.raises(ValueError, match="smaller than 1 pixel"):
        data.crop_resize(img, (0, 0, 4, 4), 0.0, 8)
    with pytest.raises(ValueError, match="uint8"):
        data.crop_resize(img.astype(np.float32), (0, 0, 4, 4), 2.0, 8)


def test_box_in_crop_centres_the_crop_box():
    box = np.array([100.0, 50.0, 40.0, 20.0])
    out = data.box_in_crop(box, box[:2] + box[2:] / 2, 2.0, 256)
    np.testing.assert_allclose(out, [127.5 - 40, 127.5 - 20, 80, 40])


def test_normalize_values_and_shape():
    crop = np.zeros((4, 5, 3), np.uint8)
    crop[..., 0] = 255
    t = data.normalize(crop)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert torch.allclose(t[0], torch.full((4, 5), (1 - 0.485) / 0.229))
    assert torch.allclose(t[1], torch.full((4, 5), -0.456 / 0.224))
    bright = data.normalize(np.full((2, 2, 3), 200, np.uint8), brightness=1.5)
    assert torch.allclose(bright[2], torch.full((2, 2), (1 - 0.406) / 0.225))  # clipped at 1


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


def test_crop_resize_torch_equals_numpy_on_the_crop_cases():
    assert_same_crops(crop_cases())
    assert_same_crops(crop_cases()[:6], as_tensor=True)  # uint8 tensors in, too


def test_crop_resize_torch_whole_batch_in_one_step(monkeypatch):
    # The CPU resamples search crops one at a time (_crops_per_step); an accelerator takes the
    # whole batch in one step, with mixed image sizes in one flat buffer: the same crops.
    monkeypatch.setattr(fast, "_crops_per_step", lambda count, out_size, device: count)
    assert_same_crops(crop_cases())


def test_crop_resize_torch_single_crops_and_views():
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


def test_crop_resize_torch_random_batches_of_mixed_sizes():
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


def test_vertical_pass_torch_equals_numpy_on_any_int32():
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


def test_crop_resize_torch_rejects_what_crop_resize_rejects():
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


def test_normalize_torch_equals_stacked_normalize():
    crops = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    crops[0, 0, 0] = torch.tensor([0, 128, 255])
    got = fast.normalize_torch(crops)
    assert got.shape == (3, 3, 16, 16) and got.dtype == torch.float32
    assert torch.equal(got, torch.stack([data.normalize(c.numpy()) for c in crops]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_resize_and_normalize_torch_on_cuda_equal_cpu():
    assert_same_crops(crop_cases(), device="cuda")
    frame = random_image(360, 640, seed=3)
    boxes = [(300, 150, 40, 30), (600, 330, 60, 40)]
    crops, _, _ = fast.crop_resize_torch([frame, torch.from_numpy(frame).cuda()], boxes, 4.0, 256, "cuda")
    assert crops.is_cuda
    assert torch.equal(fast.normalize_torch(crops).cpu(), fast.normalize_torch(crops.cpu()))


# ----------------------------------------------------------------------------- images


def test_read_image_converts_modes(tmp_path):
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


def test_read_image_errors_name_the_path(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        data.read_image(bad)
    with pytest.raises(ValueError, match="missing.png"):
        data.read_image(tmp_path / "missing.png")


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
def test_prefetch_images_yields_in_order(tmp_path, decode):
    paths = prefetch_paths(tmp_path, 7)
    got = list(fast.prefetch_images(paths, depth=2, decode=decode))
    assert len(got) == 7
    for path, image in zip(paths, got):
        np.testing.assert_array_equal(image, data.read_image(path))
    assert list(fast.prefetch_images([], decode=decode)) == []


@pytest.mark.parametrize("decode", [True, False])
def test_prefetch_images_raises_at_the_broken_file(tmp_path, decode):
    paths = prefetch_paths(tmp_path, 6, broken=3)
    images = fast.prefetch_images(paths, depth=4, decode=decode)
    first = next(images)  # starts the thread
    time.sleep(0.3)  # it has decoded ahead up to the broken file by now
    assert first.shape == (8, 8, 3) and next(images).shape == (9, 9, 3) and next(images).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="003.jpg"):
        next(images)
    with pytest.raises(StopIteration):
        next(images)


def test_prefetch_images_reports_a_missing_file_in_its_turn(tmp_path):
    paths = prefetch_paths(tmp_path, 3)
    paths[1] = tmp_path / "gone.jpg"
    images = fast.prefetch_images(paths, decode=False)  # only the bytes are read ahead
    assert next(images).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="cannot read image .*gone.jpg"):
        next(images)


def test_frames_are_decoded_ahead_only_beside_a_free_core(monkeypatch):
    monkeypatch.setattr(fast, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not fast.decode_ahead("cpu")  # the forward uses both cores
    assert fast.decode_ahead("cuda")  # the CPU waits on the GPU anyway
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert fast.decode_ahead("cpu")


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


def test_read_folder_single_and_nested(tmp_path):
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


def test_read_folder_malformed(tmp_path):
    save_jpg(tmp_path / "s" / "1.jpg")
    save_jpg(tmp_path / "s" / "2.jpg")
    write(tmp_path / "s" / "groundtruth.txt", "1,2,3,4\n1,2,3\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt, line 2: expected 4"):
        data.read_folder(tmp_path / "s")
    write(tmp_path / "s" / "groundtruth.txt", "1,2,3,4\n1,2,x,4\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt, line 2: non-numeric"):
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


def test_frames_sort_in_natural_order(tmp_path):
    names = ["frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "frame_11.jpg"]
    for name in names:
        save_jpg(tmp_path / "a" / name)
    assert [p.name for p in data.list_frames(tmp_path / "a")] == ["frame_1.jpg", "frame_2.jpg",
                                                                  "frame_10.jpg", "frame_11.jpg"]
    for name in ["10.jpg", "9.jpg", "0.jpg"]:  # TrackingNet
        save_jpg(tmp_path / "b" / name)
    assert [p.name for p in data.list_frames(tmp_path / "b")] == ["0.jpg", "9.jpg", "10.jpg"]


def test_folder_of_sequences_skips_folders_without_frames_and_refuses_twins(tmp_path):
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


def test_read_got10k(tmp_path):
    _got10k_layout(tmp_path)
    seqs = data.read_got10k(tmp_path, "train")
    assert [s.name for s in seqs] == ["GOT-10k_Train_000001", "GOT-10k_Train_000002"]
    assert seqs[0].gt.shape == (3, 4) and seqs[0].visible.tolist() == [True, False, False]
    assert seqs[1].visible.tolist() == [True, True] and len(seqs[1].frames) == 2
    write(tmp_path / "vot_overlap.txt", "GOT-10k_Train_000001\n")
    kept = data.read_got10k(tmp_path, "train", exclude=tmp_path / "vot_overlap.txt")
    assert [s.name for s in kept] == ["GOT-10k_Train_000002"]
    assert len(data.read_dataset("got10k", tmp_path, "train")) == 2


def test_read_got10k_malformed(tmp_path):
    _got10k_layout(tmp_path)
    seq = tmp_path / "train" / "GOT-10k_Train_000002"
    write(seq / "groundtruth.txt", "1,1,10,10\n1,1,10,10,5\n")
    with pytest.raises(ValueError, match=r"GOT-10k_Train_000002.groundtruth\.txt, line 2"):
        data.read_got10k(tmp_path, "train")
    write(seq / "groundtruth.txt", "1,1,10,10\n1,1,10,10\n1,1,10,10\n")
    with pytest.raises(ValueError, match="3 boxes but only 2 frames"):
        data.read_got10k(tmp_path, "train")
    write(seq / "groundtruth.txt", "1,1,10,10\n1,1,10,10\n")
    write(seq / "absence.label", "0\n")
    with pytest.raises(ValueError, match=r"absence\.label: 1 labels"):
        data.read_got10k(tmp_path, "train")
    write(seq / "absence.label", "0\nz\n")
    with pytest.raises(ValueError, match=r"absence\.label, line 2"):
        data.read_got10k(tmp_path, "train")


def _lasot_sequence(root: Path, name: str, n=3, occ="0,1,0", oov="0,0,1"):
    d = root / name.rsplit("-", 1)[0] / name
    for k in range(n):
        save_jpg(d / "img" / f"{k + 1:08d}.jpg")
    write(d / "groundtruth.txt", "".join(f"{k},{k},5,6\n" for k in range(n)))
    write(d / "full_occlusion.txt", occ + "\n")
    write(d / "out_of_view.txt", oov + "\n")
    return d


def test_lasot_test_list_is_the_standard_one():
    names = data.lasot_test_names()
    assert len(names) == 280 and len(set(names)) == 280
    assert len({n.rsplit("-", 1)[0] for n in names}) == 70
    assert {"airplane-1", "zebra-17", "volleyball-19", "gecko-16"} <= set(names)


def test_read_lasot(tmp_path):
    _lasot_sequence(tmp_path, "airplane-1")   # a test video: excluded from train
    _lasot_sequence(tmp_path, "airplane-2")
    (seq,) = data.read_lasot(tmp_path, "train")
    assert seq.name == "airplane-2" and seq.visible.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="279 LaSOT test videos missing"):
        data.read_lasot(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        data.read_lasot(tmp_path, "val")


def test_read_lasot_malformed(tmp_path):
    d = _lasot_sequence(tmp_path, "bear-1", occ="0,1")
    with pytest.raises(ValueError, match=r"full_occlusion\.txt: 2 labels but the ground truth has 3"):
        data.read_lasot(tmp_path, "train")
    write(d / "full_occlusion.txt", "0,0,0\n")
    write(d / "groundtruth.txt", "1,2,3,4\n1,2,3,4\nnope\n")
    with pytest.raises(ValueError, match=r"bear-1.groundtruth\.txt, line 3"):
        data.read_lasot(tmp_path, "train")


def test_read_trackingnet(tmp_path):
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
    with pytest.raises(ValueError, match=r"vidB_1\.txt, line 1"):
        data.read_trackingnet(tmp_path, "test")
    with pytest.raises(ValueError, match="no TrackingNet chunk"):
        data.read_trackingnet(tmp_path / "nowhere", "train")


def test_read_otb(tmp_path):
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


def test_read_coco(tmp_path):
    meta = {"images": [{"id": 7, "file_name": "000007.jpg"}],
            "annotations": [{"id": 1, "image_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 1},
                            {"id": 3, "image_id": 7, "bbox": [1, 2, 0, 4], "iscrowd": 0}]}
    write(tmp_path / "annotations" / "instances_train2017.json", json.dumps(meta))
    (seq,) = data.read_dataset("coco", tmp_path, None)
    assert seq.name == "7_1" and seq.frames == [tmp_path / "train2017" / "000007.jpg"]
    np.testing.assert_array_equal(seq.gt, [[1, 2, 3, 4]])
    write(tmp_path / "annotations" / "instances_train2017.json", '{"images": [],\n "annotations": [,]}')
    with pytest.raises(ValueError, match=r"instances_train2017\.json, line 2"):
        data.read_coco(tmp_path)
    meta["annotations"][0]["bbox"] = [1, 2]
    write(tmp_path / "annotations" / "instances_train2017.json", json.dumps(meta))
    with pytest.raises(ValueError, match="annotation #0"):
        data.read_coco(tmp_path)


def test_read_dataset_unknown():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.read_dataset("imagenet", ".", "train")


# ----------------------------------------------------------------------------- synth


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth.synth(root, sequences=4, frames=15, seed=3, size=(128, 96), val_fraction=0.25, progress=False)
    return root


def test_synth_layout_and_labels(synth_root):
    train, val = data.read_got10k(synth_root, "train"), data.read_got10k(synth_root, "val")
    assert len(train) == 3 and len(val) == 1
    for seq in train + val:
        assert len(seq.frames) == 15 and seq.gt.shape == (15, 4)
        assert data.read_image(seq.frames[0]).shape == (96, 128, 3)
        absent = np.loadtxt(seq.frames[0].parent / "absence.label", dtype=int)
        np.testing.assert_array_equal(seq.visible, (absent == 0) & (seq.gt[:, 2] > 0) & (seq.gt[:, 3] > 0))
        vis = seq.gt[seq.visible]
        assert (vis[:, :2] >= 0).all() and (vis[:, 0] + vis[:, 2] <= 128).all() and (vis[:, 1] + vis[:, 3] <= 96).all()
        assert seq.visible.any()


def test_synth_is_deterministic(synth_root, tmp_path):
    synth.synth(tmp_path, sequences=4, frames=15, seed=3, size=(128, 96), val_fraction=0.25, progress=False,
                workers=2)  # the pool writes what one process writes (synth_root: workers=1)
    for rel in ["train/list.txt", "val/list.txt", "train/synth_00001/groundtruth.txt",
                "train/synth_00001/absence.label", "train/synth_00000/00000001.jpg",
                "val/synth_00003/00000015.jpg"]:
        assert (tmp_path / rel).read_bytes() == (synth_root / rel).read_bytes(), rel
    other = tmp_path / "other"
    synth.synth(other, sequences=1, frames=2, seed=4, size=(128, 96), val_fraction=0, progress=False)
    first = "train/synth_00000/00000001.jpg"
    assert (other / first).read_bytes() != (synth_root / first).read_bytes()


# Recorded with the generator as it stood in data.py, before it moved to synth.py: the
# label files written, and the rendered frames (pixels before JPEG encoding, whose bytes
# are up to Pillow's libjpeg) with each sequence's JPEG quality, boxes and absence flags.
PINNED_LABELS = "8b9db81d48ce5dc9e863908f0187b7543ed34ec098b05ffb9b78bcebb594b4ab"
PINNED_FRAMES = ["80e96648c12f288818c342ebb2f9ad077a2d5c3202f181af0c28501d9231cebe",
                 "bcdbdb36d8ac77e9c3bcf74e63c077f9b0809dc5e1bbab413ffaed8c9c14b23c"]


def test_synth_bytes_match_the_pinned_generator(tmp_path):
    synth.synth(tmp_path, sequences=2, frames=4, seed=7, size=(128, 96), val_fraction=0.5, progress=False,
                mix={"objects": 1})  # the one kind that existed then
    labels = hashlib.sha256()
    for p in sorted(tmp_path.rglob("*")):
        if p.is_file() and p.suffix != ".jpg":
            labels.update(str(p.relative_to(tmp_path)).encode() + p.read_bytes())
    assert labels.hexdigest() == PINNED_LABELS
    for index, want in enumerate(PINNED_FRAMES):
        rng = np.random.default_rng([7, index])  # as synth._write_one seeds sequence `index`
        frames = hashlib.sha256(str(int(rng.integers(75, 96))).encode())  # the JPEG quality draw
        for frame, box, absent in synth._render_sequence(rng, 4, 128, 96):
            frames.update(frame.tobytes())
            frames.update(repr((tuple(int(v) for v in box), bool(absent))).encode())
        assert frames.hexdigest() == want, index


def test_cli_help_and_show(synth_root):
    out = subprocess.run([sys.executable, str(Path(synth.__file__)), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--sequences" in out.stdout
    out = subprocess.run([sys.executable, str(Path(data.__file__)), "show", "got10k", str(synth_root), "val"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "1 sequences, 15 frames" in out.stdout
    out = subprocess.run([sys.executable, str(Path(synth.__file__)), "--out", str(synth_root / "x"),
                          "--workers", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "--workers 0" in out.stderr and not (synth_root / "x").exists()


# ----------------------------------------------------------------------------- synth: natural scenes


def _spectrum_slope(field: np.ndarray) -> float:
    """Least-squares slope of log radial amplitude against log frequency, 0.02-0.3 cycles/px."""
    amp = np.abs(np.fft.rfft2(field))
    f = np.hypot(np.fft.fftfreq(field.shape[0])[:, None], np.fft.rfftfreq(field.shape[1])[None, :])
    keep = (f > 0.02) & (f < 0.3)
    return float(np.polyfit(np.log(f[keep]), np.log(amp[keep]), 1)[0])


@pytest.mark.parametrize("slope", [0.8, 1.0, 1.6])
def test_spectral_noise_has_the_asked_1_over_f_slope(slope):
    field = synth._spectral_noise(np.random.default_rng(0), 256, 320, slope)
    assert field.shape == (256, 320) and field.dtype == np.float32
    assert abs(float(field.mean())) < 1e-5 and abs(float(field.std()) - 1) < 1e-4
    # The fit over ~20k random-phase coefficients lands within 0.024 of the slope (seeds
    # 0-4, the same for every slope); 0.05 is twice that and still tells 0.8 from 1.0.
    assert abs(_spectrum_slope(field) + slope) < 0.05
    np.testing.assert_array_equal(field, synth._spectral_noise(np.random.default_rng(0), 256, 320, slope))


def test_natural_scene_range_determinism_and_variety():
    scenes = [synth._natural_scene(np.random.default_rng(s), 96, 128) for s in (0, 0, 1)]
    for scene in scenes:
        assert scene.shape == (96, 128, 3) and scene.dtype == np.float32
        assert scene.min() >= 0 and scene.max() <= 255 and scene.std() > 5  # not a flat field
    np.testing.assert_array_equal(scenes[0], scenes[1])
    assert np.abs(scenes[0] - scenes[2]).mean() > 10
    # The luminance spectrum falls as a power of f, as a photograph's does (slope about -1;
    # occluding flat leaves and out-of-focus scenes steepen it): measured -1.15 to -2.74
    # over seeds 0-7 at this size, -1.15 / -1.77 / -1.40 for the three tested here. White
    # noise gives 0 and a flat field no slope at all.
    for s in range(3):
        grey = synth._natural_scene(np.random.default_rng(s), 240, 320).mean(axis=2)
        assert -3.0 < _spectrum_slope(grey - grey.mean()) < -0.8, s


def test_cut_sprite_is_a_soft_edged_piece_of_the_scene():
    scene = synth._natural_scene(np.random.default_rng(2), 64, 64)
    for seed in range(6):
        rgba = synth._cut_sprite(np.random.default_rng(seed), scene, 30)
        assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4
        assert 4 <= rgba.shape[0] <= 63 and 4 <= rgba.shape[1] <= 63
        alpha = rgba[:, :, 3]
        assert alpha.max() == 255 and alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()
        # The colours are the scene's own (found at some offset), with no outline added.
        opaque = alpha == 255
        hits = [(y, x) for y in range(64 - rgba.shape[0] + 1) for x in range(64 - rgba.shape[1] + 1)
                if np.array_equal(scene[y:y + rgba.shape[0], x:x + rgba.shape[1]].astype(np.uint8)[opaque],
                                  rgba[:, :, :3][opaque])]
        assert hits, seed


def test_pan_zoom_stays_inside_the_scene():
    view = synth._pan_zoom(np.random.default_rng(4), 300, 160, 120, 352, 264)
    half_w, half_h = 160 * view[:, 2] / 2, 120 * view[:, 2] / 2
    assert (view[:, 0] - half_w >= 0).all() and (view[:, 0] + half_w <= 352 + 1e-9).all()
    assert (view[:, 1] - half_h >= 0).all() and (view[:, 1] + half_h <= 264 + 1e-9).all()
    assert (view[:, 2] >= 0.6 - 1e-9).all() and (view[:, 2] <= 2.2 * 0.95 + 1e-9).all()


def test_absence_rule_of_finish():
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


@pytest.mark.parametrize("kind", sorted(synth.KINDS))
def test_every_kind_is_deterministic_with_boxes_inside_the_frame(kind):
    def run(seed):
        return list(synth.KINDS[kind](np.random.default_rng([seed, 0]), 20, 128, 96))
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


def test_region_boxes_follow_the_region_through_pans_and_zooms():
    """The box of every frame holds the first frame's box content (resized): correlation
    of the two crops, against the same for a box shifted by half its size."""
    from PIL import Image as PILImage
    scores, shifted = [], []
    for seed in range(3):
        frames = list(synth._render_region(np.random.default_rng([seed, 9]), 40, 160, 120))
        def crop(frame, box, dx=0.0):
            x, y, w, h = box
            x = float(np.clip(x + dx * w, 0, 160 - w))
            return np.asarray(PILImage.fromarray(frame).resize((24, 24), PILImage.BILINEAR, (x, y, x + w, y + h)),
                              np.float32).ravel()
        ref = crop(*frames[0][:2])
        for frame, box, absent in frames[10::10]:
            if absent or box[2] < 12 or box[3] < 12 or box[0] <= 0 or box[0] + box[2] >= 160:
                continue
            scores.append(np.corrcoef(ref, crop(frame, box))[0, 1])
            shifted.append(np.corrcoef(ref, crop(frame, box, 0.5))[0, 1])
    assert len(scores) >= 3
    # Measured (seeds 0-2): median 0.94 on the box, -0.05 half a box away.
    assert np.median(scores) > 0.8 and np.median(scores) > np.median(shifted) + 0.2


def test_mix_keeps_objects_sequences_and_checks_its_input(tmp_path):
    mixed, plain = tmp_path / "mixed", tmp_path / "plain"
    mix = {"objects": 1.0, "region": 1.0}
    synth.synth(mixed, sequences=6, frames=3, seed=2, size=(128, 96), val_fraction=0, progress=False, mix=mix)
    synth.synth(plain, sequences=6, frames=3, seed=2, size=(128, 96), val_fraction=0, progress=False,
                mix={"objects": 1.0})
    kinds = [synth.kind_of(2, i, mix) for i in range(6)]
    assert set(kinds) == {"objects", "region"}  # both drawn (fixed by the seed)
    for i, kind in enumerate(kinds):
        same = (mixed / f"train/synth_{i:05d}/00000002.jpg").read_bytes() == \
            (plain / f"train/synth_{i:05d}/00000002.jpg").read_bytes()
        assert same == (kind == "objects"), i
    assert synth.parse_mix("objects:0.4, patch:0.6") == {"objects": 0.4, "patch": 0.6}
    assert synth.parse_mix("region") == {"region": 1.0}
    for bad in ("objects:x", "cats:1", "objects:-1", "objects:0"):
        with pytest.raises(ValueError, match="mix"):
            synth.parse_mix(bad)
    out = subprocess.run([sys.executable, str(Path(synth.__file__)), "--out", str(tmp_path / "x"),
                          "--mix", "cats:1"], capture_output=True, text=True)
    assert out.returncode == 2 and "cats" in out.stderr and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- pairs


def _sources(synth_root):
    return [("synth", data.read_got10k(synth_root, "train"))]


def test_pairs_shapes_and_box_range(synth_root):
    ds = data.PairDataset(_sources(synth_root), samples_per_epoch=6, seed=0)
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


def test_pairs_deterministic_per_seed_epoch_index(synth_root):
    a = data.PairDataset(_sources(synth_root), samples_per_epoch=4, seed=5)
    b = data.PairDataset(_sources(synth_root), samples_per_epoch=4, seed=5)
    for key in ("template", "search", "search_box"):
        assert torch.equal(a[2][key], b[2][key])
    first = a[2]["search"]
    a.set_epoch(1)
    assert not torch.equal(a[2]["search"], first)
    c = data.PairDataset(_sources(synth_root), samples_per_epoch=4, seed=6)
    assert not torch.equal(c[2]["search"], first)


def test_pairs_zero_jitter_centres_box_and_flip_mirrors(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "still.png")
    seq = data.Sequence("still", [tmp_path / "still.png"], np.array([[50.0, 40.0, 32.0, 24.0]]), np.ones(1, bool))
    kw = dict(samples_per_epoch=3, seed=1, center_jitter=0.0, scale_jitter=0.0, gray_prob=0.0, brightness=0.0)
    plain = data.PairDataset([("still", [seq])], flip_prob=0.0, **kw)[0]
    flipped = data.PairDataset([("still", [seq])], flip_prob=1.0, **kw)[0]
    sz = math.ceil(math.sqrt(32 * 24) * 4)
    expected = [127.5 / 256, 127.5 / 256, 32 * 256 / sz / 256, 24 * 256 / sz / 256]
    np.testing.assert_allclose(plain["search_box"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(flipped["search_box"].numpy(), [1 - expected[0]] + expected[1:], atol=1e-6)
    assert torch.equal(flipped["search"], plain["search"].flip(-1))
    assert torch.equal(flipped["template"], plain["template"].flip(-1))


def test_grayscale_augmentation_is_bt601_luma_in_every_channel(tmp_path):
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1, 3.0 + 11.7 + 3.4 = 18.2
    assert data._to_gray(colours).tolist() == [[[76] * 3, [150] * 3, [29] * 3, [18] * 3]]
    img = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "still.png")
    seq = data.Sequence("still", [tmp_path / "still.png"], np.array([[50.0, 40.0, 32.0, 24.0]]), np.ones(1, bool))
    kw = dict(samples_per_epoch=1, seed=1, center_jitter=0.0, scale_jitter=0.0, brightness=0.0, flip_prob=0.0)
    for gray_prob, grey in [(1.0, True), (0.0, False)]:
        pair = data.PairDataset([("still", [seq])], gray_prob=gray_prob, **kw)[0]
        for key in ("template", "search"):  # undo the normalisation, then compare channels
            mean, std = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(data.IMAGENET_STD).view(3, 1, 1)
            rgb = (pair[key] * std + mean) * 255  # (3, S, S) back to 0..255
            same = (rgb[0] - rgb[1]).abs().max() < 1e-3 and (rgb[1] - rgb[2]).abs().max() < 1e-3
            assert same == grey, (key, gray_prob)


def test_jitter_box_bounds():
    """Released jitter: size * exp(N(0, scale)), centre within +-center/2 * sqrt(jittered area)."""
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
    same = data.jitter_box(box, rng, 0.0, 0.0)
    np.testing.assert_allclose(same, box)
    with pytest.raises(ValueError, match="jitter must be >= 0"):
        data.PairDataset([("v", [data.Sequence("v", [Path("x.png")], box[None], np.ones(1, bool))])],
                         center_jitter=-1.0)


def test_paste_patch_closed_form():
    image = np.zeros((20, 30, 3), np.uint8)
    patch = np.full((4, 6, 3), 200, np.uint8)
    out = data.paste_patch(image, patch, (5, 4, 10, 8))
    assert not image.any()  # the input is left alone
    # Inside the ellipse's flat core the patch replaces the image; the box's corners lie
    # outside the ellipse and every pixel outside the box is untouched.
    assert (out[8, 10] == 200).all() and (out[7:9, 9:11] == 200).all()
    assert not out[4, 5].any() and not out[11, 14].any()
    outside = np.ones((20, 30), bool)
    outside[4:12, 5:15] = False
    assert not out[outside].any()
    alpha = data._ellipse_alpha(10, 8)
    assert alpha.min() == 0.0 and alpha.max() == 1.0 and alpha.shape == (8, 10)
    np.testing.assert_allclose(alpha, alpha[::-1, ::-1])  # symmetric about the box centre
    edge = data.paste_patch(image, patch, (25, -3, 10, 8))  # hangs off the right and top
    assert (edge[1, 29] == 200).all() and not edge[:, :25].any()
    assert not data.paste_patch(image, patch, (40, 30, 5, 5)).any()  # wholly outside


def _blob_scene(tmp_path, name, colour):
    """A 200 x 200 grey frame holding one 20 x 20 square of `colour` at (90, 90)."""
    img = np.full((200, 200, 3), 100, np.uint8)
    img[90:110, 90:110] = colour
    Image.fromarray(img).save(tmp_path / f"{name}.png")
    return data.Sequence(name, [tmp_path / f"{name}.png"], np.array([[90.0, 90.0, 20.0, 20.0]]), np.ones(1, bool))


def test_distractor_pairs_put_the_lookalike_opposite_the_target(tmp_path):
    seqs = [_blob_scene(tmp_path, "red", (230, 20, 20)), _blob_scene(tmp_path, "blue", (20, 20, 230))]
    kw = dict(samples_per_epoch=24, seed=3, center_jitter=0.0, scale_jitter=0.0, gray_prob=0.0, flip_prob=0.0,
              brightness=0.0)
    ds = data.PairDataset([("blobs", seqs)], distractor_prob=1.0, **kw)
    mean = torch.tensor(data.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(data.IMAGENET_STD)[:, None, None]
    side = 20 * 256 / 80  # the target's side in the crop: a 4 x 20 px region resized to 256
    directions, look_alike_colours = set(), set()
    for i in range(len(ds)):
        s = ds[i]
        crop = ((s["search"] * std + mean) * 255).permute(1, 2, 0).numpy()  # (256, 256, 3)
        colour = ((s["template"] * std + mean) * 255)[:, 64, 64].numpy()  # the target's colour
        cx, cy, w, h = (s["search_box"].numpy() * 256).tolist()
        assert w == pytest.approx(side, abs=0.01) and h == pytest.approx(side, abs=0.01)
        assert np.abs(crop[int(cy), int(cx)] - colour).max() < 3  # the label is on the moved target
        # Saturated pixels are the two pastes; the cover of the old place mixes grey and colour.
        pasted = np.ptp(crop, axis=-1) > 120
        ys, xs = np.nonzero(pasted)
        in_box = (np.abs(xs + 0.5 - cx) < w / 2 + 2) & (np.abs(ys + 0.5 - cy) < h / 2 + 2)
        assert in_box.sum() > 0.5 * side ** 2 and (~in_box).sum() > 0.3 * side ** 2
        dx, dy = xs[~in_box].mean() + 0.5, ys[~in_box].mean() + 0.5  # the look-alike's centroid
        look_alike_colours.add(tuple(np.round(crop[int(dy), int(dx)] / 50)))
        t_vec, d_vec = np.array([cx, cy]) - 128, np.array([dx, dy]) - 128
        # Equally far from the crop centre, up to the +-0.1 side move of the crop
        # (2 x 0.1 x sqrt(2) sides) and 2 px for the resampled edge; on opposite sides.
        assert abs(np.hypot(*t_vec) - np.hypot(*d_vec)) < 0.29 * side + 2
        assert np.dot(t_vec, d_vec) < 0 and np.hypot(*t_vec) > 0.5 * side
        directions.add(int(np.sign(t_vec[0])))
    assert directions == {-1, 1} and len(look_alike_colours) == 2  # directions and look-alikes vary
    with pytest.raises(ValueError, match=r"distractor_prob must be in \[0, 1\]"):
        data.PairDataset([("blobs", seqs)], distractor_prob=2.0)


def _ramp_image(size=256):
    """R = x, G = y, B = 0: bilinear resizing keeps a linear ramp linear, so a crop's pixel
    tells which image position it shows, to within the uint8 rounding."""
    ramp = np.arange(size, dtype=np.uint8)
    return np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.zeros((size, size), np.uint8)], -1)


def _mapped_error(template, search, view_map, step=4):
    """Largest |template(u, v) - search(a u + bx, a v + by)| over the template's middle row (R,
    which shows x) and middle column (G, which shows y), the search read by linear
    interpolation. Template pixels showing zero padding or the image's last pixels (which
    the released padding may zero in one crop only) are skipped."""
    a, bx, by = (float(v) for v in view_map)
    row, col = int(round(a * 64 + by)), int(round(a * 64 + bx))  # the search row and column of the middle
    worst = 0.0
    for u in range(0, template.shape[0], step):
        for value, pos, line in ((template[64, u, 0], a * u + bx, search[row, :, 0]),
                                 (template[u, 64, 1], a * u + by, search[:, col, 1])):
            if 4 <= value <= 250:
                k = int(np.floor(pos))
                worst = max(worst, abs(np.interp(pos, [k, k + 1], line[k:k + 2].astype(float)) - value))
    return worst


def test_crop_to_crop_maps_template_pixels_onto_the_same_search_pixels():
    image = _ramp_image()
    box, search_box = (108.0, 110.0, 40.0, 36.0), (100.0, 118.0, 50.0, 44.0)
    template, _, t_xyxy = data.crop_resize(image, box, 2.0, 128)
    search, _, s_xyxy = data.crop_resize(image, search_box, 4.0, 256)
    # Same box for both: template pixel u is search pixel u + 64 (a quarter of the crop).
    same = data.crop_to_crop(t_xyxy, 128, data.crop_resize(image, box, 4.0, 256)[2], 256)
    assert same.tolist() == pytest.approx([1.0, 64.0, 64.0], abs=1e-9)
    view_map = data.crop_to_crop(t_xyxy, 128, s_xyxy, 256)
    # The uint8 rounding of both crops and the fixed-point weights: measured at most 1.0
    # level here and 1.05 over 80 ViewPairDataset pairs; a map one search pixel off gives 1.6.
    assert _mapped_error(template, search, view_map) < 1.3
    assert _mapped_error(template, search, view_map + np.array([0.0, 1.0, 1.0])) > 1.3


def test_view_pairs_are_two_crops_of_one_frame(tmp_path):
    Image.fromarray(_ramp_image()).save(tmp_path / "ramp.png")
    seq = data.Sequence("ramp", [tmp_path / "ramp.png"], np.array([[108.0, 110.0, 40.0, 36.0]]), np.ones(1, bool))
    mean = torch.tensor(data.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(data.IMAGENET_STD)[:, None, None]

    def pixels(t):  # normalised (3, S, S) -> uint8-valued (S, S, 3)
        return ((t * std + mean) * 255).round().permute(1, 2, 0).numpy()

    for random_box_prob in (0.0, 1.0):
        ds = data.ViewPairDataset([("r", [seq])], samples=6, seed=4, random_box_prob=random_box_prob,
                                  gray_prob=0.0, brightness=0.0, center_jitter=0.5)
        maps = set()
        for i in range(len(ds)):
            s = ds[i]
            assert s["template"].shape == (3, 128, 128) and s["search"].shape == (3, 256, 256)
            assert _mapped_error(pixels(s["template"]), pixels(s["search"]), s["view_map"].numpy()) < 1.3
            maps.add(tuple(np.round(s["view_map"].numpy(), 3)))
        assert len(maps) == len(ds)  # every pair differs (the jitter, the random box)
    again = data.ViewPairDataset([("r", [seq])], samples=6, seed=4, random_box_prob=1.0)
    other = data.ViewPairDataset([("r", [seq])], samples=6, seed=5, random_box_prob=1.0)
    assert torch.equal(again[2]["search"], data.ViewPairDataset([("r", [seq])], samples=6, seed=4,
                                                                random_box_prob=1.0)[2]["search"])
    assert not torch.equal(again[2]["view_map"], other[2]["view_map"])
    with pytest.raises(IndexError):
        again[6]
    with pytest.raises(ValueError, match="visible, valid box"):
        data.ViewPairDataset([("r", [data.Sequence("x", [tmp_path / "ramp.png"], np.zeros((1, 4)), np.ones(1, bool))])])


def test_pairs_respect_visibility_and_gap(tmp_path):
    frames = []
    for k in range(6):
        Image.fromarray(np.full((40, 40, 3), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
        frames.append(tmp_path / f"{k}.png")
    gt = np.tile([10.0, 10.0, 10.0, 10.0], (6, 1))
    visible = np.array([True, False, True, False, False, True])
    ds = data.PairDataset([("v", [data.Sequence("v", frames, gt, visible)])], samples_per_epoch=40, seed=0,
                          max_gap=2, gray_prob=0.0, brightness=0.0, flip_prob=0.0)
    seen = set()
    for i in range(40):
        rng = np.random.default_rng([0, 0, i])
        rng.choice(1, p=[1.0]), rng.integers(1)
        seen.add(ds._frames(ds.sources[0][1][0], rng))
    # template before search, both visible; from frame 2 the next visible (5) is 3 frames
    # away, so the gap widens by 5 as the released sampler does.
    assert seen == {(0, 2), (2, 5)}
    with pytest.raises(ValueError, match="annotated"):
        data.PairDataset([("none", [])])


def test_pairs_mix_sources_by_weight(tmp_path):
    seqs = {}
    for name, value in [("dark", 0), ("bright", 255)]:
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(tmp_path / f"{name}.png")
        seqs[name] = [data.Sequence(name, [tmp_path / f"{name}.png"], np.array([[20.0, 20.0, 16.0, 16.0]]),
                                    np.ones(1, bool))]
    kw = dict(samples_per_epoch=8, seed=0, gray_prob=0.0, brightness=0.0)
    only_bright = data.PairDataset([("dark", seqs["dark"]), ("bright", seqs["bright"])], weights=[0, 1], **kw)
    assert all(only_bright[i]["template"][0].max() > 2.0 for i in range(8))  # (1 - 0.485) / 0.229 = 2.25
    mixed = data.PairDataset([("dark", seqs["dark"]), ("bright", seqs["bright"])], **kw)
    assert len({bool(mixed[i]["template"][0].max() > 2.0) for i in range(8)}) == 2
    with pytest.raises(ValueError, match="weights"):
        data.PairDataset([("dark", seqs["dark"])], weights=[1, 1])
