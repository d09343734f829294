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

`main` runs the steps in order: arguments, devices, data, model, resume, then the epochs,
each ending in a checkpoint. DIR/last.pth (every epoch, written atomically) holds
everything `--resume` needs to continue exactly; `hit.load_checkpoint(DIR/last.pth)`
gives the tracker network.
"""
import argparse
import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import random
import shutil
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
SYNTH_MARKER = "COMPLETE.json"  # written last: a folder without it is redone, not trusted
DAY_S = 86400  # a run projected longer than this says so once (Pace)


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
    # Past the ~60-line guide on purpose: one flat list of every option, in --help's order,
    # reads more easily than the same list split across helpers.
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
    p.add_argument("--device", default="auto", type=device_arg,
                   help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--out", default="runs/hit", help="folder for last.pth and log.jsonl")
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from OUT/last.pth, or from the checkpoint path given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: all cores but 2 per process on CUDA; on a "
                   "CPU 0 with <= 2 cores per process, else up to 4)")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (Inductor): faster steps once the first step "
                        "has compiled (seconds to minutes); TRAINING.md has the measurements")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 (fp16 + loss scaling where bf16 is missing) on CUDA; "
                        "bf16 on CPUs with native bfloat16, where it pays (elsewhere a warning and "
                        "float32); TRAINING.md has the measurements")
    p.add_argument("--levit-weights", default=None, help="LeViT ImageNet weights for the backbone")
    p.add_argument("--data", default=None,
                   help="comma list of name:path, name in got10k, lasot, trackingnet, coco, mixed "
                        "1:1:1:1 (default: the procedural set, generated once into --synth-dir)")
    p.add_argument("--center-jitter", type=float, default=3.5,
                   help="search-crop centre jitter, in units of the jittered box's sqrt(area) (released: 3.5; "
                        "short runs learn faster with 1.0 and --scale-jitter 0.25, see TRAINING.md)")
    p.add_argument("--scale-jitter", type=float, default=0.5,
                   help="search-crop scale jitter, std of the log size per axis (released: 0.5)")
    p.add_argument("--tied-qk-init", action="store_true",
                   help="start each attention's key projection equal to its query projection, so "
                        "attention first links tokens that look alike (not in the paper; not with "
                        "--levit-weights, whose projections are trained)")
    p.add_argument("--distractor-pairs", type=float, default=0.0, metavar="P",
                   help="fraction of pairs whose target and another sequence's target are both pasted, "
                        "on opposite sides of the crop centre, so only the template tells them apart "
                        "(not released; 0: off)")
    p.add_argument("--pretrain-minutes", type=float, default=0.0, metavar="MIN",
                   help="first train the backbone alone for MIN minutes to match the content of two crops "
                        "of one frame, token to token (not in the paper; counts in --time-budget; 0: off)")
    p.add_argument("--match-loss", type=float, default=0.0, metavar="W",
                   help="add W times the pre-training's matching loss (on raw tokens, no projection) "
                        "on --batch-size/4 view pairs per step, so tracking keeps what matching taught "
                        "(not in the paper; 0: off)")
    p.add_argument("--backbone-lr-scale", type=float, default=1.0, metavar="F",
                   help="the backbone's lr is --lr times F (not in the paper, which trains every parameter "
                        "at --lr; e.g. 0.1 after --pretrain-minutes)")
    p.add_argument("--synth-dir", default="data_cache/synth_v1")
    p.add_argument("--synth-sequences", type=int, default=300)
    p.add_argument("--synth-frames", type=int, default=100)
    p.add_argument("--synth-seed", type=int, default=0)
    p.add_argument("--synth-mix", type=synth.mix_arg, default=dict(synth.MIX),
                   help="kinds of procedural sequence and their weights, e.g. objects:0.4,patch:0.3,region:0.3 "
                        "(synth.py --help; objects:1 is the set made before the other kinds existed)")
    p.add_argument("--val-every", type=int, default=0,
                   help="track the procedural val split every K epochs (and after the first with "
                        "--time-budget, whose pace counts validation)")
    p.add_argument("--val-sequences", type=int, default=20, help="at most this many val sequences")
    p.add_argument("--baseline-only", action="store_true",
                   help="print the static-box baseline AUC on the procedural val split and exit")
    p.add_argument("--pos-layout", default="diagonal", choices=attention_bias.LAYOUTS,
                   help="position-encoding layout (Table 6 ablation)")
    p.add_argument("--bridge-stages", default="max,mid,min", help="Bridge Module stages (Table 5 ablation)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this many epochs in this invocation (schedule still spans --epochs)")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="MIN",
                   help="fit the run into MIN minutes of wall time from the start of train.py (data "
                        "generation included): after the first epoch, --epochs is lowered (never raised) "
                        "to what fits at that epoch's pace (validation and checkpoint included) and stored "
                        "in the checkpoint, so --resume continues exactly (give it when the run starts, "
                        "not on --resume); the schedule spans the lowered count (not in the paper; 0: off)")
    return p


def device_arg(text):
    """--device for argparse's `type=`: a device torch knows and this machine has."""
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: expected auto, cpu, cuda, cuda:N or mps") from None
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= usable:
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {usable} usable CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: train.py runs on cpu, cuda or mps")
    return text


