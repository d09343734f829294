"""Tracker, box mapping, drawing and CLI of track.py."""

import copy
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import hit  # noqa: E402
import track  # noqa: E402


def read_results(path):
    return data.read_boxes(path, results=True)


def eager(checkpoint):
    """--checkpoint and --mode eager: CLI tests that are not about a mode skip preparing one."""
    return ["--checkpoint", str(checkpoint), "--mode", "eager"]


# ---- helpers -----------------------------------------------------------------------------
class FakeHiT(torch.nn.Module):
    """Stands in for HiT in mode "eager" (nothing to prepare): a fixed prediction."""

    def __init__(self, box=(0.5, 0.5, 0.25, 0.25)):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.box = torch.tensor([box])

    def forward(self, template, search):
        assert template.shape[1:] == (3, 128, 128) and search.shape[1:] == (3, 256, 256)
        batch = len(search)
        return {"pred_boxes": self.box.expand(batch, 4) + self.w, "score": torch.ones(batch)}


def make_frames(n=5, size=(120, 96), box=(40, 30, 24, 18), step=(3, 2), seed=0):
    """A textured background and a bright rectangle moving by `step` per frame."""
    rng = np.random.default_rng(seed)
    w, h = size
    background = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    frames, gt = [], []
    for i in range(n):
        x, y = box[0] + step[0] * i, box[1] + step[1] * i
        img = background.copy()
        img[y : y + box[3], x : x + box[2]] = (230, 200, 40)
        frames.append(img)
        gt.append((x, y, box[2], box[3]))
    return frames, np.array(gt, float)


def write_sequence(folder, frames, gt=None, ext="png"):
    folder.mkdir(parents=True)
    for i, img in enumerate(frames):
        Image.fromarray(img).save(folder / f"{i + 1:08d}.{ext}")
    if gt is not None:
        (folder / "groundtruth.txt").write_text("".join("%g,%g,%g,%g\n" % tuple(b) for b in gt))


def truncate(path, keep=0.5):
    """Cut a file to `keep` of its bytes, as an interrupted copy or download leaves it."""
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


# ---- box mapping and clipping (hand-computed) ------------------------------------------------
def test_map_box_back_and_clip_box_hand_computed():
    prev = (100, 50, 40, 20)  # centre (120, 60)
    rf = 256 / 200  # crop side sz = 200 pixels
    # crop centre (0.5, 0.5) is the previous centre; w 0.2 * 200 = 40, h 0.1 * 200 = 20
    assert track.map_box_back((0.5, 0.5, 0.2, 0.1), prev, rf) == pytest.approx((100, 50, 40, 20))
    # cx = 0.25 * 200 = 50 -> 50 + (120 - 100) = 70; cy = 150 + (60 - 100) = 110; w = h = 20
    assert track.map_box_back((0.25, 0.75, 0.1, 0.1), prev, rf) == pytest.approx((60, 100, 20, 20))
    prev = (10.3, 20.7, 5.0, 5.0)  # centre (12.8, 23.2): not an integer
    out = track.map_box_back((0.5, 0.5, 0.5, 0.5), prev, 256 / 40)
    assert out[0] + out[2] / 2 == pytest.approx(12.8) and out[1] + out[3] / 2 == pytest.approx(23.2)
    H, W = 80, 100
    # x1 -5 -> 0, x2 25; y1 70 stays (<= H - 10), y2 100 -> 80: h = 10
    assert track.clip_box((-5, 70, 30, 30), H, W) == pytest.approx((0, 70, 25, 10))
    # far right: x1 -> W - 10 = 90, x2 -> 100; w = 10; h = 5 -> at least 10
    assert track.clip_box((120, 10, 5, 5), H, W) == pytest.approx((90, 10, 10, 10))
    # inside: unchanged
    assert track.clip_box((10, 10, 20, 20), H, W) == pytest.approx((10, 10, 20, 20))
    # negative predicted width (random weights do this): x2 < x1 -> w = margin
    assert track.clip_box((50, 20, -3, 15), H, W) == pytest.approx((50, 20, 10, 15))


