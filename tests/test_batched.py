"""Batched evaluation (track.run_batched, track.py --dataset --batch N, under torchrun):
slot refill, independence of slots, equality with the sequential run, resume after a
kill, and a sharded run writing the same files as one process (issue 25)."""
import copy
import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import hit
import track
from test_track import make_frames, write_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Batched GEMMs group the sums differently from batch 1, so a slot's network output may
# differ in the last float32 bits from the sequential run's, and a tracker feeds its boxes
# back. Measured on this file's seven sequences (random-weight Tiny, fused, one thread, the
# Sapphire Rapids): at most 1.1e-5 pixels over batch sizes 2, 3, 5, 8 and both orders.
BOX_TOL = 1e-3  # pixels: about 100x that, far below anything a metric could see


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """Seven sequences of 2 to 8 frames (so slots finish at different steps), one of one frame."""
    root = tmp_path_factory.mktemp("seqs")
    for i, n in enumerate([5, 2, 8, 3, 6, 1, 4]):
        frames, gt = make_frames(n, seed=i, step=(2 + i % 3, 1 + i % 2))
        write_sequence(root / f"seq{i}", frames, gt, ext="jpg")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return hit.build_hit("tiny").eval()


def run(model, seqs, batch, mode="fused"):
    results, order = {}, []
    tracker = track.Tracker(copy.deepcopy(model), mode=mode, batch=batch)  # prepared in place

    def done(seq, boxes, times):
        results[seq.name] = (boxes.copy(), times.copy())
        order.append(seq.name)

    track.run_batched(tracker, seqs, done, lambda seq, err: pytest.fail(str(err)))
    return results, order


@pytest.fixture(scope="module")
def reference(sequences, model):
    """run_batched at batch 1: what every other batch size is compared with."""
    return run(model, track.data.read_dataset("folder", sequences), batch=1)[0]


def test_batch_one_equals_the_sequential_tracker(sequences, model, reference):
    seqs = track.data.read_dataset("folder", sequences)
    tracker = track.Tracker(copy.deepcopy(model))
    for seq in seqs:
        boxes, times = track.run_sequence(tracker, seq)
        assert np.array_equal(reference[seq.name][0], boxes), seq.name  # same ops, same bits
        assert reference[seq.name][1].shape == times.shape and (reference[seq.name][1] > 0).all()


@pytest.mark.parametrize("batch,reverse", [(3, False), (2, True), (8, True)])
def test_slots_are_independent_of_order_and_batch(sequences, model, reference, batch, reverse):
    seqs = track.data.read_dataset("folder", sequences)
    results, order = run(model, seqs[::-1] if reverse else seqs, batch=batch)
    assert sorted(order) == sorted(s.name for s in seqs) and len(order) == len(seqs)  # each once
    for name, (boxes, _) in results.items():
        assert boxes.shape == reference[name][0].shape
        assert np.abs(boxes - reference[name][0]).max() < BOX_TOL, name
        assert np.array_equal(boxes[0], reference[name][0][0])  # the init box, exactly


def test_slots_refill_as_sequences_finish_padded_where_the_mode_needs(sequences, model, monkeypatch):
    seqs = track.data.read_dataset("folder", sequences)
    _, order = run(model, seqs, batch=2)
    # Lengths 5, 2, 8, 3, 6, 1, 4 (tracked frames: one fewer), two slots. Step 1 ends seq1,
    # whose slot takes seq2 (steps 2-8); step 4 ends seq0, its slot takes seq3 (steps 5-6),
    # then seq4 (7-11); step 8 ends seq2, its slot takes seq5 (one frame: done at once) and
    # seq6 (9-11); step 11 ends seq4 and seq6, in slot order.
    assert order == ["seq1", "seq0", "seq3", "seq2", "seq5", "seq4", "seq6"]
    # cuda_graph / openvino / ... run one batch size: the last steps, with fewer sequences
    # in flight, must still send tracker.batch rows.
    tracker = track.Tracker(copy.deepcopy(model), mode="fused", batch=4)
    tracker.mode = track.fast.FIXED_BATCH_MODES[0]  # pretend: only the padding rule is under test
    shapes = []
    forward = tracker.forward
    tracker.forward = lambda z, x: shapes.append(len(x)) or forward(z, x)
    track.run_batched(tracker, seqs, lambda *a: None, lambda *a: None)
    assert set(shapes) == {4}


