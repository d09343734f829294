"""Train HiT: the paper's recipe, readable top to bottom.

Paper Sec. 3.4 (Eq. 4): the corner head's box is trained with
    L = lambda_giou * L_giou(b, b*) + lambda_L1 * L_1(b, b*),  lambda_giou = 2, lambda_L1 = 5,
on (x1, y1, x2, y2) normalised to the search crop (the target box clamped to [0, 1]).
Sec. 4.1, with the released configs filling in what the paper leaves out: AdamW, lr 5e-4
and weight decay 1e-4 on every parameter, gradient-norm clip 0.1, 1500 epochs of 60,000
pairs (90M pairs: GPU-days), lr x0.1 at 80 % of training (epoch 1200), 32 pairs per
device on 4 GPUs; LaSOT, GOT-10k, COCO and TrackingNet mixed 1:1:1:1; the backbone starts
from LeViT ImageNet weights, everything else from random.

    python train.py --variant tiny                           # procedural set (synth.py), made once
    python train.py --variant base --data got10k:/d/got10k,lasot:/d/lasot,coco:/d/coco \
        --levit-weights LeViT-384.pth
    torchrun --nproc_per_node 4 train.py --variant base ...  # DDP, 32 pairs per GPU

The loss, the model / optimizer / lr, `train_step`, `train_epoch` and `main` come first; run
management (data, DDP, checkpoints, resume, interrupt, time budget, arguments) after them.
DIR/last.pth (every epoch, written atomically) holds everything `--resume` needs to continue
exactly; `hit.load_checkpoint(DIR/last.pth)` gives the tracker network.

Deviations from the released trainer (its step agrees to float32 rounding: the loss and
both terms, every gradient, the clipped step, AdamW's moments, the lr at every epoch):
- Matched: a batch with an inverted box (x2 < x1 or y2 < y1) trains on L1 alone (giou_loss);
  the last partial batch is dropped; DDP runs with broadcast_buffers=False; and in
  data.PairDataset per-crop flips, the search frame at most t + max_gap - 1, the template
  redrawn at each widening, all-padding crops redrawn, targets wholly outside the crop
  kept with a zero-area box, sequences under 20 frames skipped.
- Without --data the pairs come from the procedural set, and without --levit-weights the
  backbone starts random (the release always loads ImageNet weights).
- A pair depends on (seed, epoch, index) alone, so a run resumes exactly, however split.
- Options, off by default: --corner-loss, --schedule cosine, --warmup, --time-budget (none
  in the release), --amp, --compile.
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import math
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import attention_bias
import data
import fast
import hit
import levit
import synth

LOSS_WEIGHTS = {"giou": 2.0, "l1": 5.0}  # Eq. 4
RUN_ONLY_ARGS = {"resume", "out", "device", "workers", "val_every", "val_sequences", "stop_after",
                 "synth_dir"}  # may change on --resume without changing the result
DAY_S = 86400  # a run projected longer than this says so once (Pace)


# ----------------------------------------------------------------------------- boxes and loss (Eq. 4)
def box_cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def giou(a, b, eps=1e-7):
    """Generalised IoU (Rezatofighi et al. 2019) of paired xyxy boxes (..., 4) -> (...,), for
    boxes with x2 >= x1 and y2 >= y1 (giou_loss sees to it). The guarded divisions keep
    degenerate boxes (two points at one place) finite."""
    lt, rb = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (a[..., 2:] - a[..., :2]).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1) - inter
    enclosing = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).prod(-1)
    return inter / union.clamp(min=eps) - (enclosing - union) / enclosing.clamp(min=eps)


def giou_loss(pred_xyxy, gt_xyxy):
    """Mean 1 - GIoU; a constant 0 for the whole batch (no GIoU gradient this step) when any
    box is inverted, as the released trainer: its generalized_box_iou asserts x2 >= x1 and
    y2 >= y1, and compute_losses catches the failure and sets the term to 0. The corners are
    predicted independently: from random weights, batches often train on L1 alone."""
    if not all((x[..., 2:] >= x[..., :2]).all() for x in (pred_xyxy, gt_xyxy)):  # NaN fails too
        return pred_xyxy.new_zeros(())
    return (1.0 - giou(pred_xyxy, gt_xyxy)).mean()


def box_loss(pred_cxcywh, gt_cxcywh):
    """Eq. 4 on a batch: returns (total, {"giou": ..., "l1": ...}) with scalar tensors."""
    pred = box_cxcywh_to_xyxy(pred_cxcywh.float())
    gt = box_cxcywh_to_xyxy(gt_cxcywh.float()).clamp(0.0, 1.0)
    parts = {"giou": giou_loss(pred, gt), "l1": torch.nn.functional.l1_loss(pred, gt)}
    return sum(LOSS_WEIGHTS[k] * v for k, v in parts.items()), parts


def corner_loss(logits, gt_cxcywh, sigma=1.0):
    """Optional dense supervision of the corner maps (not in the paper; --corner-loss):
    cross-entropy between each corner's softmax over its (B, 2, H, W) logits and a
    Gaussian (sigma in cells) around the true corner's cell. The corner coordinate of
    cell i is i * stride (CornerHead), so the true cell is x * H for x in [0, 1]. Eq. 4's
    soft-argmax gets gradient only through the map's mean; this tells every cell where
    the corner is, which shortens the from-scratch plateau."""
    B, _, H, W = logits.shape
    gt = box_cxcywh_to_xyxy(gt_cxcywh.float()).clamp(0.0, 1.0)  # (B, 4) x1 y1 x2 y2
    cells = torch.arange(W, device=logits.device, dtype=torch.float32)  # (W,)
    ex = torch.exp(-0.5 * ((cells - gt[:, 0::2, None] * W) / sigma) ** 2)  # (B, 2, W): x1, x2
    ey = torch.exp(-0.5 * ((cells - gt[:, 1::2, None] * H) / sigma) ** 2)  # (B, 2, H): y1, y2
    target = (ey[:, :, :, None] * ex[:, :, None, :]).flatten(2)  # (B, 2, H*W)
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
    logp = logits.float().flatten(2).log_softmax(-1)  # (B, 2, H*W)
    return -(target * logp).sum(-1).mean()


# ----------------------------------------------------------------------------- model, optimizer, lr (Sec. 4.1)
@dataclasses.dataclass
class Training:
    """The run: the network, the state each step advances (the checkpoint saves it), where it runs."""
    args: argparse.Namespace
    model: torch.nn.Module  # the plain network; checkpoints hold its parameter names
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp_dtype: torch.dtype | None  # autocast dtype of --amp, None for float32
    scaler: torch.amp.GradScaler | None  # loss scaling for float16 autocast only
    device: torch.device
    steps: int  # optimizer steps per epoch and process
    rank: int = 0
    world: int = 1
    log: object = print
    net: torch.nn.Module | None = None  # what the step calls: model, or its DDP / compiled wrapper
    partial: dict | None = None  # an interrupted epoch: {"step": the next one, "sums": train_epoch's}


def make_training(args, device, steps, rank=0, world=1, log=print):
    """HiT (LeViT ImageNet weights in the backbone if given), AdamW with every parameter at
    one lr, and the lr schedule stepped once per optimizer step."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = hit.build_hit(args.variant, args.pos_layout, tuple(args.bridge_stages.split(",")))
    if args.levit_weights:
        levit.load_imagenet_weights(model.backbone.body, args.levit_weights)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # A closure, so its state_dict is just the step count; it reads args.epochs each step,
    # which --time-budget may lower.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, steps, args))
    return Training(args, model, optimizer, scheduler, *amp_settings(args.amp, device), device, steps,
                    rank, world, log)