# ---- Tracker with a fake network ---------------------------------------------------------------
def test_tracker_bad_inputs_raise_value_error():
    tracker = track.Tracker(FakeHiT(), mode="eager")
    img = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(ValueError, match="before initialize"):
        tracker.track(img)
    bad_boxes = [((np.nan, 1, 5, 5), "non-finite"), ((1, 1, 0, 5), "positive width"),
                 ((1, 1, 5, -2), "positive width"), ((100, 10, 5, 5), "fully outside the 80x60"),
                 ((-20, 10, 10, 5), "fully outside"), ((1, 2, 3), "4 numbers"), ("abc", "4 numbers")]
    for box, message in bad_boxes:
        with pytest.raises(ValueError, match=message):
            tracker.initialize(img, box)
    bad_images = [(img.astype(np.float32), r"uint8 RGB \(H, W, 3\), got float32"), (img[:, :, 0], r"\(H, W, 3\)"),
                  (np.zeros((60, 80, 4), np.uint8), r"\(H, W, 3\)"), (np.zeros((0, 80, 3), np.uint8), "empty"),
                  (img.tolist(), "numpy array or PIL image, got list")]
    for image, message in bad_images:
        with pytest.raises(ValueError, match=message):
            tracker.initialize(image, (1, 1, 5, 5))
    tracker.initialize(img, (1, 1, 5, 5))
    with pytest.raises(ValueError, match="got int16"):
        tracker.track(img.astype(np.int16))


def test_tracker_feeds_float32_crops_to_a_bf16_model(monkeypatch):
    """The eager int8 path (fast's fallback) runs its patch embedding in bfloat16, so its
    first parameter is bf16; crops must still go in as float32 (it casts inside), as in
    every mode (Tracker.crops)."""
    import fast
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(fast, "openvino_available", lambda: False)
    tracker = track.Tracker(hit.build_hit("tiny"), mode="fast")
    assert next(tracker.model.parameters()).dtype == torch.bfloat16
    assert tracker.path.startswith("eager int8")
    seen = []
    model = tracker.model
    tracker.model = lambda z, x: seen.append((z.dtype, x.dtype)) or model(z, x)
    frames, gt = make_frames(2)
    tracker.initialize(frames[0], gt[0])
    tracker.track(frames[1])
    assert seen == [(torch.float32, torch.float32)]


def test_tracker_maps_fixed_prediction_and_takes_pil_images():
    frames, gt = make_frames(3)
    tracker = track.Tracker(FakeHiT(box=(0.5, 0.5, 0.25, 0.25)), mode="eager")
    tracker.initialize(frames[0], gt[0])
    box, score = tracker.track(frames[1])
    x, y, w, h = gt[0]
    sz = math.ceil(math.sqrt(w * h) * 4)  # search crop side
    # centre prediction keeps the centre; size = 0.25 * sz
    assert box == pytest.approx((x + w / 2 - sz / 8, y + h / 2 - sz / 8, sz / 4, sz / 4))
    assert score == 1.0
    assert set(tracker.last_timing) == {"preprocess", "network", "postprocess"}
    rgb = Image.fromarray(frames[0])  # any PIL mode
    images = [rgb.convert("L"), rgb.convert("RGBA"),
              Image.fromarray(frames[0][:, :, 0].astype(np.uint16) * 256)]  # 16-bit gray
    for image in images:
        tracker = track.Tracker(FakeHiT(), mode="eager")
        tracker.initialize(image, gt[0])
        box, _ = tracker.track(image)
        assert len(box) == 4 and all(math.isfinite(v) for v in box)


# ---- Tracker with the real model (random weights) ----------------------------------------------
def _check_inside(boxes, size):
    w, h = size
    boxes = np.asarray(boxes)
    assert np.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= w + 1e-6).all()
    assert (boxes[:, 1] + boxes[:, 3] <= h + 1e-6).all()


