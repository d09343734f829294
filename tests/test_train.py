"""Tests of train.py: the loss of Eq. 4, optimisation, checkpoints, resume and DDP.

Everything runs on a tiny procedural data set written once per module (4 sequences of
20 frames, the fewest the released sampler takes) and HiT-tiny with a handful of pairs,
so the whole file stays within a few minutes on a 2-core CPU.
"""
import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import fast  # noqa: E402
import hit  # noqa: E402
import levit  # noqa: E402
import synth  # noqa: E402
import train  # noqa: E402

SYNTH = dict(sequences=4, frames=20, seed=0)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "set"
    synth.ensure(folder, SYNTH["sequences"], SYNTH["frames"], SYNTH["seed"], log=lambda *a: None)
    return folder


def tiny_args(synth_dir, out, *extra):
    return ["--variant", "tiny", "--device", "cpu", "--workers", "0", "--out", str(out),
            "--samples-per-epoch", "4", "--batch-size", "2", "--synth-dir", str(synth_dir),
            "--synth-sequences", str(SYNTH["sequences"]), "--synth-frames", str(SYNTH["frames"]),
            "--synth-seed", str(SYNTH["seed"]), *extra]


def fixed_batch(synth_dir, n=2, seed=0):
    ds = data.PairDataset([("synth", data.read_got10k(synth_dir, "train"))], None, 64, seed)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def read_log(out):
    return [json.loads(s) for s in (Path(out) / "log.jsonl").read_text().splitlines()]


def assert_same_weights(want, got):
    want, got = want.state_dict(), got.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


# ----------------------------------------------------------------------------- loss
def xyxy(*b):
    return torch.tensor([b], dtype=torch.float64)


@pytest.mark.parametrize("a,b,expected", [
    ((0.1, 0.2, 0.5, 0.9), (0.1, 0.2, 0.5, 0.9), 1.0),  # identical
    ((0, 0, 0.25, 0.25), (0.5, 0.5, 0.75, 0.75), -7 / 9),  # [0,1]^2, [2,3]^2 / 4: IoU 0, union 2, enclosing 9
    ((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), 1 / 7 - (9 - 7) / 9)])  # [0,2]^2, [1,3]^2: inter 1, union 7
def test_giou_by_hand(a, b, expected):
    assert train.giou(xyxy(*a), xyxy(*b)).item() == pytest.approx(expected)
    assert train.giou_loss(xyxy(*a), xyxy(*b)).item() == pytest.approx(1 - expected, abs=1e-12)


