"""Train HiT: the paper's recipe, readable top to bottom.

Paper Sec. 3.4 (Eq. 4): the corner head's box is trained with
    L = lambda_giou * L_giou(b, b*) + lambda_L1 * L_1(b, b*),  lambda_giou = 2, lambda_L1 = 5,
on (x1, y1, x2, y2) normalised to the search crop (the target box clamped to [0, 1]).
Sec. 4.1 and the released configs (../shared/HIT_NOTES.md, "Training"): AdamW, lr 5e-4 and
weight decay 1e-4 on every parameter, gradient-norm clip 0.1, 1500 epochs of 60,000 pairs,
lr x0.1 at 80 % of training (epoch 1200), 32 pairs per device; LaSOT, GOT-10k, COCO and
TrackingNet mixed 1:1:1:1; the backbone starts from LeViT ImageNet weights.

    python train.py --variant tiny                           # procedural set, made once
    python train.py --variant base --data got10k:/d/got10k,lasot:/d/lasot,coco:/d/coco \
        --levit-weights LeViT-384.pth
    torchrun --nproc_per_node 4 train.py --variant base ...  # DDP, 32 pairs per GPU

DIR/last.pth (every epoch, written atomically) holds everything `--resume` needs to
continue exactly; `hit.load_checkpoint(DIR/last.pth)` gives the tracker network.
"""
import argparse
import copy
import dataclasses
import json
import math
import os
import random
import shutil
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

LOSS_WEIGHTS = {"giou": 2.0, "l1": 5.0}  # Eq. 4
RUN_ONLY_ARGS = {"resume", "out", "device", "workers", "val_every", "val_sequences", "save_every",
                 "stop_after", "synth_dir"}  # may change on --resume without changing the result
SYNTH_MARKER = "COMPLETE.json"  # written last: a folder without it is redone, not trusted


