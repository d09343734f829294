"""bench.py: measure HiT honestly (paper Table 1, Table 2 speed columns).

    python bench.py --device cpu --variant all          # model-only table, this machine
    python bench.py --device cuda --variant base --json out.json

Method: the paper's (model-only forward of backbone and head, random inputs of the real
shapes, batch 1, BN fused), corrected twice: each timed call is bracketed by
`torch.cuda.synchronize()` on CUDA (the released speed script does not synchronise,
which flatters GPU numbers), and modes are timed interleaved, round-robin, so machine
noise hits them alike. Also `torch.inference_mode`, a fixed thread count, warm-up runs;
we report median and p90.

Modes (see fast.prepare): `released` re-runs the released implementation's op sequence on
the same weights (the baseline for every speed-up claim), `eager` (unfused), `fused`
(the default), `cuda_graph`, and `onnxruntime` and `openvino_fp32`, which run this
project's ONNX export (fast.export_onnx); `fast` (CPU: int8 and bf16, fast.fast_cpu) is
reported with its output deviation and never presented as exact. The peers
`released_ort`, `released_ov_fp32`, `released_ov` (OpenVINO's own precision, bf16 where
native) and `released_ov_int8` (quantised as `fast` quantises ours) run the released op
sequence's export in the runtimes a deploying user would pick instead of PyTorch: the
ratios to beat.

Also measured: each mode's max |output - eager| on the same inputs (an exact mode beyond
EXACT_TOL is flagged), parameters and GMACs, peak memory, end-to-end tracking fps with
track.Tracker on a procedural 640x360 sequence (JPEG decoding excluded) next to model-only
fps, and training throughput (train.train_step, samples/s; float32 and, where native,
--amp's autocast). Without --checkpoint the weights are random but trained-like
(`randomize`): random BN statistics and attention biases, so errors cannot hide.

On a Jetson (JetPack with NVIDIA's PyTorch wheel): fix the clocks first (`sudo nvpmodel -m
0 && sudo jetson_clocks`), then `python bench.py --device cuda --variant all --json
jetson.json` (the board is named from /etc/nv_tegra_release); on small boards add
`--train-batch 8` or `--no-train` (the GPU shares the board's memory).
"""
import argparse
import copy
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

import data
import fast
import hit
import levit
import synth
import track

EXACT_TOL = 1e-4  # max |pred_boxes - eager| for a mode to count as exact