def test_giou_degenerate_boxes_are_finite():
    gt = torch.tensor([[0.2, 0.2, 0.6, 0.6]] * 3)
    pred = torch.tensor([[0.3, 0.3, 0.3, 0.3],  # a point
                         [0.2, 0.2, 0.6, 0.6],  # exact
                         [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    g = train.giou(pred, gt)
    g.sum().backward()
    assert torch.isfinite(g).all() and torch.isfinite(pred.grad).all()
    zero = torch.zeros(1, 4, requires_grad=True)
    v = train.giou(zero, torch.zeros(1, 4))  # both empty and at the same place
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(zero.grad).all()


def test_box_loss_is_2_giou_plus_5_l1_with_gt_clamped():
    pred = torch.tensor([[0.5, 0.5, 0.5, 0.5]])  # cxcywh -> xyxy (0.25, 0.25, 0.75, 0.75)
    gt = torch.tensor([[0.8, 0.5, 0.6, 0.5]])  # xyxy (0.5, 0.25, 1.1, 0.75) -> x2 clamped to 1.0
    total, parts = train.box_loss(pred, gt)
    # clamped gt (0.5, 0.25, 1.0, 0.75): inter 0.25 * 0.5 = 0.125, union 0.25 + 0.25 - 0.125,
    # enclosing (0.25..1.0) x (0.25..0.75) = 0.375
    union = 0.375
    g = 0.125 / union - (0.375 - union) / 0.375
    l1 = (0.25 + 0 + 0.25 + 0) / 4
    assert parts["giou"].item() == pytest.approx(1 - g)
    assert parts["l1"].item() == pytest.approx(l1)
    assert total.item() == pytest.approx(2 * (1 - g) + 5 * l1)
    assert torch.allclose(train.box_cxcywh_to_xyxy(gt), torch.tensor([[0.5, 0.25, 1.1, 0.75]]))


class FixedBoxes(torch.nn.Module):
    """A 'network' whose predicted boxes are its parameter: train_step's loss, seen whole."""

    def __init__(self, boxes):
        super().__init__()
        self.boxes = torch.nn.Parameter(torch.tensor(boxes))

    def forward(self, template, search, maps=False):
        return {"pred_boxes": self.boxes}


def test_an_inverted_box_zeroes_the_batch_giou_as_released():
    """The released generalized_box_iou asserts x2 >= x1, y2 >= y1; compute_losses catches
    the failure and sets the GIoU term of the whole batch to 0: that step trains on L1."""
    gt = torch.tensor([[0.5, 0.5, 0.4, 0.4]] * 2)  # cxcywh: xyxy (0.3, 0.3, 0.7, 0.7)
    boxes = [[0.5, 0.5, 0.3, 0.3], [0.4, 0.5, -0.1, 0.2]]  # the second has x2 < x1
    batch = {"template": torch.zeros(2, 1), "search": torch.zeros(2, 1), "search_box": gt}
    model = FixedBoxes(boxes)
    m = train.train_step(model, batch, torch.optim.SGD(model.parameters(), lr=0.0), CPU, grad_clip=0)
    assert m["giou"] == 0.0 and m["loss"] == pytest.approx(5 * m["l1"])
    l1_only = torch.tensor(boxes, requires_grad=True)
    (5 * torch.nn.functional.l1_loss(train.box_cxcywh_to_xyxy(l1_only), train.box_cxcywh_to_xyxy(gt))).backward()
    assert torch.equal(model.boxes.grad, l1_only.grad)  # no gradient from the GIoU term
    # an inverted target, or a NaN, zeroes it too; without one: the usual value
    assert train.box_loss(torch.tensor(boxes[:1]), torch.tensor([[0.5, 0.5, -0.4, 0.4]]))[1]["giou"].item() == 0.0
    assert train.box_loss(torch.tensor([[0.5, 0.5, float("nan"), 0.3]]), gt[:1])[1]["giou"].item() == 0.0
    # (0.35, 0.35, 0.65, 0.65) in (0.3, 0.3, 0.7, 0.7): IoU 0.09 / 0.16, enclosing = union
    assert train.box_loss(torch.tensor(boxes[:1]), gt[:1])[1]["giou"].item() == pytest.approx(1 - 0.09 / 0.16)


def test_corner_loss_prefers_the_true_corner_cells():
    gt = torch.tensor([[0.5, 0.5, 0.5, 0.25]])  # xyxy (0.25, 0.375, 0.75, 0.625): cells 4,6 / 12,10
    cell = torch.arange(16.0)

    def gaussian_logits(row, col):  # log of a sigma-1 Gaussian bump at (row y, column x)
        return -0.5 * ((cell[:, None] - row) ** 2 + (cell[None, :] - col) ** 2)

    right = torch.stack([gaussian_logits(6, 4), gaussian_logits(10, 12)])[None]  # (1, 2, 16, 16)
    wrong = right.flip(1)  # corners swapped
    flat = torch.zeros(1, 2, 16, 16)
    r, w, f = (train.corner_loss(m, gt).item() for m in (right, wrong, flat))
    assert r < f < w
    # the target itself costs its entropy, log(2 pi e sigma^2) = 2.84; a flat map log(256)
    assert abs(r - 2.84) < 0.02 and abs(f - torch.log(torch.tensor(256.0)).item()) < 1e-5
    logits = flat.clone().requires_grad_(True)
    train.corner_loss(logits, gt).backward()
    assert logits.grad[0, 0, 6, 4] < 0 and logits.grad[0, 0, 10, 12] > 0  # pulls toward the corner


def test_forward_maps_gives_the_corner_logits():
    model = hit.build_hit("tiny").eval()
    z, x = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out, plain = model(z, x, maps=True), model(z, x)
    assert out["score_maps"].shape == (1, 2, 16, 16) and set(plain) == {"pred_boxes", "score"}
    box, _ = model.box_head.from_maps(out["score_maps"])
    assert torch.allclose(hit.xyxy_to_cxcywh(box), plain["pred_boxes"])


# ----------------------------------------------------------------------------- optimisation
def test_one_step_changes_every_parameter(synth_dir):
    """Every parameter with a gradient moves on the first AdamW step (clip 0.1). LeViT
    zero-initialises the last BN scale of each residual branch, so at step 1 the layers
    inside a branch have exactly zero gradient (their zero-initialised BN biases and bias
    tables cannot move yet; weight decay moves the rest); after step 2 every one moves."""
    torch.manual_seed(0)
    model = hit.build_hit("tiny").train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    batch = fixed_batch(synth_dir)
    m = train.train_step(model, batch, opt, CPU, grad_clip=0.1)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    params = dict(model.named_parameters())
    stuck = [k for k, p in params.items() if torch.equal(p, start[k])]
    assert all(params[k].grad is not None and not params[k].grad.any() for k in stuck), stuck
    assert all(".m." in k and k.startswith("backbone.body.blocks.") for k in stuck), stuck
    assert params["box_head.conv5_tl.bias"].grad.abs().sum() > 0
    train.train_step(model, batch, opt, CPU, grad_clip=0.1)
    unchanged = [k for k, p in model.named_parameters() if p.requires_grad and torch.equal(p, start[k])]
    assert not unchanged, f"parameters not updated after two steps: {unchanged}"


def test_overfitting_a_small_batch_lowers_the_loss(synth_dir):
    # 20 AdamW steps (lr 1e-3, clip 0.1) on 4 fixed procedural pairs. The L1 term, since the
    # GIoU term is 0 while any predicted box is inverted (as released: here the first 19
    # steps), so the total jumps when it starts to count; L1 ended at 0.27 of its start
    # (0.18 after 30 steps), so 0.7 leaves a wide margin.
    torch.manual_seed(0)
    model = hit.build_hit("tiny").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    batch = fixed_batch(synth_dir, n=4, seed=1)
    l1 = [train.train_step(model, batch, opt, CPU, grad_clip=0.1)["l1"] for _ in range(20)]
    first, last = sum(l1[:3]) / 3, sum(l1[-3:]) / 3
    assert last < 0.7 * first, l1


def test_amp_settings_per_device(monkeypatch):
    assert train.amp_settings(False, CPU) == (None, None)
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert train.amp_settings(True, CPU) == (torch.bfloat16, None)
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda cpuinfo=None: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):  # emulated bf16: slower
        assert train.amp_settings(True, CPU) == (None, None)


def test_bf16_autocast_step_keeps_float32_boxes_and_weights(synth_dir):
    """--amp's step (bf16 autocast, forced here even where bf16 is emulated): the
    soft-argmax runs in float32 (a bf16 one would round corners to ~1 px), weights and
    their gradients stay float32, and Eq. 4's loss matches the fp32 step's within bf16's
    error. The corner term, a cross-entropy of the bf16 maps, carries their rounding and
    gets its own bound."""
    torch.manual_seed(0)
    model = hit.build_hit("tiny").train()
    batch = fixed_batch(synth_dir)
    z, x = batch["template"], batch["search"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, x, maps=True)
    assert out["score_maps"].dtype == torch.bfloat16 and out["pred_boxes"].dtype == torch.float32
    box, _ = model.box_head.from_maps(out["score_maps"].float())
    assert torch.equal(hit.xyxy_to_cxcywh(box), out["pred_boxes"])
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    m = train.train_step(model, batch, opt, CPU, 0.1, None, torch.bfloat16, 1.0)
    m32 = train.train_step(ref, batch, torch.optim.AdamW(ref.parameters()), CPU, 0.1, corner_weight=1.0)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    # Measured 5.3e-4 relative (Sapphire Rapids, AMX), 4.9e-4 (AMD EPYC, AVX2: bf16 emulated); bf16's
    # own step is 2^-8 = 3.9e-3, so 2e-3 still fails a step that leaves a whole tensor in bf16.
    assert m["loss"] - m["corner"] == pytest.approx(m32["loss"] - m32["corner"], rel=2e-3), (m, m32)
    # Measured 4.0e-3 relative (Sapphire Rapids), 3.8e-3 (AMD EPYC, AVX2); 1e-2 leaves 2.5x of room.
    assert m["corner"] == pytest.approx(m32["corner"], rel=1e-2), (m, m32)


# ----------------------------------------------------------------------------- lr schedule
def schedule_args(*extra):
    return train.build_parser().parse_args(["--epochs", "10", *extra])


def test_step_schedule_matches_per_epoch_multisteplr():
    # The paper's x0.1 at 80 %, as a per-epoch MultiStepLR would give it (loop form).
    args, steps = schedule_args(), 7
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, [8], gamma=0.1)
    for epoch in range(10):
        for s in range(steps):
            assert train.lr_factor(epoch * steps + s, steps, args) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()


def test_cosine_schedule_and_warmup_closed_form():
    args = schedule_args("--schedule", "cosine")
    assert train.lr_factor(0, 10, args) == 1.0
    assert train.lr_factor(50, 10, args) == pytest.approx(0.5)
    assert train.lr_factor(25, 10, args) == pytest.approx(0.5 + 0.5 * 2 ** -0.5)
    assert train.lr_factor(99, 10, args) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    args = schedule_args("--schedule", "cosine", "--warmup", "1")
    assert [train.lr_factor(i, 4, args) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert train.lr_factor(4, 4, args) == 1.0  # the cosine starts where the warm-up ends
    assert train.lr_factor(4 + 18, 4, args) == pytest.approx(0.5)


def test_cosine_run_logs_decaying_lr(synth_dir, tmp_path):
    # (test_time_budget_lowers_epochs_and_resumes_exactly resumes a cosine run exactly)
    train.main(tiny_args(synth_dir, tmp_path, "--epochs", "3", "--schedule", "cosine", "--warmup", "1"))
    # last step of each epoch (2 steps per epoch): warm-up's 2/2, then cos over 4 steps at 1/4 and 3/4
    want = [5e-4, 5e-4 * 0.5 * (1 + math.cos(math.pi / 4)), 5e-4 * 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert [r["lr"] for r in read_log(tmp_path)] == pytest.approx(want)


def test_compile_trains_like_eager(synth_dir, tmp_path, monkeypatch):
    # --compile reaches torch.compile with one static graph, through dynamo and AOTAutograd
    # (backend aot_eager: Inductor's cold C++ build of forward and backward takes minutes on
    # 2 cores, beyond the suite's budget; TRAINING.md has the Inductor runs).
    real, calls = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(kw) or real(m, backend="aot_eager", **kw))
    # Compiling changes float rounding only. After 2 AdamW steps of lr 1e-5
    # most weights have moved ~2e-5 (Adam's step is ~lr whatever the gradient's size, at
    # most (1 - beta1) / sqrt(1 - beta2) = 3.16 lr), so rounding can matter only where a
    # gradient is near zero: nearly every weight must agree to a small fraction of one
    # step, none by more than two largest steps.
    lr = 1e-5
    extra = ["--epochs", "1", "--lr", str(lr), "--batch-size", "2", "--samples-per-epoch", "4"]
    eager = train.main(tiny_args(synth_dir, tmp_path / "eager", *extra)).state_dict()
    compiled = train.main(tiny_args(synth_dir, tmp_path / "compiled", *extra, "--compile")).state_dict()
    assert calls == [{"dynamic": False}]
    assert compiled.keys() == eager.keys()  # the checkpoint holds the plain model's names
    init = hit.build_hit("tiny")
    params = [k for k, _ in init.named_parameters()]
    moved = torch.cat([(eager[k] - init.state_dict()[k]).abs().flatten() for k in params])
    diff = torch.cat([(eager[k] - compiled[k]).abs().flatten() for k in params])
    assert (moved > lr / 2).float().mean() > 0.5  # both really trained
    assert diff.max() <= 6.4 * lr and (diff > lr / 10).float().mean() < 0.01, (diff.max(), (diff > lr / 10).float().mean())
    # BatchNorm running statistics are not Adam steps: no lr bound, only float rounding
    # (on an H100 the whole state_dict differed by up to 1e-4, more than two Adam steps of
    # ~1 lr each can move a weight: these buffers, which the bound above once covered).
    for k in eager.keys() - set(params):
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-2, atol=1e-3, msg=k)
    assert read_log(tmp_path / "compiled")[0]["loss"] == pytest.approx(read_log(tmp_path / "eager")[0]["loss"], rel=1e-4)


# ----------------------------------------------------------------------------- checkpoints and resume
@pytest.fixture(scope="module")
def straight_run(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    model = train.main(tiny_args(synth_dir, out, "--epochs", "2", "--lr-drop", "0.5"))
    return out, model


def test_checkpoint_and_log_format(straight_run):
    out, model = straight_run
    assert sorted(p.name for p in out.iterdir()) == ["last.pth", "log.jsonl"]
    ckpt = hit.safe_load(out / "last.pth")  # plain types and tensors only
    assert {"model", "config", "optimizer", "scheduler", "epoch", "rng", "args", "scaler"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["config"]["variant"] == "tiny"
    assert set(ckpt["rng"]) == {"torch", "cuda", "mps", "numpy", "python"}
    assert ckpt["rng"]["mps"] is None or torch.backends.mps.is_available()
    lines = read_log(out)
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"epoch", "loss", "giou", "l1", "lr", "samples_per_s", "seconds"} <= set(lines[0])
    assert lines[0]["lr"] == pytest.approx(5e-4) and lines[1]["lr"] == pytest.approx(5e-5)  # x0.1 at 50 %
    loaded = hit.load_checkpoint(out / "last.pth")  # the tracker's loader reads it
    assert not loaded.training and loaded.cfg == model.cfg
    assert_same_weights(model, loaded)


def test_crash_while_saving_then_resume_matches_uninterrupted_run(straight_run, synth_dir, tmp_path, monkeypatch):
    """A kill while the checkpoint of epoch 2 is written: the one of epoch 1 survives, a new
    run refuses to overwrite it, and --resume PATH drops the log lines past it (the line of
    epoch 2, a half-written line) and ends with the uninterrupted run's weights and log."""
    out, reference = straight_run
    real_save, calls = torch.save, []

    def save_then_crash(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint after epoch 2: half a file, then the "kill"
            f.write(b"PK\x03\x04 partial checkpoint")
            raise KeyboardInterrupt("killed while writing")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_then_crash)
    args = tiny_args(synth_dir, tmp_path, "--epochs", "2", "--lr-drop", "0.5")
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    monkeypatch.setattr(torch, "save", real_save)
    assert hit.safe_load(tmp_path / "last.pth")["epoch"] == 1  # the previous checkpoint survived
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "log.jsonl"]  # no temporary file left
    with pytest.raises(ValueError, match="--resume"):  # no silent overwrite of a run
        train.main(args)
    assert [r["epoch"] for r in read_log(tmp_path)] == [1, 2]  # the log line goes before the checkpoint
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"epoch": 3, "lo')
    assert_same_weights(reference, train.main(args + ["--resume", str(tmp_path / "last.pth")]))
    ck = hit.safe_load(tmp_path / "last.pth")
    assert ck["epoch"] == 2 and ck["scheduler"]["last_epoch"] == 4  # stepped per step: 2 epochs x 2
    for w, g in zip(read_log(out), read_log(tmp_path), strict=True):
        assert (w["epoch"], w["loss"], w["lr"]) == (g["epoch"], g["loss"], g["lr"])


def run_interrupted(monkeypatch, args, at_step=1, sig=signal.SIGINT):
    """train.main(args) with `sig` raised right after train step number `at_step`, as Ctrl-C
    (or a scheduler's kill) between two steps -> (its SystemExit, steps run). In the full
    suite this runs after the OpenVINO tests: before fast.same_signal_stack, the alternate
    signal stack OpenVINO had left on this thread made the kernel fail to deliver it (the
    test process died with SIGSEGV)."""
    real_step, calls = train.train_step, []

    def step_then_signal(*a, **k):
        result = real_step(*a, **k)
        calls.append(1)
        if len(calls) == at_step:
            signal.raise_signal(sig)
        return result

    monkeypatch.setattr(train, "train_step", step_then_signal)
    with pytest.raises(SystemExit) as exc:
        train.main(args)
    monkeypatch.setattr(train, "train_step", real_step)
    return exc.value, len(calls)


@pytest.mark.parametrize("at_step,sig", [(3, signal.SIGTERM), (4, signal.SIGINT)])
def test_interrupt_saves_where_it_stopped_and_resume_continues_exactly(straight_run, synth_dir, tmp_path,
                                                                       monkeypatch, at_step, sig):
    """Ctrl-C or SIGTERM during a step (at step 3: mid-epoch 2 of 2 steps each; at step 4:
    its last): the step finishes, the run so far is saved (mid-epoch: the step reached and
    the epoch's sums), train.py stops with 130; --resume then ends with the uninterrupted
    run's weights and log. The signal handlers are the caller's again after. A mid-epoch
    checkpoint resumes in one process only."""
    out, reference = straight_run
    handler = signal.getsignal(sig)
    args = tiny_args(synth_dir, tmp_path, "--epochs", "2", "--lr-drop", "0.5")
    stop, steps = run_interrupted(monkeypatch, args, at_step, sig)
    assert stop.code == 130 and steps == at_step and signal.getsignal(sig) is handler
    ckpt = hit.safe_load(tmp_path / "last.pth")
    if at_step == 3:
        assert ckpt["epoch"] == 1 and ckpt["partial"]["step"] == 1 and ckpt["partial"]["sums"][3] == 2
        with monkeypatch.context() as ddp:  # as under torchrun, 2 ranks
            ddp.setattr(train.dist, "is_initialized", lambda: True)
            ddp.setattr(train.dist, "get_world_size", lambda: 2)
            with pytest.raises(ValueError, match="resume it in one process"):
                train.main(args + ["--resume"])
    else:
        assert ckpt["epoch"] == 2 and ckpt["partial"] is None
    assert_same_weights(reference, train.main(args + ["--resume"]))
    for w, g in zip(read_log(out), read_log(tmp_path), strict=True):
        assert (w["epoch"], w["loss"], w["giou"], w["lr"]) == (g["epoch"], g["loss"], g["giou"], g["lr"])


def test_a_second_interrupt_stops_at_once():
    with train.Interrupt() as interrupt:
        interrupt.handle(signal.SIGINT, None)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.handle(signal.SIGINT, None)


def test_base_resumed_mid_epoch_draws_the_same_drop_path_masks(synth_dir, tmp_path, monkeypatch):
    """HiT-Base (LeViT-384) has drop path, drawn from the global generator on the CPU: the
    resumed run must not shift it (opening a DataLoader used to take one draw from it)."""
    base = ["--variant", "base", "--samples-per-epoch", "2", "--batch-size", "1", "--epochs", "1"]  # later flags win
    reference = train.main(tiny_args(synth_dir, tmp_path / "a", *base))
    args = tiny_args(synth_dir, tmp_path / "b", *base)
    run_interrupted(monkeypatch, args)
    assert_same_weights(reference, train.main(args + ["--resume"]))


def test_an_epoch_is_whole_batches_only(synth_dir, tmp_path, monkeypatch, capsys):
    """The last partial batch is dropped (the released LTRLoader's drop_last): 5 pairs in
    batches of 2 are 2 steps of 2; fewer pairs than a batch is an error, not an empty epoch.
    DDP does not broadcast buffers (as the release). Without --workers, the count is
    default_workers' for this device."""
    calls = []
    monkeypatch.setattr(train, "default_workers", lambda *a: calls.append(a) or 0)
    args = tiny_args(synth_dir, tmp_path, "--epochs", "1", "--samples-per-epoch", "5")
    i = args.index("--workers")
    train.main(args[:i] + args[i + 2:])  # no --workers given
    assert len(calls) == 1 and calls[0][0] == "cpu" and calls[0][1] >= 1 and calls[0][2] == 1
    assert "2 steps/epoch of 2x1 pairs; 0 loader worker(s)" in capsys.readouterr().out
    assert hit.safe_load(tmp_path / "last.pth")["scheduler"]["last_epoch"] == 2
    with pytest.raises(ValueError, match=r"--samples-per-epoch 1 gives 1 pairs per process, fewer than one "
                                         r"--batch-size 2 \(the last partial batch is dropped\)"):
        train.main(tiny_args(synth_dir, tmp_path / "few", "--samples-per-epoch", "1"))
    seen = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda net, **k: seen.append(k) or net)
    train.wrap(torch.nn.Linear(1, 1), 2, CPU, False)
    assert seen == [{"device_ids": None, "broadcast_buffers": False}]