def amp_settings(amp, device):
    """(autocast dtype or None, GradScaler or None) for --amp on `device`. On the CPU only
    native bfloat16 pays: emulated bf16 is slower than fp32, so there it warns and trains
    in fp32. Weights, optimizer state and the loss stay float32 either way."""
    if not amp:
        return None, None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, None
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cpu" and fast.cpu_has_bf16():
        return torch.bfloat16, None
    warnings.warn(f"--amp: no native bfloat16 on {device.type} here; training in float32")
    return None, None


def lr_factor(step, steps_per_epoch, args):
    """lr / --lr after `step` optimizer steps: --warmup epochs of linear ramp, then the
    paper's x0.1 at --lr-drop of the epochs (Sec. 4.1), or a half cosine down to 0."""
    total = max(1, args.epochs * steps_per_epoch)
    warm = args.warmup * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if args.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total - warm))))
    drop_epoch = max(1, round(args.lr_drop * args.epochs))
    return 0.1 if step >= drop_epoch * steps_per_epoch else 1.0


def wrap(model, world, device, compile_):
    """The module the steps call: DDP across processes (buffers not broadcast, as the
    release), then torch.compile if asked."""
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if compile_:
        net = torch.compile(net, dynamic=False)  # one static graph: every batch is full (drop_last)
    return net