def check_counts(args):
    """Counts that must be positive (0 would divide by zero or generate an empty set) or
    non-negative (0 means off)."""
    for flag in ("batch_size", "synth_sequences", "synth_frames"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("epochs", "stop_after", "grad_clip", "corner_loss"):
        if not getattr(args, flag) >= 0:  # also refuses nan
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


def given(argv, dest):
    """Whether the command line sets `dest` itself: argparse fills in defaults silently."""
    p, unset = build_parser(), object()
    p.set_defaults(**{dest: unset})
    return getattr(p.parse_args(argv), dest) is not unset


def check_lr_drop(args, argv):
    """--lr-drop belongs to the step schedule: given with cosine it would go unused, silently."""
    if args.schedule != "step" and given(argv, "lr_drop"):
        raise ValueError(f"--lr-drop {args.lr_drop:g} applies to --schedule step only, not {args.schedule}")
    if not 0 < args.lr_drop <= 1:
        raise ValueError(f"--lr-drop must be a fraction of the epochs in (0, 1], got {args.lr_drop:g}")


def parse_args(argv):
    args = build_parser().parse_args(argv)
    check_counts(args)
    check_lr_drop(args, argv)
    if args.time_budget < 0:
        raise ValueError(f"--time-budget must be >= 0 minutes, got {args.time_budget}")
    if args.tied_qk_init and args.levit_weights:
        raise ValueError("--tied-qk-init starts random projections; --levit-weights brings trained ones: pick one")
    if not 0.0 <= args.distractor_pairs <= 1.0:  # checked here, before any data is generated
        raise ValueError(f"--distractor-pairs must be in [0, 1], got {args.distractor_pairs}")
    if args.match_loss < 0:
        raise ValueError(f"--match-loss must be >= 0, got {args.match_loss}")
    if args.backbone_lr_scale <= 0:
        raise ValueError(f"--backbone-lr-scale must be > 0, got {args.backbone_lr_scale}")
    if args.pretrain_minutes < 0:
        raise ValueError(f"--pretrain-minutes must be >= 0, got {args.pretrain_minutes}")
    return args


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
    """Loader processes per training process. On CUDA the GPU waits on the loader, so all
    cores but two (the training process and its pin-memory thread). On a CPU the loader
    takes cores from the network, so none on small machines (TRAINING.md: on 2 cores one
    worker made the step slower)."""
    cores = max(1, cores // world)
    if device_type == "cuda":
        return max(1, cores - 2)
    return 0 if cores <= 2 else min(4, cores)


def resolve_workers(workers, device, world):
    if workers is None:
        workers = default_workers(device.type, fast.usable_cores(), world)
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    return workers


def barrier(world):
    if world > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- data
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


def ensure_synth(folder, sequences, frames, seed, log=print, mix=None):
    """Generate the procedural set (synth.py) once into `folder`. It is written to
    folder.partial and renamed when complete, with SYNTH_MARKER (its parameters) written
    last: an interrupted generation is redone. A complete set is never deleted: one made
    with other parameters is refused (it may be another run's data), and a folder without
    the marker is not ours."""
    mix = synth.check_mix(synth.MIX if mix is None else mix)
    folder, want = Path(folder), {"sequences": sequences, "frames": frames, "seed": seed}
    if mix != {"objects": 1.0}:  # markers written before kinds existed stay valid for objects-only sets
        want["mix"] = mix
    marker = folder / SYNTH_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return folder
    if folder.exists() and not marker.is_file():
        raise ValueError(f"--synth-dir {folder} exists but was not made by train.py (no {SYNTH_MARKER}); "
                         f"remove it, pick another --synth-dir, or train on it with --data got10k:{folder}")
    if folder.exists():
        raise ValueError(f"--synth-dir {folder} was made with {json.loads(marker.read_text())}, not the {want} "
                         f"asked for: pass another --synth-dir for these --synth-* settings")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"generating the procedural set ({sequences} sequences x {frames} frames) in {folder}")
    synth.synth(tmp, sequences, frames, seed, workers=os.cpu_count() or 1, mix=mix)  # same bytes for any count
    (tmp / SYNTH_MARKER).write_text(json.dumps(want))
    os.replace(tmp, folder)
    return folder


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
    """Rank 0 makes the procedural set (once, see ensure_synth) while the others wait."""
    if rank == 0:
        ensure_synth(args.synth_dir, args.synth_sequences, args.synth_frames, args.synth_seed, log, args.synth_mix)
    barrier(world)


def make_data(args, items, rank, world):
    """(pair sampler, this rank's indices) over the --data items, or the procedural set."""
    sources = read_sources(items) if items else [("synth", data.read_got10k(args.synth_dir, "train"))]
    dataset = data.PairDataset(sources, None, args.samples_per_epoch, args.seed,
                               center_jitter=args.center_jitter, scale_jitter=args.scale_jitter,
                               distractor_prob=args.distractor_pairs)
    return dataset, rank_indices(args.samples_per_epoch, rank, world)


# ----------------------------------------------------------------------------- model and optimizer
@dataclasses.dataclass
class Training:
    """The network and the state every optimizer step advances; the checkpoint saves all of
    it, with the RNG states and the arguments."""
    model: torch.nn.Module  # the plain network; checkpoints hold its parameter names
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp_dtype: torch.dtype | None  # autocast dtype of --amp, None for float32
    scaler: torch.amp.GradScaler | None  # loss scaling for float16 autocast only
    net: torch.nn.Module | None = None  # what the step calls: model, or its DDP / compiled wrapper


@torch.no_grad()
def tie_query_key_init(model) -> int:
    """Start every attention with its key projection equal to its query projection (not in
    the paper; trained apart afterwards). Then q . k = |q|^2 > 0 between tokens of the same
    content, so from the first step a search token leans towards the template tokens that
    look like it, where independent random projections give it no preference. Returns the
    number of attentions changed."""
    changed = 0
    for m in model.modules():
        if isinstance(m, levit.Attention):  # qkv rows per head: [q (D), k (D), v]
            rows = m.qkv.c.weight.view(m.heads, 2 * m.key_dim + m.v_dim, -1)  # (heads, 2D + Dv, C)
            rows[:, m.key_dim:2 * m.key_dim] = rows[:, :m.key_dim]
        elif isinstance(m, levit.ShrinkAttention):  # kv rows per head: [k (D), v]; q apart
            rows = m.kv.c.weight.view(m.heads, m.key_dim + m.v_dim, -1)  # (heads, D + Dv, C)
            rows[:, :m.key_dim] = m.q[1].c.weight.view(m.heads, m.key_dim, -1)
        else:
            continue
        changed += 1
    return changed


def param_groups(model, lr, backbone_scale=1.0):
    """Every parameter at lr (the paper), or with backbone_scale != 1 two groups: the
    backbone at lr * backbone_scale, the rest at lr (not in the paper: to keep what
    --pretrain-minutes taught the backbone while the Bridge and head learn)."""
    if backbone_scale == 1.0:
        return [{"params": list(model.parameters())}]
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    return [{"params": backbone, "lr": lr * backbone_scale},
            {"params": [p for p in model.parameters() if id(p) not in ids]}]


def make_training(args, device, steps):
    """HiT (LeViT ImageNet weights in the backbone if given), AdamW (every parameter at one
    lr unless --backbone-lr-scale, see param_groups), and the lr schedule stepped once per
    optimizer step."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = hit.build_hit(args.variant, args.pos_layout, tuple(args.bridge_stages.split(",")))
    if args.levit_weights:
        levit.load_imagenet_weights(model.backbone.body, args.levit_weights)
    if args.tied_qk_init:
        tie_query_key_init(model)
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.backbone_lr_scale), lr=args.lr,
                                  weight_decay=args.weight_decay)
    # A closure, so its state_dict is just the step count; it reads args.epochs each step,
    # which --time-budget may lower.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, steps, args))
    return Training(model, optimizer, scheduler, *amp_settings(args.amp, device))


def wrap(model, world, device, compile_):
    """The module the steps call: DDP across processes, then torch.compile if asked."""
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_:
        # One static graph per batch size (a ragged last batch adds a second, not a dynamic one).
        net = torch.compile(net, dynamic=False)
    return net


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


# ----------------------------------------------------------------------------- checkpoints
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


def save_atomic(obj, path):
    """torch.save to path.tmp, fsync, rename: a crash mid-write leaves the old file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run, args, epoch, out, partial=None):
    """OUT/last.pth after `epoch` whole epochs; `partial`: how far the next one got when
    an interrupt stopped it (train_epoch), so that --resume continues from that step."""
    save_atomic({"model": run.model.state_dict(), "config": plain(dataclasses.asdict(run.model.cfg)),
                 "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "epoch": epoch, "rng": rng_state(), "args": plain(vars(args)),
                 "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                 "partial": partial},
                out / "last.pth")


class Interrupt:
    """Ctrl-C or SIGTERM (as `timeout` and job schedulers send) during training: the step
    under way finishes, the run so far is saved mid-epoch (save_checkpoint's `partial`),
    and train.py stops; --resume continues from the next step exactly. A second signal
    stops at once. Single-process runs only: under DDP every rank would have to stop at
    the same step, so a signal there ends the run as usual (the last epoch's checkpoint)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False

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


def check_out(args):
    """Right after the arguments, before any data or model: refuse to start a new run over
    the one in --out, and read the --resume checkpoint. Returns (path, checkpoint), or
    None for a new run."""
    if args.baseline_only:  # writes nothing and resumes nothing
        return None
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


def resume(run, args, out, rank, log, loaded):
    """(0, None) for a new run in OUT; with --resume, load the checkpoint that check_out
    read (`loaded`) into `run` and return (the epochs it holds, how far the next one got
    or None)."""
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if loaded is None:
        return 0, None
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
    changed = {k: (v, getattr(args, k, None)) for k, v in ckpt["args"].items()
               if k not in RUN_ONLY_ARGS and plain(getattr(args, k, None)) != v}
    if changed:
        warnings.warn(f"--resume: settings differ from the checkpoint's (was, now): {changed}")
    if rank == 0:
        trim_log(out / "log.jsonl", ckpt["epoch"])
    partial = ckpt.get("partial")
    if partial and dist.is_initialized() and dist.get_world_size() > 1:  # steps and sums are one process's
        raise ValueError(f"--resume: {path} was saved mid-epoch by an interrupted single-process run; "
                         f"resume it in one process (its epoch then ends as it would have)")
    log(f"resumed from {path} after epoch {ckpt['epoch']}"
        + (f", step {partial['step']} of epoch {ckpt['epoch'] + 1}" if partial else ""))
    return ckpt["epoch"], partial


# ----------------------------------------------------------------------------- backbone pre-training (not in the paper)
# The paper's backbone starts from ImageNet LeViT weights. Without them, --pretrain-minutes
# first trains the backbone alone to *match*: two crops of one frame (data.ViewPairDataset)
# go through it as template and search, and every template token must pick, among the search
# tokens, the one showing the same content (a cross-entropy over cosine similarities, at each
# of the three stages). Why: the tracking loss alone barely teaches a randomly initialised
# HiT to use its template (TRAINING.md, section 8).
PRETRAIN_DIM = 64  # width of the per-stage projection the similarities are taken in
PRETRAIN_TAU = 0.1  # temperature of the softmax over search tokens
PRETRAIN_WARMUP = 20  # steps of linear lr warm-up
RAW_TOKENS = [torch.nn.Identity()] * 3  # --match-loss: similarities of the tokens themselves


def token_targets(view_map, t_side: int, s_side: int, stride: int):
    """(B, t_side^2) index of the search token (row-major s_side x s_side grid) nearest to
    where each template token's centre lands in the search crop, -100 where it lands
    outside. view_map (B, 3) = (a, bx, by) maps template pixels to search pixels
    (data.crop_to_crop). Token j of a stage with this stride is centred on pixel
    stride * j + 7.5: the patch embedding's first 16-pixel cell, and every subsampling keeps
    tokens 0, 2, 4, ... (levit.Subsample)."""
    centre = 7.5
    grid = torch.arange(t_side, dtype=torch.float32, device=view_map.device) * stride + centre  # (t,)
    a, bx, by = view_map.float().unbind(-1)  # 3 x (B,)
    col = torch.floor((a[:, None] * grid + bx[:, None] - centre) / stride + 0.5).long()  # (B, t)
    row = torch.floor((a[:, None] * grid + by[:, None] - centre) / stride + 0.5).long()  # (B, t)
    index = row[:, :, None] * s_side + col[:, None, :]  # (B, t, t): template row i, column j
    inside = ((row >= 0) & (row < s_side))[:, :, None] & ((col >= 0) & (col < s_side))[:, None, :]
    return torch.where(inside, index, torch.full_like(index, -100)).flatten(1)  # (B, t*t)


def correspondence_loss(stages, heads, view_map, cfg):
    """Mean over the three stages of the cross-entropy of each template token's true search
    token, among all search tokens; and the top-1 accuracy per stage (a list of floats).
    stages: the backbone's outputs, (B, N_k, C_k) with tokens [search; template]."""
    s_side, t_side = cfg.search_size // cfg.stride, cfg.template_size // cfg.stride
    losses, accuracy = [], []
    for k, (x, head) in enumerate(zip(stages, heads)):
        s, t = s_side >> k, t_side >> k  # grids halve at each stage
        f = torch.nn.functional.normalize(head(x.float()), dim=-1)  # (B, s*s + t*t, width of the head)
        logits = f[:, s * s:] @ f[:, :s * s].transpose(1, 2) / PRETRAIN_TAU  # (B, t*t, s*s)
        target = token_targets(view_map, t, s, cfg.stride << k)  # (B, t*t)
        losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100))
        hit_ = (logits.argmax(-1) == target)[target >= 0]
        accuracy.append(hit_.float().mean().item() if hit_.numel() else float("nan"))
    return torch.stack(losses).mean(), accuracy