# ----------------------------------------------------------------------------- time budget
def test_epochs_within_budget_by_hand():
    assert train.epochs_within(3600, 100, 100, 1, 46) == 36  # 1 + floor(3500 / 100)
    assert train.epochs_within(3600, 100, 70, 1, 46) == 46  # 51 fit; never above --epochs
    assert train.epochs_within(3600, 4000, 70, 1, 46) == 1  # over budget already: what ran
    assert train.epochs_within(3600, 3599, 70, 1, 46) == 1


def test_time_budget_lowers_epochs_and_resumes_exactly(synth_dir, tmp_path, monkeypatch):
    # A budget already spent after epoch 1: the run stops there, and says so in the checkpoint.
    args = tiny_args(synth_dir, tmp_path / "spent", "--epochs", "3", "--time-budget", "1e-4")
    train.main(args)
    ckpt = hit.safe_load(tmp_path / "spent" / "last.pth")
    assert (ckpt["epoch"], ckpt["args"]["epochs"]) == (1, 1)
    assert len(read_log(tmp_path / "spent")) == 1
    # A budget that fits 2 of 4 epochs: the cosine spans 2, and a resume continues exactly.
    monkeypatch.setattr(train, "epochs_within", lambda *a: 2)
    base = tiny_args(synth_dir, tmp_path / "whole", "--epochs", "4", "--time-budget", "50",
                     "--schedule", "cosine", "--warmup", "1")
    whole = train.main(base)
    lrs = [r["lr"] for r in read_log(tmp_path / "whole")]
    assert lrs == pytest.approx([5e-4, 5e-4 * 0.5 * (1 + math.cos(math.pi / 2))])  # 2 epochs, not 4
    split = tiny_args(synth_dir, tmp_path / "split", "--epochs", "4", "--time-budget", "50",
                      "--schedule", "cosine", "--warmup", "1")
    train.main(split + ["--stop-after", "1"])
    monkeypatch.setattr(train, "epochs_within", lambda *a: 4)  # resumed runs do not re-decide
    resumed = train.main(split + ["--resume"])
    assert hit.safe_load(tmp_path / "split" / "last.pth")["epoch"] == 2
    assert_same_weights(whole, resumed)
    with pytest.raises(ValueError, match="--time-budget"):
        train.main(tiny_args(synth_dir, tmp_path / "neg", "--time-budget", "-1"))