# ----------------------------------------------------------------------------- one step, one epoch, the run
def optimizer_step(loss, optimizer, params, grad_clip, scaler=None):
    """Backward, clip the gradient norm of `params` to grad_clip (0: no clipping), AdamW
    step; through the loss scaler where there is one (float16 autocast on a GPU)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients
    else:
        loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_step(model, batch, optimizer, device, grad_clip=0.1, scaler=None, amp_dtype=None, corner_weight=0.0):
    """Forward, Eq. 4 (+ corner_weight * corner_loss), backward, clip, AdamW step.
    Returns floats {loss, giou, l1} (+ corner)."""
    template = batch["template"].to(device, non_blocking=True)
    search = batch["search"].to(device, non_blocking=True)
    target = batch["search_box"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(template, search, maps=corner_weight > 0)
    loss, parts = box_loss(out["pred_boxes"], target)
    if corner_weight > 0:
        parts["corner"] = corner_loss(out["score_maps"], target)
        loss = loss + corner_weight * parts["corner"]
    optimizer_step(loss, optimizer, model.parameters(), grad_clip, scaler)
    return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}


def loader_generator(args, epoch):
    """A DataLoader's own generator (for its workers' base seed; pairs depend on seed,
    epoch and index only). Without one, opening the loader draws from the global CPU
    generator, which drop path (HiT-Base) also draws from: a run resumed mid-epoch opens
    its loader after restoring that generator, the interrupted run before saving it."""
    return torch.Generator().manual_seed(args.seed * 100003 + epoch)


def train_epoch(run, dataset, indices, epoch, pace, interrupt=None):
    """One epoch of run.steps steps -> its log record (losses averaged over every rank's
    pairs), from run.partial's step on where an interrupt stopped it. When `interrupt` is
    requested, stops after the step under way, sets run.partial and returns None."""
    args, steps = run.args, run.steps
    start, sums = (run.partial["step"], run.partial["sums"]) if run.partial else (0, [0.0] * 4)
    sums, run.partial = torch.tensor(sums, dtype=torch.float64), None  # loss, giou, l1 (pair-weighted), pairs
    pairs_before = sums[3].item()
    dataset.set_epoch(epoch)
    # Pairs depend on (seed, epoch, index) only, so skipping the indices of the steps done
    # gives the interrupted run's next batches. The last partial batch is dropped (released).
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=indices[start * args.batch_size:],
                                         drop_last=True, num_workers=args.workers,
                                         pin_memory=run.device.type == "cuda", generator=loader_generator(args, epoch))
    run.net.train()
    pace.start_epoch(start)
    bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{args.epochs}", disable=run.rank != 0,
               dynamic_ncols=True, leave=False)
    for step, batch in enumerate(loader, start):
        lr = run.optimizer.param_groups[0]["lr"]
        m = train_step(run.net, batch, run.optimizer, run.device, args.grad_clip, run.scaler, run.amp_dtype,
                       args.corner_loss)
        run.scheduler.step()
        b = len(batch["search_box"])
        sums += torch.tensor([m["loss"] * b, m["giou"] * b, m["l1"] * b, b], dtype=torch.float64)
        pace.step_done(step - start, steps - start, (args.epochs - epoch) * steps - step - 1, run.log)
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        if interrupt is not None and interrupt.requested and step + 1 < steps:
            bar.close()
            run.partial = {"step": step + 1, "sums": sums.tolist()}
            return None
    bar.close()
    if run.world > 1:
        sums = sums.to(run.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    seconds = pace.end_epoch()
    return {"epoch": epoch + 1, "loss": (sums[0] / sums[3]).item(), "giou": (sums[1] / sums[3]).item(),
            "l1": (sums[2] / sums[3]).item(), "lr": lr,  # lr of the epoch's last step
            "samples_per_s": (sums[3].item() - pairs_before) / seconds,  # pairs of this process's steps
            "seconds": seconds}


def validate(model, val_root, max_sequences, device):
    """OPE AUC (%) on the procedural val split with track.py, on a copy of the model."""
    try:
        import track  # written alongside; optional here
        seqs = data.read_got10k(val_root, "val")[:max_sequences]
        tracker = track.Tracker(copy.deepcopy(model).eval(), device=device)
        results = [(track.run_sequence(tracker, s)[0], s.gt, s.visible) for s in seqs]
        return track.ope_summary(results)["auc"]
    except Exception as e:  # noqa: BLE001 - validation must never stop a long training run
        warnings.warn(f"--val-every: validation unavailable ({type(e).__name__}: {e})")  # once per message
        return None


def finish_epoch(run, record):
    """Rank 0, after each epoch: validation if due (every --val-every epochs, and after the first
    with --time-budget, whose pace must know its cost), the log line, then the checkpoint (a
    crash between leaves a line that resume drops). Returns the seconds validation took."""
    args, val_s = run.args, 0.0
    if args.val_every and (record["epoch"] % args.val_every == 0 or record["epoch"] == 1 and args.time_budget):
        t = time.time()
        record["val_auc"] = validate(run.model, args.synth_dir, args.val_sequences, run.device)
        val_s = time.time() - t
    with open(Path(args.out) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    save_checkpoint(run, record["epoch"])
    run.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    return val_s


def train_epochs(run, dataset, indices, first, pace, interrupt):
    """Epochs first, first + 1, ... (the first from run.partial on, when a resumed run
    stopped inside it): each trained, validated if due, logged and saved. An interrupt
    ends the run with the checkpoint of where it stopped (exit 130)."""
    args, last = run.args, Path(run.args.out) / "last.pth"
    t_start, done = time.time(), 0
    fit_due = first == 0  # the budget is fitted once, on this process's first measured epoch
    for epoch in range(first, args.epochs):
        record = train_epoch(run, dataset, indices, epoch, pace, interrupt)
        if record is None:  # interrupted mid-epoch: the run so far is saved, then stop
            save_checkpoint(run, epoch)
            run.log(f"interrupted at step {run.partial['step']} of {run.steps} of epoch {epoch + 1}: "
                    f"checkpoint {last}; --resume continues from the next step")
            raise SystemExit(130)
        val_s = finish_epoch(run, record) if run.rank == 0 else 0.0
        if run.world > 1:
            dist.barrier()
        # Fitted on the first epoch, checkpoint included (the next when a resume left too few
        # of its steps to time); the checkpoint is written again with the count --resume keeps.
        if fit_due and pace.measured(run.steps):
            fit_due = False
            if pace.fit_budget(run, val_s, epoch + 1) and run.rank == 0:
                save_checkpoint(run, epoch + 1)
        done += 1
        if interrupt is not None and interrupt.requested:  # at the epoch's end: saved already
            run.log(f"interrupted after epoch {epoch + 1}: checkpoint {last}; --resume continues")
            raise SystemExit(130)
        if args.stop_after and done >= args.stop_after or epoch + 1 >= args.epochs:
            break  # (--time-budget may have lowered args.epochs after the range was made)
    run.log(f"done: {done} epoch(s) in {time.time() - t_start:.0f} s; "
            + (f"checkpoint {last}" if done else "no checkpoint was written"))


def main(argv=None):
    t_launch = time.time()  # --time-budget counts from here, data generation included
    args = parse_args(argv)
    loaded = check_out(args)  # a clash with --out or a bad --resume fails before data and model
    pace = Pace(args.time_budget, t_launch)
    rank, world, device = setup_distributed(args.device)
    if args.workers is None:
        args.workers = default_workers(device.type, fast.usable_cores(), world)
    log = tqdm.write if rank == 0 else (lambda *a, **k: None)

    items = parse_data_spec(args.data) if args.data else []  # bad --data fails before generation
    if not items or args.val_every:  # validation tracks the procedural val split
        procedural_set(args, rank, world, log)
    dataset, indices, steps = make_data(args, items, rank, world)
    run = make_training(args, device, steps, rank, world, log)
    first = resume(run, loaded)
    run.net = wrap(run.model, world, device, args.compile)
    log(f"HiT-{args.variant}: {hit.count_params(run.model):,} params on {device} x{world}; "
        f"{len(dataset.sources)} source(s); {steps} steps/epoch of {args.batch_size}x{world} pairs; "
        f"{args.workers} loader worker(s)")

    with Interrupt() if world == 1 else contextlib.nullcontext() as interrupt:
        train_epochs(run, dataset, indices, first, pace, interrupt)
    if world > 1:
        dist.destroy_process_group()
    return run.model


# ============================================================================= run management
# ----------------------------------------------------------------------------- data
READERS = ("got10k", "lasot", "trackingnet", "coco")  # data.read_dataset's training sets (its default splits)


def parse_data_spec(spec):
    """'got10k:/a,lasot:/b' -> [("got10k", "/a"), ("lasot", "/b")] with clear errors."""
    items = []
    for item in (s.strip() for s in spec.split(",")):
        name, sep, path = item.partition(":")
        name = name.strip().lower()
        if not item or not sep or not path.strip():
            raise ValueError(f"--data item {item!r}: expected name:path, e.g. got10k:/data/got10k")
        if name not in READERS:
            raise ValueError(f"--data item {item!r}: unknown dataset {name!r}; expected one of {tuple(READERS)}")
        if not Path(path).exists():
            raise ValueError(f"--data item {item!r}: path {path} does not exist")
        items.append((name, path))
    return items


def rank_indices(samples_per_epoch, rank, world):
    """This rank's pair indices of every epoch: r, r + world, r + 2 world, ... Every rank
    samples with the same seed and a pair depends only on (seed, epoch, index), so the
    ranks draw different pairs and the data is the same however the run is split or
    interrupted (a remainder of samples_per_epoch % world pairs is left out)."""
    per_rank = samples_per_epoch // world
    if per_rank < 1:
        raise ValueError(f"--samples-per-epoch {samples_per_epoch} is smaller than the {world} processes")
    return list(range(rank, per_rank * world, world))


def procedural_set(args, rank, world, log):
    """Rank 0 makes the procedural set (once, see synth.ensure) while the others wait."""
    if rank == 0:
        synth.ensure(args.synth_dir, args.synth_sequences, args.synth_frames, args.synth_seed, log)
    if world > 1:
        dist.barrier()


def make_data(args, items, rank, world):
    """(pair sampler, this rank's indices, steps per epoch) over the --data items, or the
    procedural set. Every step takes a full batch: floor(indices / batch) steps."""
    indices = rank_indices(args.samples_per_epoch, rank, world)
    steps = len(indices) // args.batch_size
    if steps < 1:
        raise ValueError(f"--samples-per-epoch {args.samples_per_epoch} gives {len(indices)} pairs per process, "
                         f"fewer than one --batch-size {args.batch_size} (the last partial batch is dropped)")
    sources = ([(name, data.read_dataset(name, path)) for name, path in items] if items
               else [("synth", data.read_got10k(args.synth_dir, "train"))])
    empty = [name for name, seqs in sources if not seqs]
    if empty:
        raise ValueError(f"--data {empty[0]}: no training sequences found")
    dataset = data.PairDataset(sources, None, args.samples_per_epoch, args.seed,
                               data.Processing(center_jitter=args.center_jitter, scale_jitter=args.scale_jitter))
    return dataset, indices, steps


# ----------------------------------------------------------------------------- devices and DDP
def setup_distributed(device):
    """(rank, world, device); under torchrun joins the process group (nccl/gloo)."""
    rank, world, local = hit.distributed_env()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def default_workers(device_type, cores, world=1):
    """Loader processes per training process. On CUDA the GPU waits on the loader, so all
    cores but two (the training process and its pin-memory thread). On a CPU the loader
    takes cores from the network, so none on small machines (TRAINING.md: on 2 cores one
    worker made the step slower)."""
    cores = max(1, cores // world)
    if device_type == "cuda":
        return max(1, cores - 2)
    return 0 if cores <= 2 else min(4, cores)


# ----------------------------------------------------------------------------- checkpoints and resume
def rng_state():
    """All RNG states as tensors and plain Python types (hit.safe_load can read them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,  # drop path
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": list(random.getstate())}


def set_rng_state(s):
    torch.set_rng_state(s["torch"].clone().to(torch.uint8))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.clone().to(torch.uint8) for t in s["cuda"]])
    if s.get("mps") is not None and torch.backends.mps.is_available():  # older checkpoints have none
        torch.mps.set_rng_state(s["mps"].clone().to(torch.uint8))
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss = s["python"]
    random.setstate((version, tuple(state), gauss))