# ----------------------------------------------------------------------------- the released op sequence
class Released(torch.nn.Module):
    """The released forward, op for op, on this project's modules and weights: backbone BN
    fused (as the released tracker does), attention as (q @ k^T) * scale + bias -> softmax
    -> @ v, the Bridge's ConvTranspose2d + BN, the head's Conv + BN + ReLU unfused, maps in
    NCHW. The baseline every speed-up is measured against, in the same process."""

    def __init__(self, model):
        super().__init__()
        self.m, self.cfg = model.fuse(), model.cfg  # backbone BNs; Linear weights row-major, as released
        with torch.no_grad():  # released LeViT caches each gathered bias in eval mode
            self.biases = {blk: blk.bias() for blk in self.m.modules() if isinstance(blk, levit.BiasTable)}

    def attention(self, blk, x):
        B, N, _ = x.shape
        if hasattr(blk, "qkv"):  # MHA
            # (B, N, h*(2D + Dv)) -> (B, N, h, 2D + Dv) -> q, k (B, N, h, D), v (B, N, h, Dv)
            q, k, v = blk.qkv(x).view(B, N, blk.heads, -1).split([blk.key_dim, blk.key_dim, blk.v_dim], dim=3)
            q = q.permute(0, 2, 1, 3)  # (B, h, N, D)
        else:  # shrink attention
            # (B, N, h*(D + Dv)) -> (B, N, h, D + Dv) -> k (B, N, h, D), v (B, N, h, Dv)
            k, v = blk.kv(x).view(B, N, blk.heads, -1).split([blk.key_dim, blk.v_dim], dim=3)
            q = blk.q(x)  # (B, N', h*D): queries of the subsampled tokens
            q = q.view(B, q.shape[1], blk.heads, blk.key_dim).permute(0, 2, 1, 3)  # (B, h, N', D)
        k, v = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)  # (B, h, N, D), (B, h, N, Dv)
        attn = (q @ k.transpose(-2, -1)) * blk.scale + self.biases[blk]  # (B, h, N', N)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, q.shape[2], -1)  # (B, N', h*Dv)
        return blk.proj(x)

    def forward(self, template, search):
        body, cfg = self.m.backbone.body, self.m.cfg
        x = body.tokens([search, template])
        feats = []
        for i, blk in enumerate(body.blocks):
            if hasattr(blk, "heads"):
                x = self.attention(blk, x)
            elif hasattr(blk.m, "heads"):
                x = x + self.attention(blk.m, x)
            else:
                x = blk(x)
            if i + 1 in body.stage_ends:
                feats.append(x)
        B, side = x.shape[0], cfg.search_size // cfg.stride
        maps = [f[:, :s * s].transpose(1, 2).reshape(B, -1, s, s)
                for f, s in zip(feats, (side, side // 2, side // 4))]  # (B, C, h, w) search parts
        g = feats[2].mean(1)
        br = self.m.bottleneck
        y = F.relu(br.layers[0](maps[2]) + maps[1])
        y = br.layers[1](y) + maps[0]
        e = br.proj1(y.flatten(2).transpose(1, 2))  # (B, 256, D)
        gp = br.proj2(g).unsqueeze(2)  # (B, D, 1)
        att = torch.matmul(e, gp)  # (B, 256, 1)
        opt = (e.unsqueeze(-1) * att.unsqueeze(-2)).permute(0, 3, 2, 1).contiguous()  # (B, 1, D, 256)
        box, score = self.m.box_head(opt.view(B, -1, side, side))
        return {"pred_boxes": hit.xyxy_to_cxcywh(box), "score": score}


# ----------------------------------------------------------------------------- the machine
def cpu_name(path="/proc/cpuinfo"):
    """The CPU model ("model name" in /proc/cpuinfo), else what platform knows."""
    try:
        with open(path) as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def jetson_board(path="/etc/nv_tegra_release", model_path="/proc/device-tree/model"):
    """The Jetson module and L4T release, e.g. "NVIDIA Jetson AGX Xavier Developer Kit (L4T
    R32.7.1, board t186ref)", from /etc/nv_tegra_release ("# R32 (release), REVISION: 7.1,
    GCID: ..., BOARD: t186ref, ...") and /proc/device-tree/model; None elsewhere."""
    try:
        with open(path) as f:
            first = f.readline().strip().lstrip("#").strip()
    except OSError:
        return None
    fields = {}
    for part in first.split(","):
        key, _, value = part.strip().partition(":")
        fields[key.strip().upper()] = value.strip()
    release = next((k.split()[0] for k in fields if k.startswith("R") and "RELEASE" in k), "")
    l4t = f"L4T {release}.{fields['REVISION']}" if release and "REVISION" in fields else first
    try:
        with open(model_path) as f:
            model = f.read().replace("\x00", "").strip()
    except OSError:
        model = "NVIDIA Jetson"
    board = fields.get("BOARD")
    return f"{model} ({l4t}{', board ' + board if board else ''})"


def device_name(device):
    """Jetson board, GPU name, Apple GPU, or the CPU model for `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        return jetson_board() or torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple GPU (MPS) on {platform.machine()}"
    return cpu_name()


def machine_info(device, threads):
    device = torch.device(device)
    return {"device": device.type, "device_name": device_name(device), "cpu": cpu_name(),
            "jetson": jetson_board(), "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "python": platform.python_version(), "platform": platform.platform(),
            "threads": threads, "cores": os.cpu_count(), "load_start": load_average(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def load_average():
    """1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(threads):
    """A warning line when other processes already keep the cores busy: a multi-threaded
    forward then stalls at each parallel region waiting for a preempted thread (SPEED.md
    has a case of 60x): such timings measure the machine, not the model."""
    load, cores = load_average(), os.cpu_count() or 1
    if load is not None and load + threads > cores + 0.5:
        return (f"!! machine busy: load average {load:.1f} on {cores} cores before this run "
                f"({threads} threads asked): timings will be noisy or inflated; compare only "
                f"modes of the same run" + (", or use --threads 1" if threads > 1 else ""))
    return None


# ----------------------------------------------------------------------------- models and inputs
def randomize(model, seed=0, branch_gain=(0.02, 0.06), logit_std=2.0):
    """Trained-like random weights, in place, so that errors anywhere show in the outputs
    (at default initialisation the residual branches are tiny, the score maps flat and the
    outputs hardly depend on the input):
    1. every BatchNorm gets random affine parameters: weight in [0.5, 1.5], except the
       last BN of each residual branch, in `branch_gain` (a larger gain makes the random
       network chaotic: outputs then jump between 16-pixel cells on float rounding);
       every attention-bias table gets N(0, 1) entries;
    2. BN running statistics become the batch statistics of seeded random inputs (one
       forward with momentum 1): non-trivial means and variances to fold;
    3. each corner's 1x1 score conv is scaled so its logits have std `logit_std` on those
       inputs: score maps neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    is_bn = lambda m: isinstance(m, torch.nn.modules.batchnorm._BatchNorm)  # noqa: E731
    bns = [m for m in model.modules() if is_bn(m)]
    branch_ends = {id([b for b in r.m.modules() if is_bn(b)][-1])
                   for r in model.modules() if type(r).__name__ == "Residual"}
    with torch.no_grad():
        for m in bns:
            lo, hi = branch_gain if id(m) in branch_ends else (0.5, 1.5)
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * (hi - lo) + lo)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape, generator=g))
        z, x = make_inputs(model.cfg, 2, "cpu", seed + 1000)
        model.eval()
        for m in bns:
            m.momentum, m.training = 1.0, True
        head, logits = model.box_head, {}
        hooks = [getattr(head, f"conv5_{c}").register_forward_hook(
            lambda mod, inp, out, c=c: logits.__setitem__(c, out)) for c in ("tl", "br")]
        model(z, x)
        for h in hooks:
            h.remove()
        for m in bns:
            m.momentum, m.training = 0.1, False
        for c, out in logits.items():
            conv = getattr(head, f"conv5_{c}")
            s = logit_std / float(out.flatten(1).std(1).mean())
            conv.weight.mul_(s)
            conv.bias.mul_(s)
    return model


def make_model(variant, checkpoint=None, seed=0):
    """An unfused eval-mode HiT on the CPU: the checkpoint's weights, or seeded random
    ones with trained-like statistics (see `randomize`)."""
    if checkpoint:
        return hit.load_checkpoint(checkpoint, "cpu", variant)
    torch.manual_seed(seed)
    return randomize(hit.build_hit(variant), seed).eval()


def make_inputs(cfg, batch=1, device="cpu", seed=0):
    """Seeded random (template, search) of the real shapes, on `device`."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 3, cfg.template_size, cfg.template_size, generator=g)
    x = torch.randn(batch, 3, cfg.search_size, cfg.search_size, generator=g)
    return z.to(device), x.to(device)


def model_stats(model):
    """Parameters unfused / fully fused and GMACs (hit.count_macs: batch 1, unfused).

    Counted on a copy on the meta device (shapes only, no arithmetic: same counts, a
    fraction of the time), on a CPU copy if some op has no meta kernel."""
    for device in ("meta", "cpu"):
        try:
            m = copy.deepcopy(model).to(device).eval()  # eval: counting must not touch BN stats
            with torch.device(device):  # inputs and the fused layers made there too
                macs = hit.count_macs(m, batch=1)
                unfused = hit.count_params(m)
                released = hit.count_params(m.fuse())  # Table 1's "BN fused"
                fused = hit.count_params(fast.FastHiT(m))
            return {"params_unfused": unfused, "params_bn_fused": released,
                    "params_fused": fused, "gmacs": macs / 1e9}
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise


# ----------------------------------------------------------------------------- modes
def failure(e):
    """A one-line reason for an exception that skips a measurement (the run goes on)."""
    first = str(e).splitlines()[0] if str(e) else ""
    return f"failed: {type(e).__name__}: {first}"


def attempt(fn):
    """Run fn(); None when it worked, else a one-line reason. For measurements that may
    not fit a device (out of memory on a small board, a mode this torch lacks)."""
    try:
        fn()
        return None
    except Exception as e:
        return failure(e)


# The peers: the released model exported to ONNX (opset 17), in the runtimes a deploying
# user would pick instead of PyTorch. Mode -> (fast.py runtime mode, precision).
# released_ov_int8 is the released export quantised the way `fast` quantises ours
# (fast.quantize_onnx): what a user who knows that recipe could deploy without this project.
PEERS = {"released_ort": ("onnxruntime", "float32"), "released_ov_fp32": ("openvino_fp32", "float32"),
         "released_ov": ("openvino", "OpenVINO's default"), "released_ov_int8": ("openvino", "static int8 as fast's")}
ALL_MODES = ("released",) + tuple(PEERS) + fast.MODES


def default_modes(device):
    device = torch.device(device)
    if device.type == "cuda":
        return ["released", "released_ort", "eager", "fused", "cuda_graph", "onnxruntime"]
    if device.type == "mps":
        return ["released", "eager", "fused"]
    return ["released"] + list(PEERS) + ["eager", "fused", "onnxruntime", "openvino_fp32", "fast"]


def is_exact(mode):
    return mode == "released" or mode in fast.EXACT_MODES or PEERS.get(mode, (0, 0))[1] == "float32"


def skip_reason(mode, device):
    """Why `mode` cannot run on `device` (a sentence), or None when it can."""
    if mode not in PEERS:
        return None if mode == "released" else fast.unavailable(mode, device)
    device = torch.device(device)
    package = "onnxruntime" if PEERS[mode][0] == "onnxruntime" else "openvino"
    return fast.runtime_unavailable(package, mode, device) or (  # int8: ONNX Runtime's tool quantises
        fast.runtime_unavailable("onnxruntime", mode, device) if mode == "released_ov_int8" else None)


def build_mode(model, mode, device, batch=1, released_graph=None):
    """f(template, search) -> {"pred_boxes", "score"} for `mode`, from a copy of `model`.
    A peer runs the released op sequence's ONNX export: released_graph() (made once for
    every peer, see prepare_modes), or exported here."""
    m = copy.deepcopy(model)
    if mode == "released":
        return Released(m.to(device).eval()).eval()
    if mode in PEERS:
        return fast.onnx_runtime_mode(Released(m.eval()), PEERS[mode][0], device, batch, mode == "released_ov_int8",
                                      released_graph() if released_graph else None)
    return fast.prepare(m, mode, device, batch)


def outputs(fn, z, x):
    with torch.inference_mode():
        out = fn(z, x)
    return {k: out[k].detach().float().cpu().clone() for k in ("pred_boxes", "score")}


def reference64(model, z, x):
    """Eager outputs in float64 on the CPU: the yardstick for float32 rounding (a random
    network can amplify it past EXACT_TOL: a mode as far from this as eager is as exact)."""
    m = copy.deepcopy(model).cpu().double().eval()
    return outputs(m, z.cpu().double(), x.cpu().double())


def deviation(out, ref):
    """Max |out - ref| of pred_boxes and of score."""
    return (float((out["pred_boxes"] - ref["pred_boxes"]).abs().max()),
            float((out["score"] - ref["score"]).abs().max()))


CHECK_INPUTS = 4  # input pairs each mode's outputs are compared on


def check(fn, inputs, refs, refs64):
    """(max box deviation, max score deviation) from eager float32, and the max deviation
    from eager float64, over all input pairs."""
    devs = []
    for (z, x), ref, ref64 in zip(inputs, refs, refs64):
        out = outputs(fn, z, x)
        devs.append(deviation(out, ref) + (max(deviation(out, ref64)),))
    return tuple(max(d[i] for d in devs) for i in range(3))


# ----------------------------------------------------------------------------- timing
def time_fn(fn, warmup, iters, device=None):
    """Call fn() `warmup` times untimed, then `iters` times; returns each timed call's ms.
    On a GPU `device` is synchronised (hit.sync) before starting and before stopping every
    timed call, so queued work is neither charged to nor hidden from the call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device is not None:
            hit.sync(device)
        t0 = time.perf_counter()
        fn()
        if device is not None:
            hit.sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def time_interleaved(fns, warmup, iters, device=None, chunk=10):
    """Time several callables round-robin, `chunk` calls each per round, the order rotated
    every round, so that machine noise (other processes, clocks) hits them alike.
    Returns {name: [ms, ...]} with `iters` entries each."""
    names = list(fns)
    for name in names:
        time_fn(fns[name], warmup, 0, device)
    times = {name: [] for name in names}
    r = 0
    while any(len(t) < iters for t in times.values()):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            n = min(chunk, iters - len(times[name]))
            times[name] += time_fn(fns[name], 0, n, device)
        r += 1
    return times


def summarize(ms):
    ms = sorted(ms)
    median = statistics.median(ms)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {"median_ms": median, "p90_ms": p90, "min_ms": ms[0], "fps": 1e3 / median}


# ----------------------------------------------------------------------------- memory
def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    """(MB, what it measures): the CUDA allocator's peak since the last reset, the MPS
    driver's allocation, or the whole process's peak resident set on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda max_memory_allocated"
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2 ** 20, "mps driver allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2 ** 20 if platform.system() == "Darwin" else 2 ** 10), "process max RSS"


def forward_memory(call, device):
    """Memory around one call(): (peak MB, what it measures, MB the call itself added on
    top of what was allocated before it: CUDA only, else None)."""
    device = torch.device(device)
    hit.sync(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    reset_peak(device)
    with torch.inference_mode():
        call()
    hit.sync(device)
    peak, kind = peak_memory(device)
    return peak, kind, (peak - before / 2 ** 20) if before is not None else None


# ----------------------------------------------------------------------------- model-only benchmark
def prepare_modes(model, args, device, checks, log=print):
    """Each of args.modes built from a copy of `model` and checked against eager on `checks`
    (inputs, refs, refs64) -> (calls on the first input, deviations, paths, skipped). The
    peers share one export of the released op sequence."""
    variant, (inputs, refs, refs64) = model.cfg.variant, checks
    z, x = inputs[0]
    fns, devs, paths, skipped = {}, {}, {}, []
    with tempfile.TemporaryDirectory(prefix="hit_peer_") as tmp:
        graph = functools.cache(lambda: fast.export_onnx(Released(copy.deepcopy(model).eval()),
                                                         os.path.join(tmp, "released.onnx")))
        for mode in args.modes:
            reason = skip_reason(mode, device)
            if reason is None:
                try:
                    fn = build_mode(model, mode, device, args.batch, graph)
                    paths[mode] = fast.path_of(fn, mode)
                    if paths[mode] != mode:  # `fast` has several paths: say which one is timed
                        log(f"  [{variant}] mode {mode} runs as: {paths[mode]}")
                    devs[mode] = check(fn, inputs, refs, refs64)
                    fns[mode] = (lambda f: lambda: f(z, x))(fn)
                except Exception as e:  # a mode this torch/device cannot run: note it, go on
                    reason = failure(e)
            note(skipped, variant, device, mode, reason, log)
    return fns, devs, paths, skipped


def bench_variant(model, args, device, log=print):
    """Prepare every mode from copies of `model` (unfused, CPU), check their outputs
    against eager on the same inputs, time all modes interleaved, in one process.
    Returns (records, skipped)."""
    variant = model.cfg.variant
    stats = model_stats(model)
    # CHECK_INPUTS input pairs (a random network's score maps are one-hot for some, hiding
    # errors) of the timed batch size (CUDA graphs are captured for one); the first is timed.
    inputs = [make_inputs(model.cfg, args.batch, device, args.seed + 1 + i)
              for i in range(CHECK_INPUTS)]
    eager = copy.deepcopy(model).to(device)
    refs = [outputs(eager, z, x) for z, x in inputs]
    refs64 = [reference64(model, z, x) for z, x in inputs]
    eager_err = max(max(deviation(r, r64)) for r, r64 in zip(refs, refs64))  # float32 rounding
    fns, devs, paths, skipped = prepare_modes(model, args, device, (inputs, refs, refs64), log)
    mems = {mode: forward_memory(f, device) for mode, f in fns.items()}
    with torch.inference_mode():
        times = time_interleaved(fns, args.warmup, args.iters, device)
    base = statistics.median(times["released"]) if "released" in times else None
    name = device_name(device)
    records = []
    for mode, ms in times.items():
        s = summarize(ms)
        records.append({
            "variant": variant, "device": device.type, "device_name": name,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
            "mode": mode, "path": paths[mode], "exact": is_exact(mode), **stats, **s,
            "speedup_vs_released": base / s["median_ms"] if base else None,
            "max_abs_dev": devs[mode][0], "score_dev": devs[mode][1],
            "dev_vs_fp64": devs[mode][2], "eager_fp32_err": eager_err,
            "exact_ok": devs[mode][0] <= EXACT_TOL and devs[mode][1] <= EXACT_TOL if is_exact(mode) else None,
            "peak_mem_mb": mems[mode][0], "peak_mem_kind": mems[mode][1],
            "call_mem_mb": mems[mode][2],
            "weights": "checkpoint" if args.checkpoint else f"random (seed {args.seed})",
            "iters": args.iters, "warmup": args.warmup})
    return records, skipped


# ----------------------------------------------------------------------------- end-to-end tracking
def make_dataset(folder, sequences=16, frames=60, size=(640, 360), seed=0):
    """A procedural set (synth.py) of `sequences` sequences, made once in `folder` (a
    temporary folder of this run: synth.ensure's marker is not needed), as data.Sequence."""
    if not os.path.isdir(folder):  # made once, for every variant of the run
        synth.synth(folder, sequences, frames, seed, size, val_fraction=0, progress=False)
    return data.read_got10k(folder, "train")


def bench_tracking(model, mode, device, seq, model_ms=None, warmup_frames=10):
    """Track `seq` with track.Tracker in `mode`: a warm-up pass over its first frames
    (a tenth, at most `warmup_frames`), then a timed pass over all of them.

    End-to-end time per frame = crop + resize + normalise + network + box mapping
    (track.run_sequence's per-frame times, which exclude JPEG decoding); the first frame
    (initialisation) is left out. Returns one record."""
    tracker = track.Tracker(copy.deepcopy(model), device, mode)  # it runs fast.prepare
    splits = []
    inner = tracker.track

    def track_and_record(image):
        result = inner(image)
        splits.append(dict(tracker.last_timing))
        return result

    tracker.track = track_and_record
    k = min(warmup_frames, max(2, len(seq.frames) // 10))  # warm-up
    track.run_sequence(tracker, dataclasses.replace(
        seq, frames=seq.frames[:k], gt=seq.gt[:k],
        visible=None if seq.visible is None else seq.visible[:k]))
    splits.clear()
    _, seconds = track.run_sequence(tracker, seq)
    per_frame = 1e3 * seconds[1:]
    rec = {"variant": model.cfg.variant, "mode": mode, "device": device.type,
           "frames": len(seq.frames), "image_size": list(data.read_image(seq.frames[0]).shape[1::-1]),  # (w, h)
           "e2e_median_ms": float(statistics.median(per_frame)),
           "e2e_fps": float(len(per_frame) / (per_frame.sum() / 1e3)),
           "model_median_ms": model_ms, "model_fps": 1e3 / model_ms if model_ms else None}
    if splits and splits[0]:
        for key in splits[0]:
            rec[f"{key}_ms"] = float(statistics.median(s[key] for s in splits))
    return rec


def bench_dataset(model, mode, device, seqs, batch):
    """Dataset frames per second of track.py --dataset --batch `batch` (track.run_batched:
    JPEG decoding, crops, network, box mapping, everything but writing files), after a
    warm-up on a few frames, and the model-only frames per second at that batch (the same
    prepared model on random inputs, interleaved runs of 10 calls). Returns one record."""
    tracker = track.Tracker(copy.deepcopy(model), device, mode, batch=batch)
    warm = [dataclasses.replace(q, frames=q.frames[:3], gt=q.gt[:3], visible=None) for q in seqs[:batch]]
    track.run_batched(tracker, warm, lambda *a: None, lambda *a: None)
    frames, t0 = [0], time.perf_counter()

    def count(seq, boxes, times):
        frames[0] += len(boxes)

    track.run_batched(tracker, seqs, count, lambda seq, err: None)
    seconds = time.perf_counter() - t0
    z, x = make_inputs(model.cfg, batch, device)
    with torch.inference_mode():
        model_ms = statistics.median(time_fn(lambda: tracker.forward(z, x), 3, 20, device))
    return {"variant": model.cfg.variant, "mode": mode, "device": device.type, "batch": batch,
            "sequences": len(seqs), "frames": frames[0], "dataset_fps": frames[0] / seconds,
            "model_fps": 1e3 * batch / model_ms}


def format_dataset(rec):
    return (f"dataset {rec['variant']} {rec['mode']} batch {rec['batch']}: {rec['dataset_fps']:.1f} "
            f"frames/s end to end over {rec['sequences']} sequences ({rec['frames']} frames); "
            f"model only at this batch {rec['model_fps']:.1f} frames/s")


# ----------------------------------------------------------------------------- training throughput
def random_batch(cfg, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, x = make_inputs(cfg, batch, device, seed)
    cxcy = torch.rand(batch, 2, generator=g) * 0.4 + 0.3
    wh = torch.rand(batch, 2, generator=g) * 0.4 + 0.1
    return {"template": z, "search": x, "search_box": torch.cat([cxcy, wh], 1).to(device)}


def amp_dtype_for(device):
    """train.py --amp's autocast dtype on `device` (None: it would train in float32)."""
    try:
        import train
    except (ImportError, SyntaxError):
        return None
    with warnings.catch_warnings():  # "no native bfloat16": then there is no amp row
        warnings.simplefilter("ignore")
        return train.amp_settings(True, device)[0]


def step_fn(model, optimizer, batch, device, amp_dtype=None):
    """One training step exactly as train.py takes it: train.train_step (Eq. 4 loss, clip,
    AdamW; autocast to amp_dtype as --amp does) -> (fn, which). RuntimeError, naming the
    import error, where train.train_step is missing: never time a stand-in."""
    try:
        import train
        train_step = train.train_step
    except (ImportError, AttributeError, SyntaxError) as err:
        raise RuntimeError("cannot time the training step: train.train_step is not "
                           f"importable ({type(err).__name__}: {err})") from err
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return ((lambda: train_step(model, batch, optimizer, device, 0.1, scaler, amp_dtype)),
            "train.train_step (Eq. 4 loss)")


def bench_training(model, device, batch, warmup=2, steps=5, amp_dtype=None):
    """Samples/s of forward + backward + AdamW step on random inputs, model in train mode
    (median step after min(warmup, steps) untimed ones), float32 or autocast to amp_dtype."""
    warmup = min(warmup, steps)
    m = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(m.parameters(), lr=5e-4, weight_decay=1e-4)
    fn, which = step_fn(m, optimizer, random_batch(m.cfg, batch, device), device, amp_dtype)
    reset_peak(device)
    ms = time_fn(fn, warmup, steps, device)
    mem, kind = peak_memory(device)
    median = statistics.median(ms)
    precision = "float32" if amp_dtype is None else f"amp {str(amp_dtype).split('.')[-1]}"
    return {"variant": m.cfg.variant, "device": device.type, "batch": batch, "steps": steps,
            "precision": precision, "step_median_ms": median, "samples_per_s": batch * 1e3 / median,
            "loss": which, "peak_mem_mb": mem, "peak_mem_kind": kind}


# ----------------------------------------------------------------------------- report
def format_table(records):
    """One row per (variant, mode). An exact mode off eager by more than EXACT_TOL is
    flagged "!! NOT EXACT"; reduced modes show their deviation as "~"."""
    head = (f"{'variant':7s} {'mode':10s} {'exact':5s} {'median':>7s} {'p90':>7s} {'min':>7s} "
            f"{'fps':>7s} {'vs rel':>6s} {'box dev':>8s} {'score dev':>9s} {'params M':>11s} "
            f"{'GMACs':>6s} {'mem MB':>7s}")
    lines = [head, "-" * len(head)]
    for r in records:
        speed = f"{r['speedup_vs_released']:.2f}x" if r["speedup_vs_released"] else "-"
        if not r["exact"]:
            flag = "  ~ reduced precision"
        elif not r["exact_ok"]:
            flag = f"  !! NOT EXACT: deviates > {EXACT_TOL:g} from eager"
            if r.get("dev_vs_fp64") is not None:
                flag += (f" (vs float64 eager {r['dev_vs_fp64']:.1e}; eager's own float32 "
                         f"error {r['eager_fp32_err']:.1e})")
        else:
            flag = ""
        if r.get("path", r["mode"]) != r["mode"]:
            flag += f"  [{r['path']}]"
        lines.append(
            f"{r['variant']:7s} {r['mode']:10s} {'yes' if r['exact'] else 'no':5s} "
            f"{r['median_ms']:7.2f} {r['p90_ms']:7.2f} {r['min_ms']:7.2f} {r['fps']:7.1f} "
            f"{speed:>6s} {r['max_abs_dev']:8.1e} {r['score_dev']:9.1e} "
            f"{r['params_unfused'] / 1e6:5.2f}/{r['params_fused'] / 1e6:5.2f} "
            f"{r['gmacs']:6.3f} {r['peak_mem_mb']:7.0f}{flag}")
    return "\n".join(lines)


def format_tracking(rec):
    s = (f"tracking {rec['variant']:5s} {rec['mode']:8s} {rec['frames']} frames "
         f"{rec['image_size'][0]}x{rec['image_size'][1]}: end-to-end {rec['e2e_fps']:.1f} fps "
         f"(median {rec['e2e_median_ms']:.2f} ms/frame = {1e3 / rec['e2e_median_ms']:.1f} fps)")
    if rec["model_fps"]:
        s += f", model only {rec['model_fps']:.1f} fps"
    if "network_ms" in rec:
        s += (f"; split preprocess {rec['preprocess_ms']:.2f} / network {rec['network_ms']:.2f}"
              f" / postprocess {rec['postprocess_ms']:.2f} ms")
    return s


def format_training(rec):
    return (f"training {rec['variant']:5s} batch {rec['batch']} {rec['precision']}: "
            f"{rec['samples_per_s']:.1f} samples/s "
            f"(step {rec['step_median_ms']:.0f} ms median of {rec['steps']}; {rec['loss']}; "
            f"peak {rec['peak_mem_mb']:.0f} MB {rec['peak_mem_kind']})")


# ----------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(description="Measure HiT: model-only latency per inference "
                                "mode (interleaved, against the released op sequence), "
                                "end-to-end tracking fps and training throughput.")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps, or auto")
    p.add_argument("--variant", choices=("base", "small", "tiny", "all"), default="all")
    p.add_argument("--batch", type=int, default=1, help="model-only batch size (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: the cores available to this process)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per mode (default 20)")
    p.add_argument("--iters", type=int, default=100, help="timed calls per mode (default 100)")
    p.add_argument("--modes", default=None,
                   help="comma list from " + ",".join(ALL_MODES) + "; default on a CPU: all but "
                   "cuda_graph; on CUDA: released, released_ort, eager, fused, cuda_graph, "
                   "onnxruntime. released_* are the peers: the released model exported to ONNX, "
                   "in a runtime")
    p.add_argument("--json", metavar="PATH", help="write records, tracking, training, machine")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="real weights (released or ours); default: seeded random weights with "
                   "random BN statistics and attention biases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-track", action="store_true",
                   help="skip end-to-end tracking of one sequence (--dataset-batches still runs)")
    p.add_argument("--track-frames", type=int, default=100)
    p.add_argument("--track-modes", default="fused",
                   help="comma list of modes to track in (default fused)")
    p.add_argument("--no-train", action="store_true", help="skip training throughput")
    p.add_argument("--dataset-batches", default="",
                   help="comma list of batch sizes, e.g. 1,8,16: dataset frames/s of track.py "
                        "--dataset --batch N on 16 generated 640x360 sequences, in each "
                        "--track-modes mode, next to model-only frames/s (default: skipped)")
    p.add_argument("--train-batch", type=int, default=None, help="default 32 on GPU, 8 on CPU")
    p.add_argument("--train-steps", type=int, default=5, help="timed steps (after 2 warm-up)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        device = hit.parse_device(args.device)
    except ValueError as err:
        p.error(str(err))
    args.modes = args.modes.split(",") if args.modes else default_modes(device)
    args.track_modes = args.track_modes.split(",")
    unknown = [m for m in args.modes + args.track_modes if m not in ALL_MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; expected from {list(ALL_MODES)}")
    try:
        args.dataset_batches = [int(b) for b in args.dataset_batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--dataset-batches: expected a comma list of integers, got {args.dataset_batches!r}")
    if any(b < 1 for b in args.dataset_batches):
        p.error("--dataset-batches: batch sizes must be >= 1")
    if any(m == "released" or m in PEERS for m in args.track_modes):
        p.error("--track-modes: the tracker runs fast.prepare modes, not the released baseline")
    if min(args.batch, args.iters, args.track_frames, args.train_steps) < 1 or args.warmup < 0:
        p.error("--batch, --iters, --track-frames and --train-steps must be >= 1, --warmup >= 0")
    if (args.threads is not None and args.threads < 1) or (args.train_batch is not None and args.train_batch < 1):
        p.error("--threads and --train-batch must be >= 1 (or left out for their defaults)")
    if args.track_frames < 2 and not args.no_track:
        p.error("--track-frames must be >= 2 (the first frame initialises)")
    args.threads = fast.usable_cores() if args.threads is None else args.threads
    args.train_batch = args.train_batch or (8 if device.type == "cpu" else 32)  # 0 was refused above
    return args, device


def variants_of(args):
    if args.checkpoint:  # the checkpoint decides; --variant all accepts it, else must match
        v = hit.load_checkpoint(args.checkpoint).cfg.variant
        if args.variant not in ("all", v):
            raise SystemExit(f"--checkpoint holds HiT-{v}, not HiT-{args.variant}")
        return [v]
    return list(hit.VARIANTS) if args.variant == "all" else [args.variant]


def note(skipped, variant, device, what, reason, log=print):
    """Say and record why a measurement was skipped (nothing when `reason` is None)."""
    if reason:
        log(f"  [{variant}] skipping {what}: {reason}")
        skipped.append({"variant": variant, "mode": what, "device": device.type, "reason": reason})


def track_variant(model, args, device, sequence, tracking, skipped, recs):
    """End-to-end tracking fps of `model` in each --track-modes mode (appends to `tracking`)."""
    for mode in ([] if args.no_track else args.track_modes):
        ms = next((r["median_ms"] for r in recs if r["mode"] == mode), None) if args.batch == 1 else None
        note(skipped, model.cfg.variant, device, f"tracking {mode}", skip_reason(mode, device) or attempt(
            lambda: tracking.append(bench_tracking(model, mode, device, sequence(), ms))))


def dataset_variant(model, args, device, seq_dir, results, skipped):
    """Dataset frames/s at each --dataset-batches size in each --track-modes mode."""
    seqs = make_dataset(os.path.join(seq_dir, "dataset")) if args.dataset_batches else []
    for mode in args.track_modes if seqs else []:
        for batch in args.dataset_batches:
            note(skipped, model.cfg.variant, device, f"dataset {mode} x{batch}", skip_reason(mode, device) or attempt(
                lambda: results.append(bench_dataset(model, mode, device, seqs, batch))))


def train_variant(model, args, device, training, skipped):
    """Training throughput of `model`, float32 and --amp's autocast where it does anything."""
    amp = amp_dtype_for(device)
    for dtype in ([] if args.no_train else [None] + ([amp] if amp else [])):
        step = functools.partial(bench_training, model, device, args.train_batch, steps=args.train_steps, amp_dtype=dtype)
        note(skipped, model.cfg.variant, device, f"training ({dtype or 'float32'})", attempt(lambda: training.append(step())))


def report(records, tracking, training, skipped, datasets=()):
    print()
    print(format_table(records))
    print("times in ms per call (median, p90, min); vs rel = released median / mode median, same "
          "run; box/score dev = max |output - eager| on the same inputs (JSON also has "
          "dev_vs_fp64 and eager_fp32_err: the float32 rounding yardstick); params M unfused/fused; "
          f"mem = {records[0]['peak_mem_kind'] if records else '-'}")
    for s in skipped:
        print(f"skipped {s['variant']} {s['mode']}: {s['reason']}")
    for rec in tracking:
        print(format_tracking(rec))
    for rec in training:
        print(format_training(rec))
    for rec in datasets:
        print(format_dataset(rec))


def main(argv=None):
    args, device = parse_args(argv)
    fast.exit_on_sigterm()
    torch.set_num_threads(args.threads)
    machine = machine_info(device, args.threads)
    print(f"HiT bench on {machine['device_name']} ({device.type}), torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, {args.warmup} warm-up + {args.iters} "
          f"timed calls per mode, interleaved; modes {','.join(args.modes)}")
    warning = busy_warning(args.threads) if device.type == "cpu" else None
    if warning:
        print(warning)
    records, skipped, tracking, training, datasets = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="hit_bench_") as seq_dir:
        sequence = functools.cache(lambda: make_dataset(os.path.join(seq_dir, "sequence"), 1, args.track_frames)[0])
        for variant in variants_of(args):
            print(f"[{variant}] preparing and timing {len(args.modes)} modes ...", flush=True)
            model = make_model(variant, args.checkpoint, args.seed)
            with fast.no_tf32():  # every mode in true float32 (PyTorch's TF32 convs: ~1e-3)
                recs, skip = bench_variant(model, args, device)
            records, skipped = records + recs, skipped + skip
            track_variant(model, args, device, sequence, tracking, skipped, recs)
            dataset_variant(model, args, device, seq_dir, datasets, skipped)
            train_variant(model, args, device, training, skipped)
    report(records, tracking, training, skipped, datasets)
    machine["load_end"] = load_average()
    if warning:
        print(warning)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": records, "tracking": tracking, "training": training, "datasets": datasets,
                       "skipped": skipped, "machine": machine,
                       "args": {k: v for k, v in vars(args).items()}}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