def test_resume_keeps_the_time_budget_and_refuses_a_new_one(synth_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "epochs_within", lambda *a: 2)  # the budget fits 2 of 3 epochs
    args = tiny_args(synth_dir, tmp_path / "tb", "--epochs", "3")
    train.main(args + ["--time-budget", "50", "--stop-after", "1"])
    assert hit.safe_load(tmp_path / "tb" / "last.pth")["args"]["epochs"] == 2
    with pytest.raises(ValueError, match=re.escape(
            f"--time-budget 20 on --resume: {tmp_path / 'tb' / 'last.pth'} was started with --time-budget 50")):
        train.main(args + ["--time-budget", "20", "--resume"])
    train.main(args + ["--resume"])  # no --time-budget: the count the budget set is kept
    ckpt = hit.safe_load(tmp_path / "tb" / "last.pth")
    assert (ckpt["epoch"], ckpt["args"]["epochs"], ckpt["args"]["time_budget"]) == (2, 2, 50.0)
    assert len(read_log(tmp_path / "tb")) == 2
    unbudgeted = tiny_args(synth_dir, tmp_path / "plain", "--epochs", "2")
    train.main(unbudgeted + ["--stop-after", "1"])
    with pytest.raises(ValueError, match=r"--time-budget 50 on --resume: .* was started without --time-budget"):
        train.main(unbudgeted + ["--time-budget", "50", "--resume"])