def plain(x):
    """argparse values -> types the safe loader rebuilds (str, numbers, lists, dicts)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x if x is None or isinstance(x, (bool, int, float, str)) else str(x)


def save_checkpoint(run, epoch):
    """OUT/last.pth after `epoch` whole epochs, and run.partial: how far the next one got
    when an interrupt stopped it, so that --resume continues from that step."""
    ckpt = {"model": run.model.state_dict(), "config": plain(dataclasses.asdict(run.model.cfg)),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "epoch": epoch, "rng": rng_state(), "args": plain(vars(run.args)),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None, "partial": run.partial}
    data.write_atomic(Path(run.args.out) / "last.pth", lambda f: torch.save(ckpt, f))


class Interrupt:
    """Ctrl-C or SIGTERM (as `timeout` and job schedulers send) during training: the step
    under way finishes, the run so far is saved mid-epoch (run.partial), and train.py
    stops; --resume continues from the next step exactly. A second signal stops at once.
    Single-process runs only: under DDP every rank would have to stop at the same step,
    so a signal there ends the run as usual (the last epoch's checkpoint)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    requested = False

    def __enter__(self):
        self.previous = [signal.signal(sig, self.handle) for sig in self.SIGNALS]
        return self

    def __exit__(self, *exc):  # the caller's handlers again (a test session's, for one)
        for sig, handler in zip(self.SIGNALS, self.previous):
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupted: finishing this step, then saving (again to stop at once)", file=sys.stderr)


def trim_log(path, last_epoch):
    """On resume, keep only the log lines of epochs the checkpoint holds (and whole lines)."""
    def epoch_of(line):
        try:
            return json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            return math.inf
    if path.is_file():
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if epoch_of(line) <= last_epoch))