# ----------------------------------------------------------------------------- boxes and loss
def box_cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def giou(a, b, eps=1e-7):
    """Generalised IoU (Rezatofighi et al. 2019) of paired xyxy boxes (..., 4) -> (...,).
    Boxes with x2 < x1 or y2 < y1 (the two corners are predicted independently) count as
    empty; every division is guarded, so degenerate boxes give finite values, never NaN."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt, rb = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=eps)
    lt_c = torch.min(torch.min(a[..., :2], a[..., 2:]), torch.min(b[..., :2], b[..., 2:]))
    rb_c = torch.max(torch.max(a[..., :2], a[..., 2:]), torch.max(b[..., :2], b[..., 2:]))
    enclosing = (rb_c - lt_c).prod(-1)  # smallest box holding both (corners in any order)
    return iou - (enclosing - union) / enclosing.clamp(min=eps)


def giou_loss(pred_xyxy, gt_xyxy):
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


# ----------------------------------------------------------------------------- command line
def build_parser():
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
    p.add_argument("--lr-drop", type=float, default=0.8, help="lr x0.1 after this fraction of the epochs")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="epochs of linear lr warm-up from 0 (not in the paper)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--out", default="runs/hit", help="folder for last.pth and log.jsonl")
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from OUT/last.pth, or from the checkpoint path given")
    p.add_argument("--save-every", type=int, default=0, help="also keep OUT/epoch_XXXX.pth every K epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: all cores but 2 per process on CUDA; on a "
                   "CPU 0 with <= 2 cores per process, else up to 4)")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (Inductor); the first step compiles (seconds to "
                        "minutes); measured on a 2-core AMX CPU: 1.22x the bf16 HiT-Tiny step, 1.1x with "
                        "data loading")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 (fp16 + loss scaling where bf16 is missing) on CUDA; "
                        "bf16 on CPUs with native bfloat16 (measured 1.8x the fp32 step with AVX512-BF16, 2.5x with AMX; "
                        "0.84x on an H100 at batch 32, where the step is bound by kernel launches)")
    p.add_argument("--levit-weights", default=None, help="LeViT ImageNet weights for the backbone")
    p.add_argument("--data", default=None,
                   help="comma list of name:path, name in got10k, lasot, trackingnet, coco "
                        "(default: the procedural set, generated once into --synth-dir)")
    p.add_argument("--data-weights", default=None, help="sampling weights, comma list (default 1 each)")
    p.add_argument("--center-jitter", type=float, default=3.5,
                   help="search-crop centre jitter, in units of the jittered box's sqrt(area) (released: 3.5; "
                        "for hour-long runs 1.0 with --scale-jitter 0.25 gave +23 AUC, see the README)")
    p.add_argument("--scale-jitter", type=float, default=0.5,
                   help="search-crop scale jitter, std of the log size per axis (released: 0.5)")
    p.add_argument("--wide-fraction", type=float, default=0.0,
                   help="share of search crops jittered as released (3.5 / 0.5) instead of the two flags above; "
                        "mixes in pairs with the target far from the crop centre (not in the release; 0.25 cost "
                        "4.9 AUC in an hour-long run, see the README)")
    p.add_argument("--synth-dir", default="data_cache/synth_v1")
    p.add_argument("--synth-sequences", type=int, default=300)
    p.add_argument("--synth-frames", type=int, default=100)
    p.add_argument("--synth-seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=0, help="track the procedural val split every K epochs")
    p.add_argument("--val-sequences", type=int, default=20, help="at most this many val sequences")
    p.add_argument("--baseline-only", action="store_true",
                   help="print the static-box baseline AUC on the procedural val split and exit")
    p.add_argument("--pos-layout", default="diagonal", choices=attention_bias.LAYOUTS,
                   help="position-encoding layout (Table 6 ablation)")
    p.add_argument("--bridge-stages", default="max,mid,min", help="Bridge Module stages (Table 5 ablation)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this many epochs in this invocation (schedule still spans --epochs)")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (debug)")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="MIN",
                   help="fit the run into MIN minutes of wall time from the start of train.py (data "
                        "generation included): after the first epoch, --epochs is lowered (never raised) "
                        "to what fits at that epoch's pace and stored in the checkpoint, so --resume "
                        "continues exactly; the schedule spans the lowered count (not in the paper; 0: off)")
    return p


DATA_READERS = ("got10k", "lasot", "trackingnet", "coco")


def parse_data_spec(spec):
    """'got10k:/a,lasot:/b' -> [("got10k", "/a"), ("lasot", "/b")] with clear errors."""
    items = []
    for item in (s.strip() for s in spec.split(",")):
        name, sep, path = item.partition(":")
        name = name.strip().lower()
        if not item or not sep or not path.strip():
            raise ValueError(f"--data item {item!r}: expected name:path, e.g. got10k:/data/got10k")
        if name not in DATA_READERS:
            raise ValueError(f"--data item {item!r}: unknown dataset {name!r}; expected one of {DATA_READERS}")
        if not Path(path).exists():
            raise ValueError(f"--data item {item!r}: path {path} does not exist")
        items.append((name, path))
    return items


def read_sources(items):
    readers = {"got10k": lambda r: data.read_got10k(r, "train"), "lasot": lambda r: data.read_lasot(r, "train"),
               "trackingnet": lambda r: data.read_trackingnet(r, "train"), "coco": data.read_coco}
    sources = [(name, readers[name](path)) for name, path in items]
    for name, seqs in sources:
        if not seqs:
            raise ValueError(f"--data {name}: no training sequences found")
    return sources


# ----------------------------------------------------------------------------- procedural data
def ensure_synth(folder, sequences, frames, seed, log=print):
    """Generate the procedural set once into `folder`. It is written to folder.partial and
    renamed when complete, with SYNTH_MARKER (its parameters) written last: an interrupted
    generation is redone, a folder without the marker is not ours and is never deleted."""
    folder, want = Path(folder), {"sequences": sequences, "frames": frames, "seed": seed}
    marker = folder / SYNTH_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return folder
    if folder.exists() and not marker.is_file():
        raise ValueError(f"--synth-dir {folder} exists but was not made by train.py (no {SYNTH_MARKER}); "
                         f"remove it, pick another --synth-dir, or train on it with --data got10k:{folder}")
    if folder.exists():
        log(f"{folder}: made with {json.loads(marker.read_text())}, not {want}; generating it again")
        shutil.rmtree(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"generating the procedural set ({sequences} sequences x {frames} frames) in {folder}")
    data.synth(tmp, sequences, frames, seed, workers=os.cpu_count() or 1)  # same bytes for any count
    (tmp / SYNTH_MARKER).write_text(json.dumps(want))
    os.replace(tmp, folder)
    return folder


# ----------------------------------------------------------------------------- devices and DDP
def setup_distributed(device_arg):
    """(rank, world, device); under torchrun joins the process group (nccl/gloo)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = fast.default_device() if device_arg == "auto" else torch.device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def default_workers(device_type, cores, world=1):
    """Loader processes per training process. On CUDA the GPU waits on the loader (an H200
    host: 14 workers fed batch 128 at 1,450 pairs/s, half of what the step allows), so
    all cores but two (the training process and its pin-memory thread). On a CPU the
    loader takes cores from the network: with 2 cores, 1 worker ran slower than 0."""
    cores = max(1, cores // world)
    if device_type == "cuda":
        return max(1, cores - 2)
    return 0 if cores <= 2 else min(4, cores)


def barrier(world):
    if world > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- checkpoints
def rng_state():
    """All RNG states as tensors and plain Python types (hit.safe_load can read them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": list(random.getstate())}


def set_rng_state(s):
    torch.set_rng_state(s["torch"].clone().to(torch.uint8))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.clone().to(torch.uint8) for t in s["cuda"]])
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


def epochs_within(budget_s, elapsed_s, epoch_s, done, max_epochs):
    """--time-budget: how many epochs the run gets. `done` epochs have run in `elapsed_s`
    seconds since launch; each further one is expected to take `epoch_s`. Never more than
    max_epochs, never fewer than `done`."""
    more = math.floor((budget_s - elapsed_s) / epoch_s) if epoch_s > 0 else max_epochs
    return max(done, min(max_epochs, done + more))


def save_atomic(obj, path):
    """torch.save to path.tmp, fsync, rename: a crash mid-write leaves the old file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def trim_log(path, last_epoch):
    """On resume, keep only the log lines of epochs the checkpoint holds (and whole lines)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= last_epoch:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    path.write_text("".join(keep))


# ----------------------------------------------------------------------------- one step
def train_step(model, batch, optimizer, device, grad_clip=0.1, scaler=None, amp_dtype=None,
               corner_weight=0.0):
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
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}


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


# ----------------------------------------------------------------------------- validation
_warned = set()


def validate(model, val_root, max_sequences, device):
    """OPE AUC (%) on the procedural val split with track.py, on a fused copy of the model."""
    try:
        import track  # written alongside; optional here
        seqs = data.read_got10k(val_root, "val")[:max_sequences]
        tracker = track.Tracker(copy.deepcopy(model).eval(), device=device)
        results = [(track.run_sequence(tracker, s)[0], s.gt, s.visible) for s in seqs]
        return track.ope_summary(results)["auc"]
    except Exception as e:  # noqa: BLE001 - validation must never stop a long training run
        if "val" not in _warned:
            _warned.add("val")
            warnings.warn(f"--val-every: validation unavailable ({type(e).__name__}: {e})")
        return None


def static_box_auc(val_root, max_sequences):
    """Baseline for the README: AUC (%) of a 'tracker' that reports the first box forever."""
    import track
    seqs = data.read_got10k(val_root, "val")[:max_sequences]
    return track.ope_summary([(np.repeat(s.gt[:1], len(s.frames), axis=0), s.gt, s.visible) for s in seqs])["auc"]


# ----------------------------------------------------------------------------- main loop
def main(argv=None):
    t_launch = time.time()  # --time-budget counts from here, data generation included
    args = build_parser().parse_args(argv)
    if args.time_budget < 0:
        raise ValueError(f"--time-budget must be >= 0 minutes, got {args.time_budget}")
    rank, world, device = setup_distributed(args.device)
    if args.workers is None:
        args.workers = default_workers(device.type, fast.usable_cores(), world)
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    log = print if rank == 0 else (lambda *a, **k: None)
    out = Path(args.out)

    # Data: the given datasets, or the procedural set (rank 0 generates it, the rest wait);
    # validation always tracks the procedural val split.
    items = parse_data_spec(args.data) if args.data else []
    if not items or args.val_every or args.baseline_only:
        if rank == 0:
            ensure_synth(args.synth_dir, args.synth_sequences, args.synth_frames, args.synth_seed, log)
        barrier(world)
    if args.baseline_only:
        auc = static_box_auc(args.synth_dir, args.val_sequences) if rank == 0 else None
        log(f"static-box baseline: AUC {auc:.2f} on {args.synth_dir}/val (first {args.val_sequences} sequences)")
        return auc
    sources = read_sources(items) if items else [("synth", data.read_got10k(args.synth_dir, "train"))]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        weights = [float(w) for w in args.data_weights.split(",")] if args.data_weights else [1.0] * len(sources)
    except ValueError:
        raise ValueError(f"--data-weights {args.data_weights!r}: expected numbers separated by commas") from None
    if len(weights) != len(sources):
        raise ValueError(f"--data-weights has {len(weights)} values for {len(sources)} datasets")
    dataset = data.PairDataset(sources, weights, args.samples_per_epoch, args.seed,
                               center_jitter=args.center_jitter, scale_jitter=args.scale_jitter,
                               wide_fraction=args.wide_fraction)
    # Every pair depends only on (seed, epoch, index): each rank takes every world-th index,
    # in order, so the data is the same however the run is split or interrupted.
    per_rank = args.samples_per_epoch // world
    if per_rank < 1:
        raise ValueError(f"--samples-per-epoch {args.samples_per_epoch} is smaller than the {world} processes")
    indices = list(range(rank, per_rank * world, world))
    loader_kw = dict(batch_size=args.batch_size, sampler=indices, num_workers=args.workers,
                     pin_memory=device.type == "cuda", drop_last=False)
    steps = math.ceil(per_rank / args.batch_size)
    if args.max_steps:
        steps = min(steps, args.max_steps)

    # Model, optimizer (AdamW, every parameter alike), step schedule (x0.1 at 80 %).
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = hit.build_hit(args.variant, args.pos_layout, tuple(args.bridge_stages.split(",")))
    if args.levit_weights:
        levit.load_imagenet_weights(model.backbone.body, args.levit_weights)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # Stepped once per optimizer step; a closure, so its state_dict is just the step count.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, steps, args))
    amp_dtype, scaler = amp_settings(args.amp, device)

    start_epoch = 0
    if not args.resume and (out / "last.pth").exists():
        raise ValueError(f"{out / 'last.pth'} exists: pass --resume to continue it, or another --out")
    if args.resume:
        path = out / "last.pth" if args.resume == "last" else Path(args.resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
        ckpt = hit.safe_load(path)
        if hit.config_from_dict(ckpt["config"]) != model.cfg:
            raise ValueError(f"--resume: {path} holds {ckpt['config']}, this run builds {model.cfg}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "milestones" in ckpt["scheduler"]:
            raise ValueError(f"--resume: {path} was written by an older train.py (per-epoch MultiStepLR)")
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        if args.time_budget and ckpt["args"].get("time_budget") == args.time_budget:
            args.epochs = min(args.epochs, ckpt["args"]["epochs"])  # as the budget set it after epoch 1
        changed = {k: (v, getattr(args, k, None)) for k, v in ckpt["args"].items()
                   if k not in RUN_ONLY_ARGS and plain(getattr(args, k, None)) != v}
        if changed:
            warnings.warn(f"--resume: settings differ from the checkpoint's (was, now): {changed}")
        start_epoch = ckpt["epoch"]
        if rank == 0:
            trim_log(out / "log.jsonl", start_epoch)
        log(f"resumed from {path} after epoch {start_epoch}")
    raw_model = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if args.compile:
        # One static graph per batch size (a ragged last batch adds a second, not a dynamic one).
        model = torch.compile(model, dynamic=False)
    log(f"HiT-{args.variant}: {hit.count_params(raw_model):,} params on {device} x{world}; "
        f"{len(sources)} source(s); {steps} steps/epoch of {args.batch_size}x{world} pairs; "
        f"{args.workers} loader worker(s)")
    t_start, done_epochs = time.time(), 0
    for epoch in range(start_epoch, args.epochs):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, **loader_kw)
        model.train()
        sums, n_seen, t0 = torch.zeros(3, dtype=torch.float64), 0, time.time()
        t_steady = None  # end of step 3: the pace for --time-budget leaves out compilation
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0,
                   dynamic_ncols=True, leave=False)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            lr = optimizer.param_groups[0]["lr"]
            m = train_step(model, batch, optimizer, device, args.grad_clip, scaler, amp_dtype,
                           args.corner_loss)
            scheduler.step()
            b = len(batch["search_box"])
            sums += torch.tensor([m["loss"], m["giou"], m["l1"]], dtype=torch.float64) * b
            n_seen += b
            rate = n_seen * world / max(time.time() - t0, 1e-9)
            left = ((args.epochs - epoch) * steps - step - 1) * args.batch_size * world / rate
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{lr:.2e}",
                            sps=f"{rate:.1f}", eta=time.strftime("%H:%M:%S", time.gmtime(left))
                            if left < 86400 else f"{left / 86400:.1f}d")
            bar.update(1)
            if step == 2:
                t_steady = time.time()
        bar.close()
        stats = torch.cat([sums, torch.tensor([n_seen], dtype=torch.float64)])
        if world > 1:
            stats = stats.to(device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        now = time.time()
        seconds = now - t0
        if args.time_budget and epoch == 0:
            # steady pace of the steps after the third, plus 3 % for checkpoints and drift
            per_step = (now - t_steady) / (steps - 3) if t_steady and steps > 6 else seconds / steps
            fit = epochs_within(60 * args.time_budget, now - t_launch, 1.03 * per_step * steps,
                                1, args.epochs)
            if world > 1:  # every rank must stop at the same epoch: rank 0 decides
                fit_t = torch.tensor([fit], device=device)
                dist.broadcast(fit_t, 0)
                fit = int(fit_t.item())
            if fit < args.epochs:
                log(f"--time-budget {args.time_budget:g} min: {fit} of {args.epochs} epochs fit "
                    f"({per_step * steps:.0f} s per epoch); the schedule now spans {fit}")
                args.epochs = fit
                for group, base in zip(optimizer.param_groups, scheduler.base_lrs):  # next step's lr,
                    group["lr"] = base * lr_factor(scheduler.last_epoch, steps, args)  # on the new span
        record = {"epoch": epoch + 1, "loss": (stats[0] / stats[3]).item(), "giou": (stats[1] / stats[3]).item(),
                  "l1": (stats[2] / stats[3]).item(), "lr": lr,  # lr of the epoch's last step
                  "samples_per_s": stats[3].item() / seconds, "seconds": seconds}
        if rank == 0 and args.val_every and (epoch + 1) % args.val_every == 0:
            record["val_auc"] = validate(raw_model, args.synth_dir, args.val_sequences, device)
        if rank == 0:
            ckpt = {"model": raw_model.state_dict(), "config": plain(dataclasses.asdict(raw_model.cfg)),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1, "rng": rng_state(), "args": plain(vars(args)),
                    "scaler": scaler.state_dict() if scaler is not None else None}
            save_atomic(ckpt, out / "last.pth")
            if args.save_every and (epoch + 1) % args.save_every == 0:
                save_atomic(ckpt, out / f"epoch_{epoch + 1:04d}.pth")
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        barrier(world)
        done_epochs += 1
        if args.stop_after and done_epochs >= args.stop_after or epoch + 1 >= args.epochs:
            break  # (--time-budget may have lowered args.epochs after the range was made)
    if world > 1:
        dist.destroy_process_group()
    log(f"done: {done_epochs} epoch(s) in {time.time() - t_start:.0f} s; checkpoint {out / 'last.pth'}")
    return raw_model


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"train.py: error: {e}")