def test_time_budget_pace_counts_validation_and_checkpoint():
    now = [0.0]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)

    def fitted(val_s, val_every):
        """Epochs kept of 46 in 2 minutes: 10 steps of 1 s, then 10 s of log, checkpoint and validation."""
        args = train.parse_args(["--epochs", "46", "--time-budget", "2", "--val-every", str(val_every)])
        run = SimpleNamespace(args=args, optimizer=optimizer, scheduler=scheduler, steps=10, world=1, device=CPU,
                              log=lambda *a: None)
        now[0] = 0.0
        pace = train.Pace(args.time_budget, t_launch=0.0, clock=lambda: now[0])
        pace.start_epoch()
        for step in range(10):
            now[0] += 1.0
            pace.step_done(step, 10, 1000, lambda *a: None)
        pace.end_epoch()
        now[0] += 10.0
        assert pace.fit_budget(run, val_s)
        return args.epochs

    # 100 s left after 20; each epoch 10.3 s of steps (+3 %) and 10 s after them: 1 + floor(100 / 20.3)
    assert fitted(0.0, 0) == 5
    # 8 of the 10 s are validation, which runs every 2 epochs: 10.3 + 2 + 8 / 2 = 16.3 s, 1 + 6
    assert fitted(8.0, 2) == 7