def check_out(args):
    """Right after the arguments, before any data or model: refuse to start a new run over
    the one in --out, and read the --resume checkpoint. Returns (path, checkpoint), or
    None for a new run."""
    out = Path(args.out)
    if not args.resume:
        if (out / "last.pth").exists():
            raise ValueError(f"{out / 'last.pth'} exists: pass --resume to continue it, or another --out")
        return None
    path = out / "last.pth" if args.resume == "last" else Path(args.resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
    ckpt = hit.safe_load(path)  # a corrupt file: a ValueError naming it
    Pace.resumed(args, path, ckpt["args"])
    return path, ckpt


def resume(run, loaded):
    """0 for a new run in OUT; with --resume, load the checkpoint that check_out read
    (`loaded`) into `run` (run.partial: how far the next epoch got) and return the epochs
    it holds."""
    out = Path(run.args.out)
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if loaded is None:
        return 0
    path, ckpt = loaded
    if hit.config_from_dict(ckpt["config"]) != run.model.cfg:
        raise ValueError(f"--resume: {path} holds {ckpt['config']}, this run builds {run.model.cfg}")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if "milestones" in ckpt["scheduler"]:
        raise ValueError(f"--resume: {path} was written by an older train.py (per-epoch MultiStepLR)")
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    changed = {k: (v, getattr(run.args, k, "(no such option now)")) for k, v in ckpt["args"].items()
               if k not in RUN_ONLY_ARGS and plain(getattr(run.args, k, None)) != v}
    if changed:
        warnings.warn(f"--resume: settings differ from the checkpoint's (was, now): {changed}")
    if run.rank == 0:
        trim_log(out / "log.jsonl", ckpt["epoch"])
    run.partial = ckpt.get("partial")
    if run.partial and dist.is_initialized() and dist.get_world_size() > 1:  # steps and sums are one process's
        raise ValueError(f"--resume: {path} was saved mid-epoch by an interrupted single-process run; "
                         f"resume it in one process (its epoch then ends as it would have)")
    run.log(f"resumed from {path} after epoch {ckpt['epoch']}"
            + (f", step {run.partial['step']} of epoch {ckpt['epoch'] + 1}" if run.partial else ""))
    return ckpt["epoch"]


# ----------------------------------------------------------------------------- wall-clock time
def epochs_within(budget_s, elapsed_s, epoch_s, done, max_epochs):
    """--time-budget: the epochs the run gets, `done` of them run in `elapsed_s` s since launch,
    each further one expected to take `epoch_s`. Never more than max_epochs, nor under `done`."""
    more = math.floor((budget_s - elapsed_s) / epoch_s) if epoch_s > 0 else max_epochs
    return max(done, min(max_epochs, done + more))


class Pace:
    """The run's wall-clock pace and the two things train.py does with it (not in the paper):

    - --time-budget MIN: after the first epoch (its validation and checkpoint included),
      --epochs is lowered (never raised) to what fits in MIN minutes from launch at that
      epoch's pace; a resumed run keeps the count.
    - a run that projects more than DAY_S says so in one line, a few steps in.

    A pace leaves out an epoch's first WARMUP steps (compilation, allocator warm-up) once
    more than WARMUP steps have followed them; `clock` is replaceable for tests."""
    WARMUP = 3
    CHECK_AT = 10  # steps into the first epoch at which the projection is printed
    checked = False

    def __init__(self, budget_min=0.0, t_launch=None, clock=time.time):
        self.clock, self.budget_s = clock, 60.0 * budget_min
        self.t_launch = clock() if t_launch is None else t_launch

    def start_epoch(self, first_step=0):
        """`first_step`: where a resumed epoch starts; the pace counts the steps from there."""
        self.t0, self.first, self.t_steady = self.clock(), first_step, None

    def per_step(self, done, now):
        """Seconds per step over the `done` steps of this epoch so far."""
        if self.t_steady is not None and done > 2 * self.WARMUP:
            return (now - self.t_steady) / (done - self.WARMUP)
        return (now - self.t0) / done

    def step_done(self, step, steps, steps_left, log):
        """After step `step` (from 0) of an epoch of `steps`, with `steps_left` to go in the run."""
        now = self.clock()
        if step == self.WARMUP - 1:
            self.t_steady = now
        if not self.checked and step + 1 == min(steps, self.CHECK_AT):
            self.checked = True
            left = steps_left * self.per_step(step + 1, now)
            if self.budget_s:
                left = min(left, self.budget_s - (now - self.t_launch))
            if left > DAY_S:
                log(f"this run projects {left / 86400:.1f} more days: the paper's recipe is 90M pairs "
                    f"(GPU-days); see README 'Training' for the one-hour recipe")

    def end_epoch(self):
        """Seconds the epoch's steps took."""
        self.t_end = self.clock()
        return self.t_end - self.t0

    def measured(self, steps):
        """Whether this epoch's pace can be trusted for the budget: a whole epoch, or enough
        steps after a mid-epoch resume to leave the warm-up steps out (per_step)."""
        return self.first == 0 or steps - self.first > 2 * self.WARMUP

    def epoch_seconds(self, steps, now, val_s=0.0, val_every=0):
        """Expected seconds of each further epoch, at `now`, after the first epoch and what
        followed its steps (log line, checkpoint, and validation, which took val_s): the
        steps at the steady pace plus 3 % for drift, what followed them, with validation
        at its share when it runs every val_every epochs."""
        after = now - self.t_end - val_s
        per_step = self.per_step(steps - self.first, self.t_end)  # this process's steps of the epoch
        return 1.03 * per_step * steps + after + (val_s / val_every if val_every else 0.0)

    def fit_budget(self, run, val_s=0.0, done=1):
        """After the first epoch (`done` epochs in all), its validation and checkpoint: lower
        run.args.epochs to what fits, and set the next step's lr on the new span. Returns
        whether it lowered them (the checkpoint just written then holds the old count)."""
        if not self.budget_s:
            return False
        args, now = run.args, self.clock()
        per_epoch = self.epoch_seconds(run.steps, now, val_s, args.val_every)
        fit = epochs_within(self.budget_s, now - self.t_launch, per_epoch, done, args.epochs)
        if run.world > 1:  # every rank must stop at the same epoch: rank 0 decides
            fit_t = torch.tensor([fit], device=run.device)
            dist.broadcast(fit_t, 0)
            fit = int(fit_t.item())
        if fit >= args.epochs:
            return False
        run.log(f"--time-budget {args.time_budget:g} min: {fit} of {args.epochs} epochs fit "
                f"({per_epoch:.0f} s per epoch); the schedule now spans {fit}")
        args.epochs = fit
        for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs):
            group["lr"] = base * lr_factor(run.scheduler.last_epoch, run.steps, args)
        return True

    @staticmethod
    def resumed(args, path, saved):
        """--resume keeps the epoch count a --time-budget set (`saved`: the checkpoint's
        arguments). The budget belongs to the run's launch, so one first given on resume,
        or a different one, is refused rather than silently ignored."""
        budget = saved.get("time_budget") or 0.0
        if args.time_budget and args.time_budget != budget:
            was = f"started with --time-budget {budget:g}" if budget else "started without --time-budget"
            raise ValueError(f"--time-budget {args.time_budget:g} on --resume: {path} was {was}, and a budget "
                             f"is set when a run starts; resume without --time-budget")
        if budget:
            args.time_budget = budget
            args.epochs = min(args.epochs, saved["epochs"])


