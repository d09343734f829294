"""Video files in and out of track.py (PyAV): `--video`, `--out-video`, their errors."""

import contextlib
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import track  # noqa: E402


def require(name: str):
    """An optional package: skipped where it is not installed, except under CI, which
    installs the extras (requirements-deploy.txt), so that there a missing one fails."""
    return importlib.import_module(name) if os.environ.get("CI") else pytest.importorskip(name)


av = require("av")

SIZE, FPS, N = (160, 120), 10, 12
INIT = (30, 40, 40, 30)  # the target's box in the first frame
RED, BLUE = (255, 0, 0), (0, 0, 200)


def make_video(path, n=N, size=SIZE, intra=False, faststart=False):
    """A pure-red 40x30 target moving by (4, 2) per frame over a blue checkerboard, 10 fps.
    `intra`: every frame a key frame, so that the bytes spread evenly over the file and a
    cut-off file keeps its first frames; `faststart`: MP4 index at the front."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    background = np.zeros((h, w, 3), np.uint8)
    background[..., 2] = np.where((xx // 8 + yy // 8) % 2, 200, 150)  # textured blue
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if intra:
            stream.codec_context.gop_size = 1
        for i in range(n):
            image = background.copy()
            x, y = INIT[0] + 4 * i, INIT[1] + 2 * i
            image[y : y + INIT[3], x : x + INIT[2]] = RED
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode(path):
    with av.open(str(path)) as video:
        return [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]


def cut(path, keep=2 / 3):
    """Cut the last third of the file's bytes off, as an interrupted download leaves it."""
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs pass --threads 1 (the machine is shared): restore the count after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class RecordingTracker:
    """Stands in for track.Tracker: records the frames it is given, predicts a fixed box."""

    device, mode = "cpu", "eager"

    def __init__(self):
        self.images = []

    def initialize(self, image, box):
        self.images.append(image)
        self.state = tuple(float(v) for v in box)

    def track(self, image):
        self.images.append(image)
        return self.state, 0.5


def run_cli(*argv, cwd):
    """track.py as a user runs it: its own process."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "track.py"), *map(str, argv)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def error_line(argv) -> str:
    """track.main's SystemExit message: one line starting with "error: "."""
    with pytest.raises(SystemExit) as exc:
        track.main([str(a) for a in argv])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


INIT_ARG = ",".join(map(str, INIT))