def test_decoding_side_by_side_changes_nothing(sequences, model, reference, tmp_path, monkeypatch):
    """Where frames are decoded in run_batched's thread (every core runs the forward), a
    pool decodes each step's frames side by side: the same boxes, and a broken frame still
    fails only its own sequence, naming the frame and the file."""
    from test_track import truncate
    import threading
    seqs = track.data.read_dataset("folder", sequences)
    want = reference
    real_read, decoders = track.data.read_image, set()

    def read(path, raw=None):  # read-ahead only: decoded by whoever asks for the frame
        decoders.add(threading.current_thread().name)
        return real_read(path, raw)

    monkeypatch.setattr(track.fast, "decode_ahead", lambda device: False)
    monkeypatch.setattr(track.data, "read_image", read)
    got, _ = run(model, seqs, 3)
    monkeypatch.setattr(track.data, "read_image", real_read)
    # frames 1, 2, ... by the pool's threads (frame 0 of each sequence: the stepping thread)
    assert {n for n in decoders if n.startswith("hit_decode")} and threading.current_thread().name in decoders
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name][0], want[name][0], atol=BOX_TOL)
    broken = tmp_path / "seqs"  # the same sequences, seq2's frame 4 of 8 cut short
    for seq in seqs:
        (broken / seq.name).mkdir(parents=True)
        for frame in seq.frames:
            (broken / seq.name / frame.name).write_bytes(frame.read_bytes())
        (broken / seq.name / "groundtruth.txt").write_bytes((sequences / seq.name / "groundtruth.txt").read_bytes())
    truncate(broken / "seq2" / "00000004.jpg")
    done, errors = {}, {}
    tracker = track.Tracker(copy.deepcopy(model), batch=3)
    track.run_batched(tracker, track.data.read_dataset("folder", broken),
                      lambda seq, boxes, times: done.update({seq.name: boxes}),
                      lambda seq, err: errors.update({seq.name: err}))
    assert sorted(done) == sorted(n for n in want if n != "seq2") and list(errors) == ["seq2"]
    err = errors["seq2"]
    assert "frame 4 of 8" in str(err) and "00000004.jpg" in str(err) and len(err.boxes) == 3
    for name in done:
        np.testing.assert_allclose(done[name], want[name][0], atol=BOX_TOL)


def test_an_interrupt_mid_decoding_leaves_no_thread(sequences, model, monkeypatch):
    """An exception (here a RuntimeError, as Ctrl-C would be) that reaches run_batched while
    another slot's frame is still being decoded in the pool: that exception comes out, and
    no reading thread or pool thread outlives the run."""
    import threading
    seqs = track.data.read_dataset("folder", sequences)
    real_read = track.data.read_image

    def read(path, raw=None):
        if path.parent.name == "seq0" and path.name == "00000002.jpg":
            raise RuntimeError("interrupted")
        if path.parent.name == "seq1":
            time.sleep(0.5)  # still decoding, inside seq1's reader, when seq0's error comes out
        return real_read(path, raw)

    monkeypatch.setattr(track.fast, "decode_ahead", lambda device: False)
    monkeypatch.setattr(track.data, "read_image", read)
    pools = []
    real_pool = track.ThreadPoolExecutor
    monkeypatch.setattr(track, "ThreadPoolExecutor", lambda **kw: pools.append(real_pool(**kw)) or pools[-1])
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="interrupted"):
        run(model, seqs, 3)
    time.sleep(0.2)  # a stopped reader gives up within 0.05 s
    assert pools[0] is not None and pools[0]._shutdown  # the frames were decoded in a pool, shut down
    assert not set(threading.enumerate()) - before


def write_results(root, out, batch, extra=()):
    return [sys.executable, os.path.join(ROOT, "track.py"), "--checkpoint", str(root / "tiny.pth"),
            "--dataset", "folder", "--root", str(root / "seqs"), "--out", str(out),
            "--device", "cpu", "--threads", "1", "--batch", str(batch), "--mode", "eager", *extra]


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("cli")
    for i in range(8):
        frames, gt = make_frames(12, seed=10 + i)
        write_sequence(root / "seqs" / f"s{i}", frames, gt, ext="jpg")
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.cfg)},  # unfused
               root / "tiny.pth")
    return root


def load_all(folder):
    return {p.name: track.data.read_boxes(p, results=True) for p in sorted(folder.glob("*.txt"))}


@pytest.fixture(scope="module")
def one_process(cli_root, tmp_path_factory):
    """The files of a run never interrupted, in one process (batch 2)."""
    out = tmp_path_factory.mktemp("one") / "out"
    subprocess.run(write_results(cli_root, out, 2), check=True, capture_output=True, timeout=300)
    reference = load_all(out)
    assert len(reference) == 8
    return reference


def test_killed_run_resumes(cli_root, one_process, tmp_path):
    """SIGKILL once the first sequence is written; the rerun finishes the rest, and the
    files equal a run never interrupted (no half-written file survives the kill)."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(write_results(cli_root, out, 3), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*.txt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = load_all(out)
    assert 1 <= len(first) < 8  # killed mid-run
    assert all(b.shape == (12, 4) for b in first.values())  # whole files only
    r = subprocess.run(write_results(cli_root, out, 3), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{8 - len(first)} sequences tracked, {len(first)} already done" in r.stdout
    resumed = load_all(out)
    assert resumed.keys() == one_process.keys()
    for name in one_process:
        assert np.abs(resumed[name] - one_process[name]).max() < BOX_TOL


def test_sharded_run_writes_what_one_process_writes(cli_root, one_process, tmp_path):
    two = tmp_path / "two"
    cmd = write_results(cli_root, two, 2)
    cmd[1:2] = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000), cmd[1]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("8 sequences tracked, 0 already done, 0 failed") == 1  # rank 0 only
    a, b = one_process, load_all(two)
    assert a.keys() == b.keys()
    for name in a:
        assert np.abs(a[name] - b[name]).max() < BOX_TOL


def test_bench_measures_dataset_frames_per_second(tmp_path, model):
    import bench
    seqs = bench.make_dataset(str(tmp_path / "set"), sequences=3, frames=4, size=(160, 120))
    rec = bench.bench_dataset(model, "fused", torch.device("cpu"), seqs, batch=2)
    assert rec["frames"] == 12 and rec["sequences"] == 3 and rec["batch"] == 2
    assert rec["dataset_fps"] > 0 and rec["model_fps"] > 0
    assert "batch 2" in bench.format_dataset(rec)
    with pytest.raises(SystemExit):
        bench.parse_args(["--dataset-batches", "0,4"])