# ----------------------------------------------------------------------------- command line
def build_parser():
    """The recipe's options (what the run learns); add_run_options adds how and where it runs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", default="base", choices=sorted(hit.VARIANTS))
    p.add_argument("--epochs", type=int, default=1500)
    p.add_argument("--samples-per-epoch", type=int, default=60_000, help="pairs per epoch, all devices")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per device and step")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=0.1, help="max gradient norm (0: off)")
    p.add_argument("--corner-loss", type=float, default=0.0,
                   help="weight of an extra cross-entropy on the corner maps (not in the paper; "
                   "0: Eq. 4 only)")
    p.add_argument("--schedule", default="step", choices=("step", "cosine"),
                   help="step: lr x0.1 after --lr-drop of the epochs (paper); cosine: lr decays to 0 "
                        "along a half cosine, step by step (not in the paper; for short runs)")
    p.add_argument("--lr-drop", type=float, default=0.8,
                   help="--schedule step only: lr x0.1 after this fraction of the epochs, in (0, 1] "
                        "(rounded to a whole epoch, at least the first; 1: no drop)")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="epochs of linear lr warm-up from 0 (not in the paper)")
    p.add_argument("--levit-weights", default=None, help="LeViT ImageNet weights for the backbone")
    p.add_argument("--data", default=None,
                   help="comma list of name:path, name in got10k, lasot, trackingnet, coco, mixed "
                        "1:1:1:1 (default: the procedural set, generated once into --synth-dir)")
    p.add_argument("--center-jitter", type=float, default=3.5,
                   help="search-crop centre jitter, in units of the jittered box's sqrt(area) (released: 3.5; "
                        "short runs learn faster with 1.0 and --scale-jitter 0.25, see TRAINING.md)")
    p.add_argument("--scale-jitter", type=float, default=0.5,
                   help="search-crop scale jitter, std of the log size per axis (released: 0.5)")
    p.add_argument("--pos-layout", default="diagonal", choices=attention_bias.LAYOUTS,
                   help="position-encoding layout (Table 6 ablation)")
    p.add_argument("--bridge-stages", default="max,mid,min", help="Bridge Module stages (Table 5 ablation)")
    p.add_argument("--seed", type=int, default=0)
    return add_run_options(p)


def add_run_options(p):
    g = p.add_argument_group("the run")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--out", default="runs/hit", help="folder for last.pth and log.jsonl")
    g.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from OUT/last.pth, or from the checkpoint path given")
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: all cores but 2 per process on CUDA; on a "
                   "CPU 0 with <= 2 cores per process, else up to 4)")
    g.add_argument("--compile", action="store_true",
                   help="train through torch.compile (Inductor): faster steps once the first step "
                        "has compiled (seconds to minutes); TRAINING.md has the measurements")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 (fp16 + loss scaling where bf16 is missing) on CUDA; "
                        "bf16 on CPUs with native bfloat16, where it pays (elsewhere a warning and "
                        "float32); TRAINING.md has the measurements")
    g.add_argument("--synth-dir", default="data_cache/synth_v1")
    g.add_argument("--synth-sequences", type=int, default=300)
    g.add_argument("--synth-frames", type=int, default=100)
    g.add_argument("--synth-seed", type=int, default=0)
    g.add_argument("--val-every", type=int, default=0,
                   help="track the procedural val split every K epochs (and after the first with "
                        "--time-budget, whose pace counts validation)")
    g.add_argument("--val-sequences", type=int, default=20, help="at most this many val sequences")
    g.add_argument("--stop-after", type=int, default=0,
                   help="stop after this many epochs in this invocation (schedule still spans --epochs)")
    g.add_argument("--time-budget", type=float, default=0.0, metavar="MIN",
                   help="fit the run into MIN minutes of wall time from the start of train.py (data "
                        "generation included): after the first epoch, --epochs is lowered (never raised) "
                        "to what fits at that epoch's pace (validation and checkpoint included) and stored "
                        "in the checkpoint, so --resume continues exactly (give it when the run starts, "
                        "not on --resume); the schedule spans the lowered count (not in the paper; 0: off)")
    return p


def check_args(args, argv):
    """Counts that must be positive (0 would divide by zero or generate an empty set) or
    non-negative (0 means off); --lr-drop, which belongs to the step schedule (given with
    cosine it would go unused, silently)."""
    for flag in ("batch_size", "synth_sequences", "synth_frames"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("epochs", "stop_after", "grad_clip", "corner_loss", "workers", "time_budget"):
        if getattr(args, flag) is not None and not getattr(args, flag) >= 0:  # also refuses nan
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    p, unset = build_parser(), object()  # was --lr-drop given? argparse fills in defaults silently
    p.set_defaults(lr_drop=unset)
    if args.schedule != "step" and p.parse_args(argv).lr_drop is not unset:
        raise ValueError(f"--lr-drop {args.lr_drop:g} applies to --schedule step only, not {args.schedule}")
    if not 0 < args.lr_drop <= 1:
        raise ValueError(f"--lr-drop must be a fraction of the epochs in (0, 1], got {args.lr_drop:g}")


def parse_args(argv):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.device = hit.parse_device(args.device)
    except ValueError as err:
        p.error(str(err))
    check_args(args, argv)
    return args


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"train.py: error: {e}")