def pretrain_lr(base_lr, step, elapsed_s, budget_s):
    """Linear warm-up over PRETRAIN_WARMUP steps, then a half cosine over the time budget."""
    return base_lr * min(1.0, (step + 1) / PRETRAIN_WARMUP) * 0.5 * (1.0 + math.cos(math.pi * elapsed_s / budget_s))


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


def pretrain_step(model, heads, batch, optimizer, device, grad_clip=0.1, amp_dtype=None):
    """One optimizer step of correspondence_loss on the backbone and the projections.
    Returns (loss, top-1 per stage) as floats."""
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        stages = model.backbone(batch["template"].to(device), batch["search"].to(device))
    loss, accuracy = correspondence_loss(stages, heads, batch["view_map"].to(device), model.cfg)
    optimizer_step(loss, optimizer, [p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    return loss.item(), accuracy


def pretrain_settings(args):
    """What OUT/pretrained.pth depends on; saved in it, so a run with other settings refuses it."""
    source = args.data or {"synth_sequences": args.synth_sequences, "synth_frames": args.synth_frames,
                           "synth_seed": args.synth_seed, "synth_mix": args.synth_mix}
    return plain({"variant": args.variant, "pos_layout": args.pos_layout, "pretrain_minutes": args.pretrain_minutes,
                  "seed": args.seed, "data": source})


def load_pretrained(model, path, args, log):
    """A restart's OUT/pretrained.pth into model.backbone, if it was made with this run's
    settings; returns its record."""
    saved, want = hit.safe_load(path), pretrain_settings(args)
    if saved.get("settings", want) != want:  # a file older than its settings reaches the shape check only
        raise ValueError(f"{path} was pre-trained with {saved['settings']}, not this run's {want}: "
                         f"use another --out, or remove {path} to pre-train again")
    try:
        model.backbone.load_state_dict(saved["backbone"])
    except RuntimeError as e:  # shapes of another variant or layout
        raise ValueError(f"{path} does not fit this run's HiT-{args.variant} backbone (--pos-layout "
                         f"{args.pos_layout}): use another --out, or remove {path} to pre-train again") from e
    log(f"pre-trained backbone loaded from {path} ({saved['record']['pairs']} view pairs)")
    return saved["record"]


def pretrain(model, args, sources, device, out, log, amp_dtype=None):
    """--pretrain-minutes: train model.backbone on view pairs (data.ViewPairDataset) for that
    many minutes, save it to OUT/pretrained.pth and return the record logged (steps, pairs,
    loss and top-1 per stage over the last 50 steps). A run that finds OUT/pretrained.pth
    loads it instead: a restart after a crash in the first epoch does not pre-train again."""
    path = out / "pretrained.pth"
    if path.is_file():
        return load_pretrained(model, path, args, log)
    dataset = data.ViewPairDataset(sources, seed=args.seed, center_jitter=args.center_jitter,
                                   scale_jitter=args.scale_jitter)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    dims = levit.SPECS[model.cfg.levit].embed_dim
    heads = torch.nn.ModuleList(torch.nn.Linear(c, PRETRAIN_DIM) for c in dims).to(device)
    optimizer = torch.optim.AdamW([*model.backbone.parameters(), *heads.parameters()], lr=args.lr,
                                  weight_decay=args.weight_decay)
    budget, t0, steps, recent = 60.0 * args.pretrain_minutes, time.time(), 0, []
    model.backbone.train()
    bar = tqdm(total=round(budget), unit="s", desc="pre-training the backbone", dynamic_ncols=True, leave=False)
    for batch in loader:
        if time.time() - t0 >= budget:
            break
        for group in optimizer.param_groups:
            group["lr"] = pretrain_lr(args.lr, steps, time.time() - t0, budget)
        loss, accuracy = pretrain_step(model, heads, batch, optimizer, device, args.grad_clip, amp_dtype)
        steps += 1
        recent = (recent + [[loss] + accuracy])[-50:]
        bar.set_postfix(loss=f"{loss:.3f}", top1="/".join(f"{a:.2f}" for a in accuracy))
        bar.update(round(time.time() - t0) - bar.n)
    bar.close()
    mean = np.nanmean(np.array(recent), axis=0) if recent else [float("nan")] * 4
    record = {"steps": steps, "pairs": steps * args.batch_size, "seconds": time.time() - t0,
              "loss": float(mean[0]), "top1_per_stage": [float(v) for v in mean[1:]]}
    # The projections are kept only to probe the matching later; tracking does not use them.
    save_atomic({"backbone": model.backbone.state_dict(), "heads": heads.state_dict(), "record": record,
                 "settings": pretrain_settings(args)}, path)
    log(f"pre-training: {steps} steps ({record['pairs']} view pairs) in {record['seconds']:.0f} s; last 50 "
        f"steps: loss {record['loss']:.3f}, top-1 match per stage "
        + " / ".join(f"{v:.3f}" for v in record["top1_per_stage"]))
    return record


# ----------------------------------------------------------------------------- wall-clock time
def epochs_within(budget_s, elapsed_s, epoch_s, done, max_epochs):
    """--time-budget: how many epochs the run gets. `done` epochs have run in `elapsed_s`
    seconds since launch; each further one is expected to take `epoch_s`. Never more than
    max_epochs, never fewer than `done`."""
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

    def __init__(self, budget_min=0.0, t_launch=None, clock=time.time):
        self.clock, self.budget_s = clock, 60.0 * budget_min
        self.t_launch = clock() if t_launch is None else t_launch
        self.checked = False

    def start_epoch(self, first_step=0):
        """`first_step`: where a resumed epoch starts; the pace counts the steps from there."""
        self.t0, self.first = self.clock(), first_step
        self.t_steady = None

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

    def fit_budget(self, args, run, steps, world, device, log, val_s=0.0, done=1):
        """After the first epoch (`done` epochs in all), its validation and checkpoint: lower
        args.epochs to what fits, and set the next step's lr on the new span. Returns whether
        it lowered them (the checkpoint just written then holds the old count)."""
        if not self.budget_s:
            return False
        now = self.clock()
        per_epoch = self.epoch_seconds(steps, now, val_s, args.val_every)
        fit = epochs_within(self.budget_s, now - self.t_launch, per_epoch, done, args.epochs)
        if world > 1:  # every rank must stop at the same epoch: rank 0 decides
            fit_t = torch.tensor([fit], device=device)
            dist.broadcast(fit_t, 0)
            fit = int(fit_t.item())
        if fit >= args.epochs:
            return False
        log(f"--time-budget {args.time_budget:g} min: {fit} of {args.epochs} epochs fit "
            f"({per_epoch:.0f} s per epoch); the schedule now spans {fit}")
        args.epochs = fit
        for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs):
            group["lr"] = base * lr_factor(run.scheduler.last_epoch, steps, args)
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


# ----------------------------------------------------------------------------- one step and one epoch
def train_step(model, batch, optimizer, device, grad_clip=0.1, scaler=None, amp_dtype=None,
               corner_weight=0.0, views=None, match_weight=0.0, plain=None):
    """Forward, Eq. 4 (+ corner_weight * corner_loss, + match_weight * the matching loss of
    `views`, a ViewPairDataset batch, through plain.backbone: `plain` is the HiT that
    `model` wraps), backward, clip, AdamW step. Returns floats {loss, giou, l1} (+ corner,
    match)."""
    template = batch["template"].to(device, non_blocking=True)
    search = batch["search"].to(device, non_blocking=True)
    target = batch["search_box"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(template, search, maps=corner_weight > 0)
    loss, parts = box_loss(out["pred_boxes"], target)
    if corner_weight > 0:
        parts["corner"] = corner_loss(out["score_maps"], target)
        loss = loss + corner_weight * parts["corner"]
    if views is not None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            stages = plain.backbone(views["template"].to(device), views["search"].to(device))
        parts["match"], _ = correspondence_loss(stages, RAW_TOKENS, views["view_map"].to(device), plain.cfg)
        loss = loss + match_weight * parts["match"]
    optimizer_step(loss, optimizer, model.parameters(), grad_clip, scaler)
    return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}


def loader_generator(args, epoch):
    """A DataLoader's own generator (for its workers' base seed; pairs depend on seed,
    epoch and index only). Without one, opening the loader draws from the global CPU
    generator, which drop path (HiT-Base) also draws from: a run resumed mid-epoch opens
    its loader after restoring that generator, the interrupted run before saving it."""
    return torch.Generator().manual_seed(args.seed * 100003 + epoch)


def view_batches(pairs, epoch, steps, args, start=0):
    """--match-loss: the view pairs of steps start, start + 1, ... of `epoch`, batch_size
    // 4 per step, drawn from the pair sampler's sequences; sample indices follow (epoch,
    step), so a resumed run draws the same views."""
    views = data.ViewPairDataset(pairs.sources, seed=pairs.seed + 1, center_jitter=args.center_jitter,
                                 scale_jitter=args.scale_jitter)
    per_step = max(1, args.batch_size // 4)
    first = epoch * steps * per_step
    return iter(torch.utils.data.DataLoader(views, batch_size=per_step, num_workers=args.workers,
                                            sampler=range(first + start * per_step, first + steps * per_step),
                                            generator=loader_generator(args, epoch)))


def train_epoch(run, dataset, indices, steps, epoch, args, pace, rank, world, device, log,
                partial=None, interrupt=None):
    """One epoch of steps -> (its log record, losses averaged over every rank's pairs; None).
    `partial`: continue an epoch an interrupt stopped (from its next step, with its sums so
    far). When `interrupt` is requested, stops after the step under way -> (None, partial)."""
    partial = partial or {"step": 0, "sums": [0.0] * 4, "match": []}
    start = partial["step"]
    dataset.set_epoch(epoch)
    # Pairs depend on (seed, epoch, index) only, so skipping the indices of the steps done
    # gives the interrupted run's next batches.
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=indices[start * args.batch_size:],
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         generator=loader_generator(args, epoch))
    run.net.train()
    sums = torch.tensor(partial["sums"], dtype=torch.float64)  # loss, giou, l1 (pair-weighted), pairs
    match, n_seen = list(partial["match"]), 0  # --match-loss: its value per step; pairs in this process
    pace.start_epoch(start)
    bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0,
               dynamic_ncols=True, leave=False)
    views = view_batches(dataset, epoch, steps, args, start) if args.match_loss else itertools.repeat(None)
    for step, batch in enumerate(loader, start):
        lr = run.optimizer.param_groups[-1]["lr"]  # --lr times the schedule (group 0 may be the backbone)
        m = train_step(run.net, batch, run.optimizer, device, args.grad_clip, run.scaler, run.amp_dtype,
                       args.corner_loss, next(views), args.match_loss, run.model)
        run.scheduler.step()
        b = len(batch["search_box"])
        sums += torch.tensor([m["loss"] * b, m["giou"] * b, m["l1"] * b, b], dtype=torch.float64)
        match += [m["match"]] if "match" in m else []
        n_seen += b
        steps_left = (args.epochs - epoch) * steps - step - 1
        pace.step_done(step - start, steps - start, steps_left, log)
        eta = steps_left * args.batch_size * (time.time() - pace.t0) / n_seen
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{lr:.2e}",
                        sps=f"{n_seen * world / max(time.time() - pace.t0, 1e-9):.1f}",
                        eta=time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 else f"{eta / 86400:.1f}d")
        bar.update(1)
        if interrupt is not None and interrupt.requested and step + 1 < steps:
            bar.close()
            return None, {"step": step + 1, "sums": sums.tolist(), "match": match}
    bar.close()
    if world > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    seconds = pace.end_epoch()
    record = {"epoch": epoch + 1, "loss": (sums[0] / sums[3]).item(), "giou": (sums[1] / sums[3]).item(),
              "l1": (sums[2] / sums[3]).item(), "lr": lr,  # lr of the epoch's last step
              "samples_per_s": (sums[3].item() - partial["sums"][3]) / seconds,  # pairs of this process's steps
              "seconds": seconds}
    return record | ({"match": float(np.mean(match))} if match else {}), None