def test_time_budget_is_not_fitted_on_the_warm_up_steps_of_a_resumed_epoch():
    """A run resumed 2 steps before the end of its first epoch has only warm-up steps
    (compilation, loader start) to time: the fit waits for the next epoch."""
    now = [0.0]
    pace = train.Pace(57, t_launch=0.0, clock=lambda: now[0])
    for first, measured in [(0, True), (50, True), (100 - 2 * train.Pace.WARMUP, False), (98, False)]:
        pace.start_epoch(first)
        assert pace.measured(100) == measured, first


def test_pace_says_once_when_a_run_projects_more_than_a_day():
    now = [0.0]

    def first_epoch(pace, steps_left):
        lines = []
        pace.start_epoch()
        for step in range(12):
            now[0] += 10.0  # 10 s per step
            pace.step_done(step, 1875, steps_left - step - 1, lines.append)
        return lines

    lines = first_epoch(train.Pace(clock=lambda: now[0]), 1_000_000)
    # at step 10: 10 s per step (steps 4-10) x 999,990 steps left = 115.7 days
    assert len(lines) == 1 and "this run projects 115.7 more days" in lines[0] and "one-hour" in lines[0]
    assert not first_epoch(train.Pace(clock=lambda: now[0]), 8000)  # 0.9 days: no line
    assert not first_epoch(train.Pace(60, clock=lambda: now[0]), 1_000_000)  # --time-budget 60 caps it


# ----------------------------------------------------------------------------- runs: logs, validation, refusals
def test_validation_and_the_long_run_line(synth_dir, tmp_path, monkeypatch, capsys):
    """--val-every logs the AUC of the saved model, tracked on the first val sequences and
    scored as track.py does; with --time-budget the first epoch is validated to time it.
    The long-run line is printed once per run."""
    train.main(tiny_args(synth_dir, tmp_path / "val", "--epochs", "1", "--samples-per-epoch", "2",
                         "--val-every", "1", "--val-sequences", "1"))
    import track
    seq = data.read_got10k(synth_dir, "val")[0]
    boxes, _ = track.run_sequence(track.Tracker(hit.load_checkpoint(tmp_path / "val" / "last.pth")), seq)
    auc = track.ope_summary([(boxes, seq.gt, seq.visible)])["auc"]
    assert read_log(tmp_path / "val")[0]["val_auc"] == pytest.approx(auc, abs=1e-9)
    monkeypatch.setattr(train, "validate", lambda *a: 50.0)
    monkeypatch.setattr(train, "DAY_S", 0.0)  # every run is "long"
    capsys.readouterr()
    for name, extra in (("plain", ["--epochs", "2"]), ("budget", ["--epochs", "1", "--time-budget", "50"])):
        train.main(tiny_args(synth_dir, tmp_path / name, "--val-every", "3", *extra))
    # once in the run of 2 epochs, at its check (step 2); the run of 1 has no step left to project then
    assert capsys.readouterr().out.count("this run projects") == 1
    assert all("val_auc" not in r for r in read_log(tmp_path / "plain"))
    assert read_log(tmp_path / "budget")[0]["val_auc"] == 50.0