# ---- end to end ---------------------------------------------------------------------------
def test_cli_tracks_a_video_and_writes_it_back(tmp_path, tiny_checkpoint):
    clip = make_video(tmp_path / "clip.mp4")
    done = run_cli("--checkpoint", tiny_checkpoint, "--video", clip, "--init", INIT_ARG,
                   "--out-video", tmp_path / "tracked.mp4", "--mode", "fused",
                   "--device", "cpu", "--threads", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"clip.mp4: {N} frames" in done.stdout and " fps on cpu (fused" in done.stdout
    boxes = track.data.read_boxes(tmp_path / "clip.txt", results=True)  # default --out: ./<video name>.txt
    assert boxes.shape == (N, 4) and np.allclose(boxes[0], INIT)
    with av.open(str(tmp_path / "tracked.mp4")) as written:
        stream = written.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (*SIZE, FPS)
    frames = decode(tmp_path / "tracked.mp4")
    assert len(frames) == N
    # Written back as RGB too: the target still red, the background still blue.
    assert np.abs(frames[0][55, 50].astype(int) - RED).max() < 60
    assert frames[0][100, 120, 2] > 120 and frames[0][100, 120, 0] < 60


def test_frames_go_in_and_out_as_rgb_and_odd_sizes_as_mpeg4(tmp_path, monkeypatch):
    """The released demo feeds OpenCV's BGR frames; here the network gets RGB."""
    clip = make_video(tmp_path / "clip.mp4")
    recorder = RecordingTracker()
    monkeypatch.setattr(track, "_make_tracker", lambda args: recorder)
    track.main(["--checkpoint", "unused", "--video", str(clip), "--init", INIT_ARG,
                "--out", str(tmp_path / "boxes.txt")])
    assert len(recorder.images) == N
    first = recorder.images[0]
    assert first.dtype == np.uint8 and first.shape == (SIZE[1], SIZE[0], 3)
    target = first[INIT[1] + 5 : INIT[1] + 25, INIT[0] + 5 : INIT[0] + 35].reshape(-1, 3)
    assert target[:, 0].min() > 200 and target[:, 2].max() < 60  # R high where the target is
    assert first[100:, 100:, 2].min() > 120 and first[100:, 100:, 0].max() < 60  # blue around
    # libx264's yuv420p needs even sizes: an odd-sized video falls back to MPEG-4.
    path = tmp_path / "odd.mp4"
    image = np.zeros((121, 161, 3), np.uint8)
    image[..., 2] = 200
    with contextlib.closing(track.VideoWriter(path, FPS, (161, 121))) as writer:
        for _ in range(3):
            writer.write(image, (40, 40, 30, 20), 0.9)
    with av.open(str(path)) as video:
        stream = video.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("mpeg4", 161, 121)
    frames = decode(path)
    assert len(frames) == 3 and frames[0][100, 20, 2] > 150


# ---- bad input: one line naming the file (and frame), the boxes so far written ----------------
def test_cut_off_files_keep_the_boxes_before_the_damage(tmp_path, tiny_checkpoint):
    clip = cut(make_video(tmp_path / "clip.mp4", intra=True, faststart=True))
    done = run_cli("--checkpoint", tiny_checkpoint, "--video", clip, "--init", INIT_ARG,
                   "--out", tmp_path / "boxes.txt", "--out-video", tmp_path / "tracked.mp4",
                   "--mode", "eager", "--device", "cpu", "--threads", "1", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "clip.mp4, frame " in done.stderr and "truncated" in done.stderr
    boxes = track.data.read_boxes(tmp_path / "boxes.txt", results=True)
    assert 2 <= len(boxes) < N and np.allclose(boxes[0], INIT)
    assert f"frame {len(boxes) + 1}: cannot decode" in done.stderr
    assert len(decode(tmp_path / "tracked.mp4")) == len(boxes)  # closed, playable
    # FFmpeg decodes a cut-off Matroska file without complaint, just fewer frames: the
    # count its header declares tells.
    clip = cut(make_video(tmp_path / "clip.mkv", intra=True))
    decoded = len(decode(clip))
    assert 2 <= decoded < N - 1  # the premise: fewer frames, no error
    out = tmp_path / "boxes.txt"
    message = error_line(["--checkpoint", tiny_checkpoint, "--video", clip, "--init", INIT_ARG,
                          "--out", out, "--mode", "eager", "--device", "cpu", "--threads", "1"])
    assert f"clip.mkv: truncated: {decoded} frames decoded" in message
    assert len(track.data.read_boxes(out, results=True)) == decoded


def test_bad_videos_and_no_pyav_are_one_line_errors(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where --video writes <name>.txt by default
    (tmp_path / "notes.mp4").write_text("not a video\n")
    clip = make_video(tmp_path / "clip.mp4")
    (tmp_path / "cut.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size * 2 // 3])
    for name in ("empty.mp4", "empty.avi"):  # a header and no frames
        with av.open(str(tmp_path / name), "w") as empty:
            empty.add_stream("mpeg4", rate=FPS)
            empty.start_encoding()
    ckpt = ["--checkpoint", tiny_checkpoint, "--mode", "eager", "--device", "cpu",
            "--threads", "1"]
    cases = [
        (["--video", tmp_path / "missing.mp4"], "video file .*missing.mp4 does not exist"),
        (["--video", tmp_path / "notes.mp4"], "cannot read video .*notes.mp4: Invalid data"),
        # MP4 writes its index last: a cut-off one (no faststart) cannot even be opened
        (["--video", tmp_path / "cut.mp4"], "cannot read video .*cut.mp4"),
        (["--video", tmp_path / "empty.mp4"], "empty.mp4: no video stream"),  # MP4 drops it
        (["--video", tmp_path / "empty.avi"], r"empty.avi: no frames \(an empty video\)"),
        (["--video", clip, "--out-video", tmp_path / "out.avi1"], "cannot write video .*out.avi1"),
    ]
    for argv, message in cases:
        assert re.search(message, error_line(ckpt + argv + ["--init", INIT_ARG]))
    message = error_line(ckpt + ["--video", clip, "--init", "170,40,20,20"])
    assert "clip.mp4, frame 1: box (170.0, 40.0, 20.0, 20.0) lies fully outside the 160x120" \
        in message
    assert not list(tmp_path.glob("*.txt"))  # nothing tracked: no empty result files
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    message = error_line(["--checkpoint", "unused", "--video", tmp_path / "clip.mp4",
                          "--init", INIT_ARG])
    assert "pip install av" in message and "requirements-deploy.txt" in message
    with pytest.raises(ImportError, match="pip install av"):
        next(track.read_video(tmp_path / "clip.mp4"))