def validation_due(epoch, args):
    """Every --val-every epochs, and after the first with --time-budget: its pace must know
    what validation costs."""
    return bool(args.val_every) and (epoch % args.val_every == 0 or epoch == 1 and bool(args.time_budget))


def finish_epoch(run, record, args, out, device, log):
    """Rank 0, after each epoch: validation if due, the log line, the checkpoint. The line
    goes first: a crash before the checkpoint leaves a line that resume drops (trim_log),
    where the other order would lose one. Returns the seconds validation took."""
    val_s = 0.0
    if validation_due(record["epoch"], args):
        t = time.time()
        record["val_auc"] = validate(run.model, args.synth_dir, args.val_sequences, device)
        val_s = time.time() - t
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    save_checkpoint(run, args, record["epoch"], out)
    log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    return val_s


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


def baseline(args, rank, log):
    """--baseline-only: rank 0 scores and prints the static box; other ranks return None."""
    if rank != 0:
        return None
    auc = static_box_auc(args.synth_dir, args.val_sequences)
    log(f"static-box baseline: AUC {auc:.2f} on {args.synth_dir}/val (first {args.val_sequences} sequences)")
    return auc


# ----------------------------------------------------------------------------- main
def train_epochs(run, args, dataset, indices, steps, first, partial, pace, interrupt, where, out, log):
    """Epochs first, first + 1, ... (the first one from `partial` on, when a resumed run
    stopped inside it): each trained, validated if due, logged and saved. An interrupt
    ends the run with the checkpoint of where it stopped."""
    rank, world, device = where
    t_start, done = time.time(), 0
    fit_due = first == 0  # the budget is fitted once, on this process's first measured epoch
    for epoch in range(first, args.epochs):
        record, partial = train_epoch(run, dataset, indices, steps, epoch, args, pace, rank, world, device, log,
                                      partial, interrupt)
        if record is None:  # interrupted mid-epoch: the run so far is saved, then stop
            save_checkpoint(run, args, epoch, out, partial)
            log(f"interrupted at step {partial['step']} of {steps} of epoch {epoch + 1}: checkpoint "
                f"{out / 'last.pth'}; --resume continues from the next step")
            raise SystemExit(130)
        val_s = finish_epoch(run, record, args, out, device, log) if rank == 0 else 0.0
        barrier(world)
        # The budget is fitted on the first epoch, checkpoint included (the next one when a
        # resume left too few of its steps to time), and the checkpoint is written again
        # with the lowered count that --resume keeps.
        if fit_due and pace.measured(steps):
            fit_due = False
            if pace.fit_budget(args, run, steps, world, device, log, val_s, epoch + 1) and rank == 0:
                save_checkpoint(run, args, epoch + 1, out)
        done += 1
        if interrupt is not None and interrupt.requested:  # at the epoch's end: saved already
            log(f"interrupted after epoch {epoch + 1}: checkpoint {out / 'last.pth'}; --resume continues")
            raise SystemExit(130)
        if args.stop_after and done >= args.stop_after or epoch + 1 >= args.epochs:
            break  # (--time-budget may have lowered args.epochs after the range was made)
    saved = f"checkpoint {out / 'last.pth'}" if done else "no checkpoint was written"
    log(f"done: {done} epoch(s) in {time.time() - t_start:.0f} s; {saved}")