def test_out_clash_and_bad_resume_fail_before_data_and_model(synth_dir, tmp_path, monkeypatch, capsys):
    def too_late(*a, **k):
        raise AssertionError("reached data generation or the model")

    monkeypatch.setattr(train, "procedural_set", too_late)
    monkeypatch.setattr(train, "make_training", too_late)
    with pytest.raises(FileNotFoundError, match="last.pth"):
        train.main(tiny_args(synth_dir, tmp_path, "--epochs", "1", "--resume"))
    (tmp_path / "last.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'last.pth'} exists: pass --resume")):
        train.main(tiny_args(synth_dir, tmp_path, "--epochs", "1"))
    with pytest.raises(FileNotFoundError, match=r"--resume: checkpoint .*missing\.pth does not exist"):
        train.main(tiny_args(synth_dir, tmp_path, "--resume", str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match=r"last\.pth: not a readable PyTorch zip checkpoint"):
        train.main(tiny_args(synth_dir, tmp_path, "--resume"))
    monkeypatch.undo()
    train.main(tiny_args(synth_dir, tmp_path / "zero", "--epochs", "0"))
    assert "done: 0 epoch(s) in 0 s; no checkpoint was written" in capsys.readouterr().out
    assert not (tmp_path / "zero" / "last.pth").exists()


# ----------------------------------------------------------------------------- data options
def test_bad_data_spec_is_named(tmp_path):
    with pytest.raises(ValueError, match="'got10k'"):
        train.parse_data_spec("got10k")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        train.parse_data_spec(f"imagenet:{tmp_path}")
    with pytest.raises(ValueError, match="does-not-exist"):
        train.parse_data_spec(f"got10k:{tmp_path},lasot:{tmp_path}/does-not-exist")
    assert train.parse_data_spec(f"got10k:{tmp_path}, coco:{tmp_path}") == [
        ("got10k", str(tmp_path)), ("coco", str(tmp_path))]
    r = subprocess.run([sys.executable, "train.py", "--data", "lasot=/x"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "lasot=/x" in r.stderr and "Traceback" not in r.stderr


def test_data_and_jitter_flags_reach_the_pair_sampler(synth_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"  # a GOT-10k layout that is not the procedural set of --synth-dir
    synth.synth(other, sequences=3, frames=20, seed=5, size=(96, 96), val_fraction=0, progress=False)
    seen, real = [], data.PairDataset
    monkeypatch.setattr(data, "PairDataset", lambda sources, *a, **k: seen.append((sources, real(sources, *a, **k)))
                        or seen[-1][1])
    train.main(tiny_args(synth_dir, tmp_path / "j", "--epochs", "1", "--samples-per-epoch", "2"))
    # --amp: bf16 autocast where this CPU has native bf16, else a warning and float32
    train.main(tiny_args(synth_dir, tmp_path / "run", "--epochs", "1", "--samples-per-epoch", "2",
                         "--data", f"got10k:{other}", "--amp", "--center-jitter", "1", "--scale-jitter", "0.25"))
    assert hit.safe_load(tmp_path / "run" / "last.pth")["epoch"] == 1
    jitters = [(ds.processing.center_jitter, ds.processing.scale_jitter) for _, ds in seen]
    assert jitters == [(3.5, 0.5), (1.0, 0.25)]  # released defaults, then the flags
    frames = [f for _, seqs in seen[1][0] for q in seqs for f in q.frames]
    assert len(seen) == 2 and len(frames) == 60 and all(other in Path(f).parents for f in frames)


def test_options_are_checked(monkeypatch, capsys):
    assert train.parse_args([]).lr_drop == 0.8 and train.parse_args(["--schedule", "cosine"]).lr_drop == 0.8
    assert train.parse_args(["--lr-drop", "1"]).lr_drop == 1.0
    for argv, message in (
            (["--schedule", "cosine", "--lr-drop", "0.5"], "--lr-drop 0.5 applies to --schedule step only, not cosine"),
            (["--lr-drop=0.8", "--schedule", "cosine"], "--lr-drop 0.8 applies to --schedule step only"),  # given
            (["--lr-drop", "0"], r"--lr-drop must be a fraction of the epochs in \(0, 1\], got 0"),
            (["--lr-drop", "1.5"], r"--lr-drop must be a fraction of the epochs in \(0, 1\], got 1.5"),
            (["--grad-clip", "-0.1"], "--grad-clip must be >= 0, got -0.1"),
            (["--corner-loss", "-1"], "--corner-loss must be >= 0, got -1.0"),
            (["--stop-after", "-1"], "--stop-after must be >= 0, got -1"),
            (["--epochs", "-1"], "--epochs must be >= 0, got -1"),
            (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
            (["--synth-sequences", "0"], "--synth-sequences must be >= 1, got 0"),
            (["--synth-frames", "0"], "--synth-frames must be >= 1, got 0")):
        with pytest.raises(ValueError, match=message):
            train.parse_args(argv)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device, message in (("foo", "'foo' is not a device: expected auto, cpu, cuda, cuda:N or mps"),
                            ("cuda", "'cuda': this machine has 0 usable CUDA device(s)"),
                            ("cuda:1", "'cuda:1': this machine has 0 usable CUDA device(s)"),
                            ("mps", "'mps': MPS is not available on this machine"),
                            ("meta", "'meta': HiT runs on cpu, cuda or mps")):
        with pytest.raises(SystemExit) as exit_:
            train.parse_args(["--device", device])
        assert exit_.value.code == 2 and f"error: --device {message}" in capsys.readouterr().err
    assert train.parse_args(["--device", "cpu"]).device == CPU and train.parse_args([]).device == CPU


def test_levit_weights_reach_the_model(fixtures_dir):
    weights = fixtures_dir / "LeViT_128S_random11.pth"
    run = train.make_training(train.parse_args(["--variant", "tiny", "--levit-weights", str(weights)]), CPU, 2)
    src = levit.read_state_dict(weights)
    assert torch.equal(run.model.state_dict()["backbone.body.blocks.4.kv.c.weight"], src["blocks.4.kv.c.weight"])


def test_help_works():
    r = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--resume" in r.stdout and "--levit-weights" in r.stdout
    for gone in ("--wide-fraction", "--max-steps", "--save-every", "--data-weights", "--tied-qk-init",
                 "--distractor-pairs", "--pretrain-minutes", "--match-loss", "--backbone-lr-scale", "--synth-mix",
                 "--baseline-only"):  # lost their use (issue 34: the static box is track.py --analyze --static-box)
        assert gone not in r.stdout, gone


# ----------------------------------------------------------------------------- synth.py's command line
def synth_cli_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        synth.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_synth_cli_refuses_bad_counts_and_sizes(tmp_path, capsys):
    out = ["--out", str(tmp_path / "set")]
    for argv, message in ((["--frames", "0"], "--frames 0: expected 1 or more"),
                          (["--sequences", "0"], "--sequences 0: expected 1 or more"),
                          (["--sequences", "-3"], "--sequences -3: expected 1 or more"),
                          (["--workers", "0"], "--workers 0: expected 1 or more"),
                          (["--size", "59", "240"], "--size 59 240: each side must be >= 60 pixels"),
                          (["--size", "320", "40"], "--size 320 40: each side must be >= 60 pixels"),
                          (["--val-fraction", "1.5"], "--val-fraction 1.5: expected a number in [0, 1]")):
        assert message in synth_cli_error(out + argv, capsys)
    assert not (tmp_path / "set").exists()
    for seed in range(3):  # 60 is the least side it renders at; 59 leaves the target's size range empty
        frames = list(synth.render_sequence(np.random.default_rng([seed, 0]), 3, 60, 60))
        assert len(frames) == 3 and frames[0][0].shape == (60, 60, 3)
    with pytest.raises(ValueError):
        list(synth.render_sequence(np.random.default_rng([0, 0]), 3, 59, 60))


def test_synth_cli_refuses_a_non_empty_out(tmp_path, capsys):
    old = tmp_path / "old"
    (old / "train").mkdir(parents=True)
    (old / "train" / "list.txt").write_text("synth_00000\n")
    argv = ["--sequences", "2", "--frames", "2", "--size", "64", "64", "--val-fraction", "1"]
    err = synth_cli_error(["--out", str(old)] + argv, capsys)
    assert f"--out {old} exists and is not an empty folder: pick another --out" in err
    assert sorted(p.name for p in old.rglob("*")) == ["list.txt", "train"]
    (tmp_path / "empty").mkdir()
    synth.main(["--out", str(tmp_path / "empty")] + argv)  # --val-fraction 1 keeps one train sequence
    assert [len(data.read_got10k(tmp_path / "empty", split)) for split in ("train", "val")] == [1, 1]
    with pytest.raises(SystemExit):
        synth.main(["--help"])
    assert "at least one sequence stays in train/" in " ".join(capsys.readouterr().out.split())


# ----------------------------------------------------------------------------- DDP and workers
def test_two_process_gloo_run(synth_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", *tiny_args(synth_dir, tmp_path / "run", "--epochs", "1")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["last.pth", "log.jsonl"]
    lines = read_log(out)
    assert len(lines) == 1 and lines[0]["epoch"] == 1  # rank 0 only
    assert (r.stdout + r.stderr).count("x2;") == 1  # the banner, printed by rank 0 alone
    assert hit.load_checkpoint(out / "last.pth").cfg.variant == "tiny"


def test_ranks_draw_different_pairs_that_make_up_the_epoch(synth_dir):
    """Every rank samples with the same seed and reads every world-th index (as the
    PairDataset docstring says): two ranks draw different pairs, which together are the
    pairs one process draws (a remainder that does not split evenly is left out)."""
    r0, r1 = train.rank_indices(5, 0, 2), train.rank_indices(5, 1, 2)
    assert (r0, r1) == ([0, 2], [1, 3]) and sorted(r0 + r1) == train.rank_indices(4, 0, 1)
    ds = data.PairDataset([("synth", data.read_got10k(synth_dir, "train"))], None, 5, 0)
    pairs = {i: ds[i] for i in range(4)}
    for i in r0:
        for j in r1:
            assert not torch.equal(pairs[i]["search"], pairs[j]["search"]), (i, j)
    with pytest.raises(ValueError, match="smaller than the 3 processes"):
        train.rank_indices(2, 0, 3)


def test_default_workers_follow_device_and_cores(synth_dir, tmp_path):
    assert train.default_workers("cuda", 16) == 14  # the H200 host: the GPU waits on the loader
    assert train.default_workers("cuda", 16, world=4) == 2
    assert train.default_workers("cuda", 2) == 1
    assert train.default_workers("cpu", 2) == 0  # 2 cores: a worker slows the step
    assert train.default_workers("cpu", 8) == 4
    assert train.default_workers("cpu", 8, world=4) == 0
    assert train.default_workers("mps", 10) == 4
    with pytest.raises(ValueError, match="--workers"):
        train.main(tiny_args(synth_dir, tmp_path, "--workers", "-1"))