def test_real_tiny_prepared_in_place_crops_and_tracks():
    """Mode fused (the default) prepares the model in place, BNs folded once, and again a
    model prepared before; eager leaves it as it is. Outside eager, Tracker cuts its crops
    on the device (fast.crop_resize_torch): the same bits as the released rules in numpy
    (data.crop_resize + data.normalize, what eager runs), padding included. One model,
    prepared once (preparing times its GEMMs)."""
    torch.manual_seed(0)
    model = hit.build_hit("tiny").eval()
    z, x = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref = model(z, x)["pred_boxes"]
    tracker = track.Tracker(model)
    assert type(tracker.model).__name__ == "FastHiT"  # mode fused: fast.py's rewrite
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    again = track.Tracker(copy.deepcopy(model))  # a model prepared before: rewritten again, BNs folded once
    with torch.inference_mode():
        assert (again.model(z, x)["pred_boxes"] - ref).abs().max() < 1e-4
    eager = hit.build_hit("tiny").train()
    assert track.Tracker(eager, mode="eager").model is eager and not eager.training
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in eager.modules())  # untouched
    frames, gt = make_frames(5)  # (96, 120, 3) each
    for box in [(40, 30, 24, 18), (2, 1, 30, 20), (100, 80, 19, 15), (10, 5, 90, 70)]:
        search, factors = tracker.crops([frames[0]], [box], track.SEARCH_FACTOR, track.SEARCH_SIZE)
        crop, want_factor, _ = data.crop_resize(frames[0], box, track.SEARCH_FACTOR, track.SEARCH_SIZE)
        assert search.shape == (1, 3, 256, 256) and search.dtype == torch.float32
        assert torch.equal(search, data.normalize(crop)[None]) and factors == [want_factor]
        _, template = tracker.template_crop(frames[0], box)
        crop, _, _ = data.crop_resize(frames[0], box, track.TEMPLATE_FACTOR, track.TEMPLATE_SIZE)
        assert torch.equal(template, data.normalize(crop)[None])
    tracker.initialize(frames[0], gt[0])
    _check_inside([tracker.track(f)[0] for f in frames[1:]], (120, 96))
    assert tracker.last_timing["network"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_tiny_cuda_matches_cpu():
    torch.manual_seed(0)
    model = hit.build_hit("tiny")
    frames, gt = make_frames(4)
    boxes = {}
    for device in ("cpu", "cuda"):
        tracker = track.Tracker(model, device=device)
        tracker.initialize(frames[0], gt[0])
        boxes[device] = np.array([tracker.track(f)[0] for f in frames[1:]])
    assert np.allclose(boxes["cpu"], boxes["cuda"], atol=0.05)


def test_run_sequence_and_a_broken_frame(tmp_path):
    """A truncated JPEG raises FrameError naming the frame and file, holding the boxes and
    times of the frames before it."""
    frames, gt = make_frames(6)
    write_sequence(tmp_path / "seq", frames[:4], gt[:4])
    boxes, times = track.run_sequence(track.Tracker(FakeHiT(), mode="eager"), data.read_folder(tmp_path / "seq")[0])
    assert boxes.shape == (4, 4) and times.shape == (4,) and (times > 0).all()
    assert np.allclose(boxes[0], gt[0])
    write_sequence(tmp_path / "jpg", frames, gt, ext="jpg")
    truncate(tmp_path / "jpg" / "00000004.jpg")
    seq = data.read_folder(tmp_path / "jpg")[0]
    with pytest.raises(track.FrameError, match=r"frame 4 of 6: .*00000004\.jpg") as exc:
        track.run_sequence(track.Tracker(FakeHiT(), mode="eager"), seq)
    assert exc.value.frame == 4 and exc.value.boxes.shape == (3, 4)
    assert np.allclose(exc.value.boxes[0], gt[0]) and (exc.value.times > 0).all()


# ---- drawing -----------------------------------------------------------------------------------
def test_draw_gif_and_plot_curves(tmp_path):
    frames, gt = make_frames(3, size=(700, 500))
    path = tmp_path / "out.gif"
    track.draw_gif(frames, gt + 5, gt, path, max_side=350)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and max(gif.size) == 350
        for k in range(3):  # both boxes in their exact colours on every (busy) frame
            gif.seek(k)
            rgb = np.asarray(gif.convert("RGB"))
            assert (rgb == track.PRED_COLOUR).all(-1).sum() > 40 and (rgb == track.GT_COLOUR).all(-1).sum() > 40
    gt = np.array([[10, 10, 20, 20]] * 6, float)
    summaries = {"a": track.ope_summary([(gt + 2, gt)]), "b": track.ope_summary([(gt + 6, gt)])}
    for kind in ("success", "precision", "norm_precision"):
        track.plot_curves(summaries, tmp_path / f"{kind}.png", kind)
        with Image.open(tmp_path / f"{kind}.png") as im:
            assert im.size == (640, 480)
    # Success curves by hand: frame 0 is the given box (IoU 1), the others IoU 0.68 (a) and
    # 0.32 (b); at threshold 0.5, a is at 100 % and b at 1/6. Best first: a in the first colour.
    left, top, right, bottom = 64, 36, 620, 428  # plot_curves' frame for 640x480
    with Image.open(tmp_path / "success.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    x = round(left + (right - left) * 0.5)

    def drawn(y, colour):  # the colour within 2 pixels of (x, y)
        y = round(y)
        return (rgb[y - 2:y + 3, x - 2:x + 3] == colour).all(axis=-1).any()

    assert drawn(top, track.CURVE_COLOURS[0]) and drawn(bottom - (bottom - top) / 6, track.CURVE_COLOURS[1])
    assert not drawn(top, track.CURVE_COLOURS[1])
    track.plot_curves({"g": track.got10k_summary([(gt + 2, gt)])}, tmp_path / "g.png", "success")
    with pytest.raises(ValueError):
        track.plot_curves(summaries, tmp_path / "x.png", "bogus")


# ---- CLI -----------------------------------------------------------------------------------
def test_help_and_the_released_checkpoint(capsys, tmp_path, fixtures_dir, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        track.main(["--help"])
    assert exc.value.code == 0
    assert "--analyze" in capsys.readouterr().out
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "track.py")
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--checkpoint" in done.stdout
    # The released training-checkpoint format (weights under "net") tracks a folder, in the
    # default mode (fused: the device-side crop) as the one CLI run that is not eager.
    frames, gt = make_frames(3)
    write_sequence(tmp_path / "seq", frames, gt)
    monkeypatch.chdir(tmp_path)
    track.main(["--checkpoint", str(fixtures_dir / "HiT_Tiny_ep1500_random7.pth.tar"),
                "--sequence", str(tmp_path / "seq"), "--device", "cpu"])
    boxes = read_results(tmp_path / "seq.txt")
    assert boxes.shape == (3, 4)
    _check_inside(boxes, (120, 96))


def test_cli_argument_errors(capsys):
    for argv in ([], ["--sequence", "x"], ["--dataset", "lasot"], ["--analyze", "--root", "r"],
                 ["--init", "1,2,3", "--sequence", "x", "--checkpoint", "c"],
                 ["--init", "1,2,0,4", "--sequence", "x", "--checkpoint", "c"],
                 ["--init", "nan,2,3,4", "--sequence", "x", "--checkpoint", "c"],
                 ["--threads", "0", "--sequence", "x", "--checkpoint", "c"]):
        with pytest.raises(SystemExit) as exc:
            track.main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--threads must be >= 1, got 0" in err and "expected x,y,w,h, got '1,2,3'" in err
    assert track.parse_box("1, 2.5,3,4") == (1, 2.5, 3, 4)
    run = ["--checkpoint", "c", "--sequence", "x"]  # flags of another command: refused, named
    cases = [(run + ["--dataset", "folder", "--root", "r"], "give one of .*got --sequence, --dataset"),
             (run + ["--video", "v.mp4"], "got --sequence, --video"),
             (["--checkpoint", "c", "--dataset", "folder", "--root", "r", "--out", "o", "--gif", "g.gif",
               "--init", "1,1,20,20"], "--init, --gif do not go with --dataset"),
             (["--analyze", "--dataset", "folder", "--root", "r", "--results", "a", "--checkpoint", "c"],
              "--checkpoint does not go with --analyze"),
             (run + ["--batch", "8", "--static-box"], "--static-box, --batch do not go with --sequence"),
             (["--analyze", "--dataset", "folder", "--root", "r", "--results", "a", "./a"], "given twice"),
             (["--dataset", "folder", "--root", "r", "--out", "o"], "--dataset needs --checkpoint")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            track.main(argv)
        assert exc.value.code == 2
        assert re.search(message, capsys.readouterr().err), (argv, message)


def test_load_and_write_boxes(tmp_path):
    path = tmp_path / "r.txt"
    data.write_atomic(path, data.format_boxes([[1, 2, 3, 4], [5.5, 6, 7, 8]]))
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind
    assert np.array_equal(read_results(path), [[1, 2, 3, 4], [5.5, 6, 7, 8]])
    path.write_text("1\t2\t3\t4\n\n5 6 7 8\n")
    assert read_results(path).shape == (2, 4)
    path.write_text("1,2,3,4\n1,2,x,4\n")
    with pytest.raises(ValueError, match="r.txt:2"):
        read_results(path)
    for bad in ("nan,2,3,4", "1,2,inf,4", "1,2,-3,4"):
        path.write_text(f"1,2,3,4\n\n{bad}\n")
        with pytest.raises(ValueError, match=f"r.txt:3: invalid box .*{bad}"):
            read_results(path)
    path.write_text("1,2,3,4\n", encoding="utf-16")  # as Windows PowerShell's > writes
    with pytest.raises(ValueError, match="cannot read .*r.txt: 'utf-8' codec can't decode"):
        read_results(path)
    with pytest.raises(IsADirectoryError):  # a failed write leaves no temporary behind
        data.write_atomic(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]


def test_cli_single_sequence_gif_and_ctrl_c(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    frames, gt = make_frames(4)
    write_sequence(tmp_path / "walk", frames, gt)
    monkeypatch.chdir(tmp_path)
    track.main([*eager(tiny_checkpoint), "--sequence", str(tmp_path / "walk"),
                "--gif", str(tmp_path / "walk.gif"), "--device", "cpu"])
    assert "fps" in capsys.readouterr().out
    boxes = read_results(tmp_path / "walk.txt")  # default: <folder name>.txt in cwd
    assert boxes.shape == (4, 4) and np.allclose(boxes[0], gt[0])
    assert (tmp_path / "walk.gif").exists()
    # no ground truth and no --init: clear error
    write_sequence(tmp_path / "nogt", frames)
    with pytest.raises(SystemExit, match="groundtruth.txt"):
        track.main([*eager(tiny_checkpoint), "--sequence", str(tmp_path / "nogt")])
    track.main([*eager(tiny_checkpoint), "--sequence", str(tmp_path / "nogt"),
                "--init", "40,30,24,18", "--out", str(tmp_path / "o.txt")])
    assert read_results(tmp_path / "o.txt").shape == (4, 4)
    # with --init, a broken ground truth (only drawn) is left out with a warning
    (tmp_path / "nogt" / "groundtruth.txt").write_text("")
    track.main([*eager(tiny_checkpoint), "--sequence", str(tmp_path / "nogt"),
                "--init", "40,30,24,18", "--out", str(tmp_path / "o2.txt"), "--gif", str(tmp_path / "new" / "o.gif")])
    assert "groundtruth.txt: no boxes; tracking from --init without it" in capsys.readouterr().err
    assert read_results(tmp_path / "o2.txt").shape == (4, 4) and (tmp_path / "new" / "o.gif").exists()
    # Ctrl-C keeps the boxes so far
    real, calls = track.Tracker.track, []

    def track_until_ctrl_c(self, image):
        calls.append(1)
        if len(calls) == 3:  # frames 1-3 done (initialisation and two tracked)
            raise KeyboardInterrupt
        return real(self, image)

    monkeypatch.setattr(track.Tracker, "track", track_until_ctrl_c)
    out = tmp_path / "cut.txt"
    with pytest.raises(SystemExit, match=r"interrupted after 3 frames \(the 3 boxes before it are written"):
        track.main([*eager(tiny_checkpoint), "--sequence", str(tmp_path / "walk"), "--out", str(out)])
    assert read_results(out).shape == (3, 4)
    monkeypatch.setattr(track, "run_batched", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit, match="^interrupted; the same command resumes$"):
        track.main([*eager(tiny_checkpoint), "--dataset", "folder", "--root", str(tmp_path / "walk"),
                    "--out", str(tmp_path / "res")])


def test_cli_dataset_resume_and_analyze(tmp_path, tiny_checkpoint, capsys):
    root = tmp_path / "seqs"
    for i in range(2):
        frames, gt = make_frames(3, seed=i)
        write_sequence(root / f"seq{i}", frames, gt)
    out = tmp_path / "res"
    argv = [*eager(tiny_checkpoint), "--dataset", "folder", "--root", str(root),
            "--out", str(out), "--device", "cpu"]
    track.main(argv)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["seq0.txt", "seq1.txt"]
    stamp = (out / "seq0.txt").stat().st_mtime_ns
    (out / "seq1.txt").write_text("")  # as a power cut before the data reached the disk could leave it
    track.main(argv)  # resume: seq0 skipped, seq1 redone
    assert (out / "seq0.txt").stat().st_mtime_ns == stamp and read_results(out / "seq1.txt").shape == (3, 4)
    assert "1 already done" in capsys.readouterr().out

    report = tmp_path / "summary.json"
    plots = tmp_path / "plots"
    track.main(["--analyze", "--dataset", "folder", "--root", str(root), "--results", str(out),
                "--json", str(report), "--plots", str(plots)])
    summary = json.loads(report.read_text())
    scores = summary["results"]["res"]
    assert set(scores) == {"auc", "precision", "norm_precision", "sequences"}
    assert scores["sequences"] == 2 and 0 <= scores["auc"] <= 100
    # a second result folder (the ground truth itself) is compared with the first, paired
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for i in range(2):
        (perfect / f"seq{i}.txt").write_text((root / f"seq{i}" / "groundtruth.txt").read_text())
    capsys.readouterr()
    track.main(["--analyze", "--dataset", "folder", "--root", str(root), "--results", str(out), str(perfect),
                "--json", str(report), "--plots", str(plots)])
    pair = json.loads(report.read_text())["paired_vs_first"]["perfect"]
    assert pair["sequences"] == 2 and pair["better"] + pair["worse"] <= 2
    assert pair["mean_diff"] == pytest.approx(json.loads(report.read_text())["results"]["perfect"]["auc"] - scores["auc"])
    assert "perfect vs res, paired per sequence: auc" in capsys.readouterr().out
    for kind in ("success", "precision", "norm_precision"):
        assert (plots / f"{kind}_plot.png").exists()
    (out / "seq1.txt").unlink()
    with pytest.raises(SystemExit, match="seq1"):
        track.main(["--analyze", "--dataset", "folder", "--root", str(root), "--results", str(out)])


def test_cli_sequence_truncated_jpeg_keeps_boxes(tmp_path, tiny_checkpoint):
    """Frame 4 of 6 is truncated: the 3 boxes before it are written, then one line naming
    the frame and the file, exit status 1, no traceback (run as a script, as a user does)."""
    frames, gt = make_frames(6)
    write_sequence(tmp_path / "walk", frames, gt, ext="jpg")
    truncate(tmp_path / "walk" / "00000004.jpg")
    out = tmp_path / "walk.txt"
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "track.py")
    done = subprocess.run([sys.executable, script, *eager(tiny_checkpoint),
                           "--sequence", str(tmp_path / "walk"), "--out", str(out),
                           "--device", "cpu", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "frame 4 of 6" in done.stderr and "00000004.jpg" in done.stderr
    boxes = read_results(out)
    assert boxes.shape == (3, 4) and np.allclose(boxes[0], gt[0])


def test_cli_dataset_skips_broken_sequence_and_retries_it(tmp_path, tiny_checkpoint, capsys):
    root, out = tmp_path / "seqs", tmp_path / "res"
    for i in range(3):
        frames, gt = make_frames(3, seed=i)
        write_sequence(root / f"seq{i}", frames, gt, ext="jpg")
    good = (root / "seq1" / "00000002.jpg").read_bytes()
    truncate(root / "seq1" / "00000002.jpg")
    argv = [*eager(tiny_checkpoint), "--dataset", "folder", "--root", str(root),
            "--out", str(out), "--device", "cpu"]
    with pytest.raises(SystemExit, match=r"seq1: sequence seq1, frame 2 of 3: .*00000002\.jpg"):
        track.main(argv)
    assert sorted(p.name for p in out.iterdir()) == ["seq0.txt", "seq2.txt"]  # seq1 not finished
    printed = capsys.readouterr().out
    assert "2 sequences tracked, 0 already done, 1 failed" in printed
    assert "frame 2 of 3" in printed  # reported when it happened, not only at the end
    (root / "seq1" / "00000002.jpg").write_bytes(good)  # repaired: a rerun retries seq1 only
    track.main(argv)
    assert "1 sequences tracked, 2 already done, 0 failed" in capsys.readouterr().out
    assert read_results(out / "seq1.txt").shape == (3, 4)


def test_cli_bad_input_is_one_line_naming_file_line_or_value(tmp_path, tiny_checkpoint,
                                                             monkeypatch):
    """Bad input ends in SystemExit with one line naming what is wrong, not a traceback."""
    monkeypatch.chdir(tmp_path)  # where --sequence writes <folder name>.txt by default
    frames, gt = make_frames(3)
    write_sequence(tmp_path / "ok", frames, gt)
    write_sequence(tmp_path / "badgt", frames)
    (tmp_path / "badgt" / "groundtruth.txt").write_text("40,30,24,18\n43,32,x,18\n")
    results = tmp_path / "res"
    results.mkdir()
    (results / "ok.txt").write_text("40,30,24,18\n")  # 1 box for 3 frames
    ckpt = str(tiny_checkpoint)
    cases = [
        (["--checkpoint", ckpt, "--sequence", str(tmp_path / "missing")], "missing does not exist"),
        (["--checkpoint", ckpt, "--sequence", str(tmp_path / "badgt")],
         r"badgt.groundtruth\.txt:2: not numbers"),
        (eager(ckpt) + ["--sequence", str(tmp_path / "ok"), "--init", "500,10,20,20",
          "--device", "cpu"], r"frame 1 of 3: box \(500\.0, 10\.0, 20\.0, 20\.0\) lies fully outside"),
        (["--checkpoint", str(tmp_path / "none.pth"), "--sequence", str(tmp_path / "ok"),
          "--device", "cpu"], "none.pth"),
        (["--checkpoint", ckpt, "--sequence", str(tmp_path / "ok"), "--device", "gpu0"],
         "--device 'gpu0'"),
        (["--checkpoint", ckpt, "--dataset", "folder", "--root", str(tmp_path / "missing"),
          "--out", str(tmp_path / "o")], "missing does not exist"),
        (["--analyze", "--dataset", "folder", "--root", str(tmp_path / "ok"),
          "--results", str(results)], r"res.ok\.txt: 1 predicted boxes for 3 ground-truth"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--checkpoint", ckpt, "--sequence", str(tmp_path / "ok"),
                       "--device", "cuda"], "--device 'cuda': this machine has 0 usable CUDA device"))
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message) as exc:
            track.main(argv)
        assert str(exc.value.code).startswith("error: ") and "\n" not in str(exc.value.code)
    assert not (tmp_path / "ok.txt").exists()  # frame 1 failed: no empty result file


def test_paired_comparison_by_hand_and_per_sequence_scores():
    p = track.paired([10.0, 20.0, 30.0, float("nan")], [12.0, 19.0, 36.0, 50.0])
    # differences +2, -1, +6 (the NaN sequence dropped): mean 7/3, sample std sqrt(37/3)
    assert p["mean_diff"] == pytest.approx(7 / 3) and p["se"] == pytest.approx(np.sqrt(37 / 3) / np.sqrt(3))
    assert (p["better"], p["worse"], p["sequences"]) == (2, 1, 3)
    with pytest.raises(ValueError, match="at least 2"):
        track.paired([1.0], [2.0])
    rng = np.random.default_rng(0)
    gt = np.tile([50.0, 40.0, 30.0, 20.0], (6, 1))
    results = [(gt + rng.normal(0, s, gt.shape), gt) for s in (1, 5, 12)]
    ope = track.ope_summary(results)
    assert np.mean(ope["per_sequence"]) == pytest.approx(ope["auc"])
    assert ope["per_sequence"][0] > ope["per_sequence"][2]  # less noise, higher AUC
    got = track.got10k_summary([r + (np.ones(6, bool),) for r in results])
    assert len(got["per_sequence"]) == 3  # equal frame counts: pooled AO == mean of them
    assert np.mean(got["per_sequence"]) == pytest.approx(got["ao"])


def test_got10k_analyze_and_submission_layout(tmp_path, monkeypatch, tiny_checkpoint):
    """GOT-10k results in the submission layout, scored with AO / SR."""
    frames, gt = make_frames(4)
    seq = data.Sequence("GOT-10k_Val_000001", [tmp_path / "f.png"] * 4, gt, np.ones(4, bool))
    Image.fromarray(frames[0]).save(tmp_path / "f.png")
    monkeypatch.setattr(data, "read_dataset", lambda name, root, split=None: [seq])
    res = tmp_path / "res" / seq.name
    res.mkdir(parents=True)
    data.write_atomic(res / f"{seq.name}_001.txt", data.format_boxes(gt))
    report = tmp_path / "got.json"
    track.main(["--analyze", "--dataset", "got10k", "--root", str(tmp_path), "--split", "val",
                "--results", str(tmp_path / "res"), "--json", str(report),
                "--plots", str(tmp_path)])
    scores = json.loads(report.read_text())["results"]["res"]
    assert set(scores) == {"ao", "sr50", "sr75", "sequences"}
    assert scores["ao"] == pytest.approx(100) and scores["sr75"] == 100
    assert (tmp_path / "success_plot.png").exists()
    frames, gt = make_frames(3)
    write_sequence(tmp_path / "GOT-10k_Test_000001", frames, gt[:1])  # first-frame box only
    seqs = data.read_folder(tmp_path / "GOT-10k_Test_000001")
    monkeypatch.setattr(data, "read_dataset", lambda name, root, split=None: seqs)
    out = tmp_path / "sub"
    track.main([*eager(tiny_checkpoint), "--dataset", "got10k", "--root", "r",
                "--split", "test", "--out", str(out), "--device", "cpu"])
    folder = out / "GOT-10k_Test_000001"
    assert sorted(p.name for p in folder.iterdir()) == [
        "GOT-10k_Test_000001_001.txt", "GOT-10k_Test_000001_time.txt"]
    assert read_results(folder / "GOT-10k_Test_000001_001.txt").shape == (3, 4)
    times = np.loadtxt(folder / "GOT-10k_Test_000001_time.txt")
    assert times.shape == (3,) and (times > 0).all()
    with pytest.raises(SystemExit, match="first-frame"):  # test split: nothing to score
        track.analyze("got10k", "r", "test", [out])


def test_analyze_scores_the_static_box_first_and_plots_only_when_asked(tmp_path, monkeypatch, capsys):
    root, res = tmp_path / "seqs", tmp_path / "res"
    gts = []
    for i in range(3):
        frames, gt = make_frames(4, seed=i)
        write_sequence(root / f"seq{i}", frames, gt)
        data.write_atomic(res / f"seq{i}.txt", data.format_boxes(gt))  # a perfect tracker
        gts.append(gt)
    summaries = track.analyze("folder", root, "test", [res], static=True)
    assert list(summaries) == ["static box", "res"]
    want = track.ope_summary([(np.repeat(gt[:1], len(gt), axis=0), gt, None) for gt in gts])
    assert summaries["static box"]["auc"] == pytest.approx(want["auc"])
    assert summaries["static box"]["auc"] < summaries["res"]["auc"]  # the frames move
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["--analyze", "--dataset", "folder", "--root", str(root), "--results", str(res)]
    track.main(argv + ["--static-box", "--json", str(tmp_path / "s.json")])
    printed = capsys.readouterr().out
    assert printed.splitlines()[1].startswith("static box") and "res vs static box" in printed
    assert list(work.iterdir()) == [] and not list(tmp_path.glob("*.png")) and "plots written" not in printed
    track.main(argv + ["--plots", "figs"])
    assert sorted(p.name for p in (work / "figs").iterdir()) == [
        "norm_precision_plot.png", "precision_plot.png", "success_plot.png"]