def main(argv=None):
    t_launch = time.time()  # --time-budget counts from here, data generation included
    args = parse_args(argv)
    loaded = check_out(args)  # a clash with --out or a bad --resume fails before data and model
    pace = Pace(args.time_budget, t_launch)
    rank, world, device = setup_distributed(args.device)
    args.workers = resolve_workers(args.workers, device, world)
    if args.pretrain_minutes and world > 1 and not args.resume:
        raise ValueError("--pretrain-minutes runs in one process: start the run without torchrun "
                         "(--stop-after 1), then --resume it under torchrun")
    if args.match_loss and world > 1:  # its backbone pass runs outside DDP's synchronised forward
        raise ValueError("--match-loss runs in one process only")
    log = tqdm.write if rank == 0 else (lambda *a, **k: None)
    out = Path(args.out)

    items = parse_data_spec(args.data) if args.data else []  # bad --data fails before generation
    if not items or args.val_every or args.baseline_only:  # validation tracks its val split
        procedural_set(args, rank, world, log)
    if args.baseline_only:
        return baseline(args, rank, log)
    dataset, indices = make_data(args, items, rank, world)
    steps = math.ceil(len(indices) / args.batch_size)
    run = make_training(args, device, steps)
    first, partial = resume(run, args, out, rank, log, loaded)
    if args.pretrain_minutes and first == 0 and partial is None:
        pretrain(run.model, args, dataset.sources, device, out, log, run.amp_dtype)
    run.net = wrap(run.model, world, device, args.compile)
    log(f"HiT-{args.variant}: {hit.count_params(run.model):,} params on {device} x{world}; "
        f"{len(dataset.sources)} source(s); {steps} steps/epoch of {args.batch_size}x{world} pairs; "
        f"{args.workers} loader worker(s)")

    with Interrupt() if world == 1 else contextlib.nullcontext() as interrupt:
        train_epochs(run, args, dataset, indices, steps, first, partial, pace, interrupt,
                     (rank, world, device), out, log)
    if world > 1:
        dist.destroy_process_group()
    return run.model


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"train.py: error: {e}")
