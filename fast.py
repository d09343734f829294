"""fast.py: everything that only makes HiT run faster, or deploys it. Skip on a first read.

The network files (levit.py, attention_bias.py, bridge.py, hit.py) hold the paper's
network with one forward path per class. This file holds the rest: the machine queries
the speed paths depend on, the exact inference rewrites (folded BatchNorms, merged corner
towers, folded proj1, packed GEMMs), the `fast` CPU paths (int8, bf16), CUDA graphs, a
batch of frames cropped on the device and decoded in the background (batched evaluation),
ONNX export with ONNX Runtime and OpenVINO as modes, the table of modes and `prepare`,
which turns a HiT into a fast callable (the paper's Table 1 speeds: bench.py). It works
from outside: it replaces whole submodules or wraps the model, so the paper classes carry
no branches for it. track.py and bench.py import it; the network files never do.

    python fast.py export --checkpoint HiT_Tiny.pth.tar --out hit_tiny.onnx
    python fast.py export --checkpoint HiT_Tiny.pth.tar --out hit_tiny_int8.onnx --int8
"""
import argparse
import contextlib
import copy
import ctypes
import dataclasses
import functools
import importlib
import importlib.util
import io
import json
import os
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import bridge
import data
import hit
import levit


# ----------------------------------------------------------------------------- the machine
def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU feature flags Linux reports (an empty set elsewhere)."""
    try:
        with open(cpuinfo) as f:
            return set(next((line.split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16). There
    oneDNN's bf16 convolutions and GEMMs beat float32; elsewhere it emulates them, slower
    than float32 (SPEED.md)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo))


def cpu_has_vnni(cpuinfo="/proc/cpuinfo"):
    """True when this CPU multiplies u8 x s8 into int32 (VNNI, AMX): before it, x86 sums the
    pairs into saturating int16, so int8 inputs must keep to 7 bits (Int8Conv2d's levels)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags(cpuinfo))


def usable_cores():
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def exit_on_sigterm():
    """Make SIGTERM (what `timeout` and job schedulers send) exit 143 through SystemExit, so
    that `finally` blocks and context managers run: no temporary folder left behind."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# ----------------------------------------------------------------------------- exact rewrites
# The `fused` mode: the same function as hit.HiT, computed with fewer and larger
# operations. Outputs agree with the paper model within float32 rounding (tests: 1e-4).
def gemm_layout(w):
    """The same (out, in) weight stored column-major (W^T contiguous). F.linear multiplies
    by W^T; a contiguous W^T suits BLAS better for the few-token GEMMs of stages 2 and 3
    (20-80 rows; measured in SPEED.md), and costs nothing else."""
    return w.detach().t().contiguous().t()


class FrozenBias:
    """Mixin for levit's attentions: the (heads, Nq, Nk) bias gathered from its table once,
    as the released LeViT caches it in eval mode (a buffer: a fixed address for CUDA
    graphs). The table must not change afterwards (inference only)."""

    def __init__(self, attn):
        nn.Module.__init__(self)
        for name, value in vars(attn).items():  # heads, key_dim, v_dim, scale
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        for name, child in attn.named_children():  # qkv / kv, q, proj: shared, unchanged
            setattr(self, name, child)
        with torch.no_grad():
            bias = attn.bias()
        self.register_buffer("frozen_bias", None if bias is None else bias.detach().contiguous())
        self.train(attn.training)

    def bias(self):
        return self.frozen_bias


class FrozenAttention(FrozenBias, levit.Attention):
    pass


class FrozenShrinkAttention(FrozenBias, levit.ShrinkAttention):
    pass


def freeze_biases(module):
    """Replace every attention in `module` (in place) by its FrozenBias twin."""
    for name, child in module.named_children():
        if isinstance(child, FrozenBias):
            continue
        if isinstance(child, levit.Attention):
            setattr(module, name, FrozenAttention(child))
        elif isinstance(child, levit.ShrinkAttention):
            setattr(module, name, FrozenShrinkAttention(child))
        else:
            freeze_biases(child)
    return module


class FusedUpsample(nn.Module):
    """ConvTranspose2d(k=2, s=2) + BatchNorm2d, the BN folded in, as one matmul on tokens.

    A stride-2, kernel-2 transposed conv has no overlap: each input pixel writes its own
    2x2 output patch, out[2i+di, 2j+dj] = x[i, j] @ W[:, :, di, dj] + b. On tokens this
    is one (N, C_in) x (C_in, 4 C_out) matmul and one interleaving copy, much faster on
    CPU than the generic transposed-conv kernel.
    """

    def __init__(self, seq):
        super().__init__()
        conv, bn = seq[0], seq[1]
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
            w = conv.weight * scale[None, :, None, None]  # (C_in, C_out, 2, 2)
            b = bn.bias + (conv.bias - bn.running_mean) * scale  # (C_out,)
        self.c_out = w.shape[1]
        self.weight = nn.Parameter(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1))  # (C_in, 4*C_out): (di, dj, o)
        self.bias = nn.Parameter(b.repeat(4))  # (4*C_out,)

    def forward(self, x, side):
        B = x.shape[0]
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)  # (B*h*w, 4*C_out)
        y = y.view(B, side, side, 2, 2, self.c_out).transpose(2, 3)  # (B, h, 2, w, 2, C_out)
        return y.reshape(B, 4 * side * side, self.c_out)  # (B, 2h*2w, C_out) row-major


class FastBridge(bridge.Bridge):
    """bridge.Bridge with each upsampling a FusedUpsample; the same forward."""

    def __init__(self, br):
        nn.Module.__init__(self)
        self.stages = br.stages
        self.layers = nn.ModuleList([FusedUpsample(m) if isinstance(m, nn.Sequential) else m
                                     for m in br.layers])

    def up(self, i, x, side):
        return self.layers[i](x, side)


class MergedCornerHead(hit.CornerHead):
    """hit.CornerHead with every BN folded and the two towers merged into one network:
    both first convs read the same input, so they become one conv with twice the
    outputs; the later layers become groups=2 convs (each group one corner). Same
    arithmetic per output, half the kernel launches, larger GEMMs."""

    def __init__(self, head):
        nn.Module.__init__(self)
        self.feat_size, self.img_size = head.feat_size, head.img_size
        self.register_buffer("coord_x", head.coord_x, persistent=False)
        self.register_buffer("coord_y", head.coord_y, persistent=False)
        layers = []
        for i in range(1, 6):
            merged = self.merge(getattr(head, f"conv{i}_tl"), getattr(head, f"conv{i}_br"), i > 1)
            layers += [merged, nn.ReLU(inplace=True)] if i < 5 else [merged]
        self.towers = nn.Sequential(*layers)

    @staticmethod
    @torch.no_grad()
    def merge(tl, br, grouped):
        parts = [levit.fold_bn(m[0].weight, m[0].bias, m[1]) if isinstance(m, nn.Sequential)
                 else (m.weight, m.bias) for m in (tl, br)]
        w = torch.cat([p[0] for p in parts])  # (2*C_out, C_in/groups, k, k)
        groups = 2 if grouped else 1
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2], 1, w.shape[2] // 2,
                         groups=groups).to(w)
        conv.weight.copy_(w)
        conv.bias.copy_(torch.cat([p[1] for p in parts]))
        return conv

    def score_maps(self, x):
        return self.towers(x)


class Gate(nn.Module):
    """The head's input from O and G: hit.reweight(proj1(O), proj2(G))."""

    def __init__(self, proj1, proj2):
        super().__init__()
        self.proj1, self.proj2 = proj1, proj2

    def forward(self, o, g):
        return hit.reweight(self.proj1(o), self.proj2(g))  # (B, 256, D)


class FoldedGate(Gate):
    """The head's input without forming e = proj1(O) (see fold_proj1): per token
    a = e . g = O (W1^T g) + b1 . g, then [a * O, a]: C1 + 1 channels instead of D."""

    def forward(self, o, g):
        g_p = self.proj2(g)  # (B, D)
        u = g_p @ self.proj1.weight  # (B, C1)
        a = torch.baddbmm((g_p @ self.proj1.bias)[:, None, None], o, u.unsqueeze(2))  # (B, 256, 1)
        return torch.cat([o * a, a], dim=2)  # (B, 256, C1 + 1)


@torch.no_grad()
def fold_proj1(first, proj):
    """The head's first conv with proj1 (Linear C1 -> D) folded in, exact in real arithmetic.

    The head computes conv1(a * (O W1^T + b1)) with a per-token scalar a. A conv is linear
    in its input, so this equals conv1'([a * O, a]) with conv1' = conv1 . W1 on the first
    C1 input channels and conv1 . b1 on one extra channel: for Small and Tiny (C1 = 128 <
    D = 256) half the input channels of the head's largest convolution."""
    w = first.weight  # (O, D, 3, 3)
    w_o = torch.einsum("odhw,dc->ochw", w, proj.weight)  # (O, C1, 3, 3)
    w_a = torch.einsum("odhw,d->ohw", w, proj.bias).unsqueeze(1)  # (O, 1, 3, 3)
    conv = nn.Conv2d(proj.in_features + 1, w.shape[0], 3, 1, 1).to(w)
    conv.weight.copy_(torch.cat([w_o, w_a], dim=1))
    conv.bias.copy_(first.bias)
    return conv


class FastHiT(nn.Module):
    """hit.HiT rewritten for inference (mode `fused`), built in place from a HiT, whose
    modules it shares: backbone BNs folded (HiT.fuse), attention biases gathered once,
    backbone Linear weights column-major, the patch embedding channels-last (its convs
    then run NHWC, faster for few channels and already token-major), the Bridge's
    upsamplings as matmuls on tokens, the corner towers merged with their BNs folded,
    and, where it saves work (C1 + 1 < D: Small, Tiny), proj1 folded into the head."""

    def __init__(self, model):
        super().__init__()
        model.fuse()
        self.cfg = model.cfg
        self.backbone = freeze_biases(model.backbone)
        for m in self.backbone.modules():
            if type(m) is nn.Linear:
                m.weight = nn.Parameter(gemm_layout(m.weight))
        self.backbone.body.patch_embed.to(memory_format=torch.channels_last)
        self.bridge = FastBridge(model.bottleneck)
        self.head = MergedCornerHead(model.box_head)
        proj1, proj2 = model.bottleneck.proj1, model.bottleneck.proj2
        self.folded = proj1.in_features + 1 < proj1.out_features
        if self.folded:
            self.head.towers[0] = fold_proj1(self.head.towers[0], proj1)
        self.gate = (FoldedGate if self.folded else Gate)(proj1, proj2)
        self.eval()

    def forward(self, template, search):
        s1, s2, s3 = self.backbone(template, search)  # (B, N_i, C_i), tokens [search; template]
        side = self.cfg.search_size // self.cfg.stride
        n = side * side  # search tokens at stage 1
        o = self.bridge(s1[:, :n], s2[:, :n // 4], s3[:, :n // 16])  # (B, 256, C1)
        x = self.gate(o, s3.mean(dim=1))  # (B, 256, C): C = D, or C1 + 1 when folded
        fmap = x.transpose(1, 2).reshape(x.shape[0], -1, side, side)  # (B, C, 16, 16)
        box, score = self.head(fmap)
        return {"pred_boxes": hit.xyxy_to_cxcywh(box), "score": score}


# ----------------------------------------------------------------------------- CPU GEMMs
@functools.cache  # a property of the torch build; PackedLinear asks on every call
def onednn_linear_available():
    """oneDNN's packed-weight linear (torch.ops.mkldnn) exists in this build."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """A Linear (+ an optional Hardswish) for CPU inference through oneDNN with the weight
    pre-packed (the Hardswish fused into the GEMM's epilogue), or F.linear (MKL sgemm) on
    the column-major weight: neither wins on every CPU (SPEED.md), so `pick_gemm` times
    both. The packed copy is opaque: made on first use, remade when the weight changes,
    never saved or copied; with autograd on, off the CPU, or without oneDNN: F.linear."""

    def __init__(self, linear, post="none"):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # shared, unchanged (state dict)
        self.post = post  # "none" or "hardswish" (fused into the GEMM's epilogue)
        self.use_onednn = True  # pick_gemm may switch it
        self._packed, self._key = None, None

    def forward(self, x):
        if (not self.use_onednn or x.device.type != "cpu" or torch.is_grad_enabled()
                or not onednn_linear_available()):
            y = F.linear(x, self.weight, self.bias)
            return F.hardswish(y) if self.post == "hardswish" else y
        w = self.weight  # remade when written to or moved (inference tensors have no version)
        key = w.data_ptr(), (None if w.is_inference() else w._version)
        if key != self._key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), x.shape[:-1].numel())
            self._key = key
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, self.post, [], "")

    def __getstate__(self):  # deepcopy/pickle: the opaque packed weight cannot be copied
        return {**self.__dict__, "_packed": None, "_key": None}


def median_seconds(fns, warmup=2, reps=7):
    """Median wall time of each callable in `fns`, called round-robin (noise hits all alike)."""
    times = [[] for _ in fns]
    for i in range(warmup + reps):
        for t, fn in zip(times, fns):
            start = time.perf_counter()
            fn()
            if i >= warmup:
                t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def set_gemm(model, onednn: bool) -> None:
    """Run every PackedLinear of `model` through oneDNN (True) or MKL (False)."""
    for m in model.modules():
        if isinstance(m, PackedLinear):
            m.use_onednn = onednn


@torch.inference_mode()
def pick_gemm(model, *inputs):
    """Run every PackedLinear of `model` through oneDNN or through MKL, whichever makes
    the whole forward on `inputs` faster on this machine (timed in context, interleaved:
    a GEMM timed alone misleads, as the caches and thread pools differ). Returns True
    when oneDNN was kept. Costs ~20 forwards."""
    def run(flag):
        set_gemm(model, flag)
        model(*inputs)

    t_onednn, t_mkl = median_seconds([lambda: run(True), lambda: run(False)])
    set_gemm(model, t_onednn <= t_mkl)
    return t_onednn <= t_mkl


# pick_gemm's choice per (config, batch, threads), made once per process: two models
# prepared alike then compute the same bits (oneDNN and MKL differ in the last bits, and
# a second timing on a noisy machine could pick the other).
_GEMM_CHOICE = {}


def pack_linears(module):
    """Replace every nn.Linear in `module` by a PackedLinear, in place, fusing a Hardswish
    that directly follows it in a Sequential (LeViT's MLP) into it; returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            for i in range(len(child) - 1):
                if type(child[i]) is nn.Linear and type(child[i + 1]) is nn.Hardswish:
                    child[i], child[i + 1] = PackedLinear(child[i], "hardswish"), nn.Identity()
        if type(child) is nn.Linear:
            setattr(module, name, PackedLinear(child))
        else:
            pack_linears(child)
    return module


def refuse_packed(model, instead: str) -> None:
    """Quantising and exporting rewrite Linears: a model whose Linears mode fused packed
    already (PackedLinear) is refused, saying what to do `instead`."""
    if any(isinstance(m, PackedLinear) for m in model.modules()):
        raise ValueError(f"this model was prepared for mode fused (packed GEMMs): {instead}")


# ----------------------------------------------------------------------------- reduced precision, CUDA graphs


class InBF16(nn.Module):
    """`module` run in bfloat16 between float32 activations (the fast mode's patch embedding)."""

    def __init__(self, module):
        super().__init__()
        self.module = module.to(torch.bfloat16)

    def forward(self, x):
        return self.module(x.to(torch.bfloat16)).float()  # keeps x's memory format


class Int8Conv2d(nn.Module):
    """Conv2d (+ its activation) in int8: weights per output channel, the input quantised
    per call over its own min..max (asymmetric uint8, so nothing to calibrate), run by
    oneDNN's int8 convolution with float32 output: the eager `fast` path's corner head,
    faster than float32 or bf16 (SPEED.md). Without VNNI (cpu_has_vnni) the input uses 7
    bits (`levels` 127), as PyTorch's own x86 quantisation does."""

    def __init__(self, conv, post="none", levels=255):
        super().__init__()
        w = conv.weight.detach().float()
        scales = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12)  # (C_out,)
        qw = torch.round(w / scales[:, None, None, None]).clamp(-127, 127).to(torch.int8)
        self.conv_args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.post, self.levels = post, levels
        self.register_buffer("qweight", qw)
        self.register_buffer("w_scales", scales)
        self.register_buffer("w_zero_points", torch.zeros_like(scales, dtype=torch.int64))
        self.register_buffer("bias", conv.bias.detach().float().clone())
        self._packed = self.pack()  # fails here, not mid-tracking, where oneDNN lacks it

    def pack(self):
        """oneDNN's blocked copy of the weight: opaque, so never saved or copied (remade)."""
        # the input scale / zero point given here are placeholders: the real ones come per call
        return torch.ops.onednn.qconv_prepack(self.qweight, self.w_scales, 1.0, 0, *self.conv_args, None)

    def __getstate__(self):  # deepcopy/pickle: drop the opaque packed weight
        return {**self.__dict__, "_packed": None}

    def forward(self, x):
        if self._packed is None:
            self._packed = self.pack()
        lo, hi = (float(v) for v in torch.aminmax(x))
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # 0 must be exact: it is the convs' padding
        scale = max(hi - lo, 1e-8) / self.levels
        zero = int(round(-lo / scale))
        qx = x.mul(1.0 / scale).round_().add_(zero).clamp_(0, self.levels).to(torch.uint8)
        stride, padding, dilation, groups = self.conv_args
        return torch.ops.onednn.qconv2d_pointwise(
            qx, scale, zero, self._packed, self.w_scales, self.w_zero_points, self.bias, stride,
            padding, dilation, groups, 1.0, 0, torch.float32, self.post, [], "")


def int8_convs(seq):
    """A copy of `seq` with each Conv2d (and a ReLU/Hardswish right after it, fused into
    it) replaced by Int8Conv2d."""
    mods, out = list(seq), []
    while mods:
        m = mods.pop(0)
        if isinstance(m, nn.Conv2d):
            post = {nn.ReLU: "relu", nn.Hardswish: "hardswish"}.get(type(mods[0]) if mods else None)
            if post:
                mods.pop(0)
            m = Int8Conv2d(m, post or "none", levels=255 if cpu_has_vnni() else 127)
        out.append(m)
    return nn.Sequential(*out)


def example_inputs(cfg, batch=1, device="cpu"):
    """Zero (template, search) of the real shapes: for warm-up and compilation."""
    return (torch.zeros(batch, 3, cfg.template_size, cfg.template_size, device=device),
            torch.zeros(batch, 3, cfg.search_size, cfg.search_size, device=device))


@contextlib.contextmanager
def no_tf32():
    """CUDA convolutions and matmuls in true float32 inside the block, flags restored after:
    PyTorch's default TF32 cuDNN convolutions move the boxes far past the exact modes' 1e-4
    (SPEED.md). The exact modes run under it on CUDA (CudaGraph, track.Tracker, bench.py)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class CudaGraph(nn.Module):
    """One forward captured at a fixed batch size in a CUDA graph and replayed (mode
    `cuda_graph`): no per-kernel launch cost, which dominates batch 1 on a GPU. Inputs are
    copied into static buffers; outputs are the graph's static tensors (clone to keep)."""

    def __init__(self, model, batch=1):
        super().__init__()
        self.model, self.cfg = model, model.cfg
        self.z, self.x = example_inputs(model.cfg, batch, next(model.parameters()).device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        # The graph keeps the kernels chosen at capture: float32 ones (no_tf32), for good.
        with torch.cuda.stream(stream), torch.inference_mode(), no_tf32():
            for _ in range(3):  # warm up kernels and the bias caches outside the graph
                model(self.z, self.x)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode(), no_tf32():
            self.out = model(self.z, self.x)

    def forward(self, template, search):
        self.z.copy_(template)
        self.x.copy_(search)
        self.graph.replay()
        return self.out


def int8_cpu(model):
    """The eager `fast` path (see fast_cpu), a copy of a FastHiT: the backbone Linears in
    dynamic int8 (fbgemm), the corner head's convs in int8 (Int8Conv2d; float32 where
    oneDNN lacks it; PyTorch's own dynamic Conv2d cost AUC, SPEED.md) and, where the CPU
    has native bfloat16, the patch embedding in bf16 (its few-channel convs are slower in
    int8). Attention, softmax, the Bridge and the soft-argmax stay float32."""
    from torch.ao.quantization import quantize_dynamic
    refuse_packed(model, "quantise a fresh one")
    q = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch.ao announces its own deprecation on every call
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        q.backbone = quantize_dynamic(q.backbone, {nn.Linear}, dtype=torch.qint8)
    try:
        q.head.towers = int8_convs(q.head.towers)
    except (RuntimeError, AttributeError, NotImplementedError):
        pass  # no oneDNN int8 convolution in this build
    if cpu_has_bf16():
        q.backbone.body.patch_embed = InBF16(q.backbone.body.patch_embed)
    return q


OPENVINO_PATH_PACKAGES = ("onnx", "onnxruntime", "openvino")  # exporter, quantisation tool, runtime


def missing_packages(packages):
    """The optional packages (import names) of `packages` that are not installed."""
    return [p for p in packages if importlib.util.find_spec(p) is None]


def openvino_available():
    """Whether the optional packages of fast's OpenVINO path are installed."""
    return not missing_packages(OPENVINO_PATH_PACKAGES)


def fast_cpu(model, batch=1):
    """The fastest CPU model we found (mode `fast`), from a FastHiT: on CPUs with native
    bfloat16 (AVX512-BF16, AMX; all with int8 dot products) where the deployment packages
    are installed, our ONNX export in OpenVINO with static int8 GEMMs and convolutions
    (quantize_onnx), bf16 elsewhere: faster than every PyTorch path (SPEED.md). Otherwise
    the eager int8 path int8_cpu. Its `path` says which runs (track.py, bench.py print it)."""
    if cpu_has_bf16() and openvino_available():
        return onnx_runtime_mode(model, "openvino", "cpu", batch, int8=True)  # bf16 where not int8
    fn = int8_cpu(model)
    missing = missing_packages(OPENVINO_PATH_PACKAGES)
    fn.path = "eager int8 (" + ("this CPU has no native bfloat16" if not cpu_has_bf16() else
                                f"without {', '.join(missing)}: {EXTRAS} for the faster OpenVINO int8 path") + ")"
    return fn


# ----------------------------------------------------------------------------- preprocessing on the device
# data.crop_resize and data.normalize again, as batched torch ops on the model's device, bit-identical
# to the numpy path. The tap tables stay numpy (tiny, per crop, shared with crop_resize);
# the per-pixel gathers and the fixed-point arithmetic run in torch. The integer ops keep
# numpy's dtypes (int32 row sums, int64 scalar tail), which CPU and CUDA compute alike.


class _CropPlan(NamedTuple):
    """One crop's taps addressed into the flat image buffer (numpy, a few KB)."""
    rows: np.ndarray    # (U,) address of each source row the crop reads, from its leftmost tapped pixel
    table: np.ndarray   # (8, out): k0, k1 (positions in rows), cy0, cy1, byte columns col0, col1, cx0, cx1
    window: int         # bytes from a row's address to its rightmost tapped byte, inclusive
    resize_factor: float
    crop_xyxy: tuple


def _crop_plan(image, box_xywh, factor: float, out_size: int, offset: int) -> _CropPlan:
    """The taps of crop_resize (the same data.crop_taps) for an image stored at flat offset.

    Each source row is listed once, as OpenCV's row cache does: a crop reads at most
    2 * out_size rows and at most its own height, and the horizontal pass runs on those
    only; y0 and y1 become positions k0, k1 in that list.
    """
    im_h, im_w = image.shape[:2]
    (y0, y1, cy0, cy1), (x0, x1, cx0, cx1), f, xyxy = data.crop_taps((im_h, im_w), box_xywh, factor, out_size)
    used, k = np.unique(np.concatenate([y0, y1]), return_inverse=True)  # sorted rows; y0, y1 = used[k]
    xlo = int(x0.min())
    table = np.stack([k[:out_size], k[out_size:], cy0, cy1, (x0 - xlo) * 3, (x1 - xlo) * 3, cx0, cx1])  # (8, out)
    return _CropPlan(offset + (used * im_w + xlo) * 3, table, (int(x1.max()) - xlo + 1) * 3, f, xyxy)


def _stack_plans(plans, device):
    """Plans -> (rows (n, U) int64, table (n, 8, out) int64) on device, U the largest row
    count; shorter row lists repeat their last row (read, never used)."""
    used = max(len(plan.rows) for plan in plans)
    rows = np.stack([np.pad(plan.rows, (0, used - len(plan.rows)), mode="edge") for plan in plans])  # (n, U)
    table = np.stack([plan.table for plan in plans])  # n x (8, out) -> (n, 8, out)
    return torch.from_numpy(rows.astype(np.int64)).to(device), torch.from_numpy(table.astype(np.int64)).to(device)


def _flat_images(images, device, tail: int) -> torch.Tensor:
    """All images as one flat uint8 tensor on device, concatenated in order, then tail zeros.

    Not a padded (N, Hmax, Wmax*3) batch: nothing is copied for padding, and a pixel's
    address is offset + (y * W + x) * 3 + c whatever the image's size, so one index_select
    serves the batch. The tail keeps the last row window inside the buffer.
    """
    parts = []
    for image in images:
        t = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
        parts.append(t.to(device).reshape(-1))  # (H, W, 3) -> (H*W*3,): a view when contiguous
    if tail > 0:
        parts.append(torch.zeros(tail, dtype=torch.uint8, device=device))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _vertical_pass_torch(h0: torch.Tensor, h1: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """_vertical_pass on (N, out, n) int32 row sums with (N, out, 1) int32 weights: the
    SIMD formula on the first floor(n / 8) * 8 elements, the scalar one (int64) on the rest.
    >> on signed torch integers is arithmetic and int32 products wrap, as in numpy (every
    value here is >= 0 and far from overflowing anyway). h0 and h1 are overwritten: in-place
    ops spare a fresh (N, out, n) buffer per step, which on the CPU costs page faults."""
    n = h0.shape[-1]
    vec = data.SIMD_LANES * (n // data.SIMD_LANES)
    tail = None
    if vec < n:  # before the in-place ops below, though they leave these columns alone
        tail = ((h0[..., vec:].long() * b0 + h1[..., vec:].long() * b1 + (1 << 21)) >> 22).int()
    t, t1 = h0[..., :vec], h1[..., :vec]
    t >>= 4
    t *= b0
    t >>= 16
    t1 >>= 4
    t1 *= b1
    t1 >>= 16
    t += t1
    t += 2
    t >>= 2
    if tail is not None:
        t = torch.cat([t, tail], dim=-1)
    return t.clamp_(0, 255).to(torch.uint8)


def _resample_torch(flat: torch.Tensor, rows: torch.Tensor, table: torch.Tensor, window: int) -> torch.Tensor:
    """_resample for n crops at once: flat uint8 pixels, (n, U) row addresses and the
    (n, 8, out) table of _stack_plans -> uint8 (n, out, out, 3).

    Pixels are fetched in two steps, as numpy's plane[y0][:, col0]: whole row windows first
    (contiguous bytes), then the columns inside them with an index shared by every row
    (expand: no copy). One gather of flat[row + column] would need an int64 (n, out, out*3)
    index, several times slower to build and to follow on the CPU. The horizontal pass runs
    once per source row; the vertical pass then picks its two rows per output row.
    """
    n, used = rows.shape
    out = table.shape[2]
    k0, k1, cy0, cy1, col0, col1, cx0, cx1 = table.unbind(1)  # 8 x (n, out)
    windows = flat.unfold(0, window, 1)  # (L,) -> (L - window + 1, window): row r = flat[r : r + window]
    lanes = torch.arange(3, device=flat.device)

    def columns(col):  # pixel columns -> byte columns of the 3 channels, the same for every row
        return (col[:, :, None] + lanes).view(n, 1, out * 3).expand(n, used, out * 3)  # (n, out, 3) -> (n, U, out*3)

    def weights(c):  # one int32 weight per output element, as numpy's row pass
        return c.int().repeat_interleave(3, dim=1).view(n, 1, out * 3)  # (n, out*3) -> (n, 1, out*3)

    # Row pass (HResizeLinear) on each source row once. Gather bytes, then widen to int32
    # (sums reach 255 * 2049): a uint8 gather moves a quarter of the memory.
    src = windows.index_select(0, rows.reshape(-1)).view(n, used, window)  # (n*U, window) -> (n, U, window)
    h = torch.gather(src, 2, columns(col0)).int().mul_(weights(cx0))
    h = h.addcmul_(torch.gather(src, 2, columns(col1)).int(), weights(cx1))
    h = h.view(n * used, out * 3)  # (n, U, out*3) -> (n*U, out*3)
    first = torch.arange(n, device=flat.device)[:, None] * used  # (n, 1): each crop's first row of h

    def pick(k):  # (n, out) positions -> (n, out, out*3) copies of those rows of h
        return h.index_select(0, (k + first).reshape(-1)).view(n, out, out * 3)  # (n*out, out*3) -> (n, out, out*3)

    b0, b1 = cy0.int()[:, :, None], cy1.int()[:, :, None]  # (n, out) -> (n, out, 1)
    crops = _vertical_pass_torch(pick(k0), pick(k1), b0, b1)
    return crops.view(n, out, out, 3)  # (n, out, out*3) -> (n, out, out, 3)


def _crops_per_step(count: int, out_size: int, device: torch.device) -> int:
    """All crops in one step on an accelerator (one kernel launch per op). On the CPU a few
    at a time, so that an int32 temporary (crops * out * out*3 * 4 bytes) stays near 1 MB,
    in cache: whole-batch temporaries were measured slower per crop (page faults, misses)."""
    if device.type != "cpu":
        return count
    return max(1, 2**18 // (out_size * out_size * 3))


def _crop_step(images, boxes, factor: float, out_size: int, device: torch.device):
    """crop_resize_torch for the crops of one step: the step's images in one flat buffer
    (a single image is used in place), their taps, one _resample_torch."""
    plans, offset = [], 0
    for image, box in zip(images, boxes):
        plans.append(_crop_plan(image, box, factor, out_size, offset))
        offset += image.shape[0] * image.shape[1] * 3
    window = max(plan.window for plan in plans)
    last = max(int(plan.rows.max()) for plan in plans)  # the highest row window's first byte
    flat = _flat_images(images, device, tail=last + window - offset)
    crops = _resample_torch(flat, *_stack_plans(plans, device), window)
    return crops, [plan.resize_factor for plan in plans], [plan.crop_xyxy for plan in plans]


def crop_resize_torch(images, boxes, factor: float, out_size: int, device="cpu"):
    """crop_resize for N images at once, on device; bit-identical to it.

    images: N uint8 (H, W, 3) RGB numpy arrays or torch tensors (sizes may differ);
    boxes: N (x, y, w, h). Returns (crops uint8 (N, out_size, out_size, 3) on device,
    resize_factors: N floats, crop_xyxy: N tuples), entry i as crop_resize(images[i], boxes[i]).
    """
    images, boxes, device = [data.check_image(image) for image in images], list(boxes), torch.device(device)
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    if not images:
        return torch.empty((0, out_size, out_size, 3), dtype=torch.uint8, device=device), [], []
    step = _crops_per_step(len(images), out_size, device)
    steps = [_crop_step(images[k:k + step], boxes[k:k + step], factor, out_size, device)
             for k in range(0, len(images), step)]
    crops = steps[0][0] if len(steps) == 1 else torch.cat([crops for crops, _, _ in steps])
    return crops, [f for _, fs, _ in steps for f in fs], [xyxy for _, _, xyxys in steps for xyxy in xyxys]


def normalize_torch(crops: torch.Tensor) -> torch.Tensor:
    """normalize for a batch: uint8 (N, S, S, 3) -> float32 (N, 3, S, S), the same ops in the
    same order, so the same bits. 255 is a tensor on the crops' device, not a Python number:
    CUDA divides by a CPU scalar as a multiplication by its reciprocal (one bit off at times)."""
    n, height, width, _ = crops.shape
    # (N,S,S,3) -> (N,3,S,S) and uint8 -> float32 in one copy
    t = torch.empty((n, 3, height, width), dtype=torch.float32, device=crops.device).copy_(crops.permute(0, 3, 1, 2))
    scale = torch.tensor(255.0, device=crops.device)
    mean = torch.tensor(data.IMAGENET_MEAN, device=crops.device).view(1, 3, 1, 1)  # (3,) -> (1,3,1,1)
    std = torch.tensor(data.IMAGENET_STD, device=crops.device).view(1, 3, 1, 1)
    return t.div_(scale).sub_(mean).div_(std)


# ----------------------------------------------------------------------------- background decoding


_END = object()  # queued after the last image


def _read_ahead(path, decode: bool):
    """The worker's part for one frame: the decoded image, or only the file's bytes as
    (path, bytes), or (path, None) where reading failed (read_image then reports it)."""
    if decode:
        return data.read_image(path)
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except OSError:
        return path, None


def _decode_into(paths, out: queue.Queue, stop: threading.Event, decode: bool) -> None:
    """Producer: queue _read_ahead(path) for each path in order, then _END. A decoding
    failure is queued in its place, as the exception, and ends the work (a file that
    cannot be read is queued as (path, None), for read_image to report)."""
    def put(item) -> bool:  # a timeout, so that a consumer that stopped frees the thread
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    try:
        for path in paths:
            if not put(_read_ahead(path, decode)):
                return
        put(_END)
    except Exception as err:  # noqa: BLE001 - handed to the consumer, raised there
        put(err)


def decode_ahead(device) -> bool:
    """Whether prefetch_images should decode in its thread, not only read files: beside an
    accelerator, or when the forward leaves a core free (torch.get_num_threads(), which the
    runtimes use too, below the usable cores). Where the forward uses every core, decoding
    in turn with it was measured faster (SPEED.md)."""
    return torch.device(device).type != "cpu" or torch.get_num_threads() < usable_cores()


def prefetch_images(paths, depth: int = 4, decode: bool = True):
    """Yield data.read_image(path) for each path, in order. A background thread reads the
    files up to depth ahead and, with `decode`, decodes them there (see decode_ahead); else
    each is decoded here when asked for. A file that fails raises here when reached.
    Closing the generator early (close(), or dropping it) stops and joins the thread."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    out, stop = queue.Queue(maxsize=depth), threading.Event()
    worker = threading.Thread(target=_decode_into, args=(paths, out, stop, decode), daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield data.read_image(*item) if isinstance(item, tuple) else item
    finally:
        stop.set()  # the worker's next put gives up within 0.05 s
        worker.join()


# ----------------------------------------------------------------------------- ONNX export and runtimes
ONNX_OPSET = 17  # runs in every ONNX Runtime and OpenVINO release we target
OPSETS = range(10, 23)  # the ones that export (tests); int8's per-channel DequantizeLinear needs 13
EXTRAS = "pip install -r requirements-deploy.txt"


def require(module, package=None):
    """Import an optional deployment package, or fail with a message naming it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = package or module
        raise ImportError(f"this needs the optional package {package!r}: pip install {package} "
                          f"(or {EXTRAS})") from e


def attend_graph(q, k, v, bias, scale):
    """levit.attend as the op sequence ONNX runtimes look for: MatMul with k transposed,
    Mul, Add, Softmax, MatMul, all on the 4-D (B, heads, N, D) tensors. The same formula
    (Eq. 1); levit.attend's baddbmm on (B*heads, N, D) is faster in PyTorch, but exported
    it becomes reshapes and explicit transposes of k that ONNX Runtime and OpenVINO run as
    separate copies (SPEED.md)."""
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, heads, Nq, Nk)
    if bias is not None:
        attn = attn + bias  # (heads, Nq, Nk) broadcast over B
    return attn.softmax(dim=-1) @ v  # (B, heads, Nq, Dv)


def head_part(linear, heads, widths, i):
    """The Linear computing part i alone of a per-head projection whose outputs are laid out
    heads x [part 0 | part 1 | ...] of `widths` (levit's qkv: q D, k D, v 2D per head):
    its rows of every head, in head order. A copy, row-major."""
    per, start = sum(widths), sum(widths[:i])
    rows = torch.cat([torch.arange(h * per + start, h * per + start + widths[i]) for h in range(heads)])
    part = nn.Linear(linear.in_features, len(rows))
    with torch.no_grad():
        part.weight.copy_(linear.weight[rows])
        part.bias.copy_(linear.bias[rows])
    return part


class GraphAttention(nn.Module):
    """A FrozenAttention or FrozenShrinkAttention for the ONNX graph: q, k and v each from
    its own Linear (head_part of qkv / kv; a shrink attention's queries as before) instead
    of one Linear whose output is split per head, and attend_graph. The same function;
    exported, the per-head split and its copies are gone (SPEED.md)."""

    def __init__(self, attn):
        super().__init__()
        self.heads, self.key_dim, self.scale = attn.heads, attn.key_dim, attn.scale
        shrink = isinstance(attn, levit.ShrinkAttention)
        widths = [attn.key_dim] * (1 if shrink else 2) + [attn.v_dim]
        parts = [head_part(attn.kv if shrink else attn.qkv, attn.heads, widths, i) for i in range(len(widths))]
        self.q = attn.q if shrink else parts.pop(0)  # shrink: Subsample + Linear, shared
        self.k, self.v = parts
        self.proj = attn.proj
        self.register_buffer("frozen_bias", attn.frozen_bias)

    def forward(self, x):
        B, N, _ = x.shape
        q = self.q(x)  # (B, N', heads*D), N' = N or the subsampled count
        Nq = q.shape[1]
        q = q.view(B, Nq, self.heads, self.key_dim).transpose(1, 2)  # (B, heads, N', D)
        k, v = (p(x).view(B, N, self.heads, -1).transpose(1, 2) for p in (self.k, self.v))  # (B, heads, N, *)
        x = attend_graph(q, k, v, self.frozen_bias, self.scale)  # (B, heads, N', Dv)
        return self.proj(x.transpose(1, 2).reshape(B, Nq, -1))  # (B, N', heads*Dv)


def graph_attentions(module):
    """Replace every FrozenBias attention in `module` (in place) by its GraphAttention."""
    for name, child in module.named_children():
        if isinstance(child, FrozenBias):
            setattr(module, name, GraphAttention(child))
        else:
            graph_attentions(child)
    return module


class BoxesAndScore(nn.Module):
    """The (pred_boxes, score) tuple of a model's output dict: ONNX graphs return tuples."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, template, search):
        out = self.model(template, search)
        return out["pred_boxes"], out["score"]


def export_onnx(model, path, opset=ONNX_OPSET):
    """Write a copy of `model` as one ONNX graph: template (B, 3, 128, 128), search
    (B, 3, 256, 256) -> pred_boxes (B, 4), score (B,), B dynamic. A HiT or FastHiT goes as
    the FastHiT rewrite with graph_attentions; any other module returning the same dict
    (bench.Released) as it is. TorchScript-based exporter (`dynamo=False`: the dynamo one
    fixed the batch size in the reshapes); exporter, opset and HiT config go into the
    metadata; onnx.checker must pass. Returns `path`."""
    onnx = require("onnx")
    refuse_packed(model, "export the HiT itself")
    # A copy: the exporter folds BNs into convs by writing the shared weight tensors.
    model = copy.deepcopy(model).cpu().eval()
    if isinstance(model, hit.HiT):
        model = FastHiT(model)
    if isinstance(model, FastHiT):
        graph_attentions(model)
    cfg = model.cfg
    inputs = example_inputs(cfg, 1)
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic (fixed sizes: intended)
        torch.onnx.export(BoxesAndScore(model), inputs, str(path), dynamo=False, opset_version=opset,
                          input_names=["template", "search"], output_names=["pred_boxes", "score"],
                          dynamic_axes={"template": batch, "search": batch, "pred_boxes": batch,
                                        "score": batch})
    graph = onnx.load(str(path))
    meta = {"exporter": f"torch.onnx.export (TorchScript-based, dynamo=False), torch {torch.__version__}",
            "opset": str(opset), "hit_config": json.dumps(dataclasses.asdict(cfg)),
            "model": type(model).__name__}
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


class OnnxRuntime:
    """An exported HiT in ONNX Runtime (mode `onnxruntime`): the CPU execution provider,
    or CUDA's on a CUDA device; float32, all graph optimisations, torch's thread count.
    Takes and returns torch tensors like the other modes."""

    def __init__(self, onnx_path, cfg, device="cpu"):
        ort = require("onnxruntime")
        self.cfg, self.device = cfg, torch.device(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads sleep instead of spinning: spinning ones take the cores from
        # whatever runs between two calls (the tracker's crops, bench's other modes).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider = "CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"
        # The CUDA provider uses TF32 by default (like cuDNN under PyTorch): not float32.
        settings = {"use_tf32": "0"} if provider == "CUDAExecutionProvider" else {}
        self.session = ort.InferenceSession(str(onnx_path), options, providers=[(provider, settings)])
        self.path = f"ONNX Runtime {ort.__version__}, {provider}, float32"

    def __call__(self, template, search):
        boxes, score = self.session.run(None, {"template": template.detach().float().cpu().numpy(),
                                               "search": search.detach().float().cpu().numpy()})
        return {"pred_boxes": torch.from_numpy(boxes).to(self.device),
                "score": torch.from_numpy(score).to(self.device)}


class _StackT(ctypes.Structure):  # POSIX stack_t, as sigaltstack(2) reads and writes it
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def same_signal_stack():
    """Put the calling thread's alternate signal stack back after the block: OpenVINO's
    compile_model leaves its own (about 20 KB) on the calling thread, and a signal
    delivered there later (Ctrl-C, a kill) crashed the process with SIGSEGV (seen in
    bench.py and the tests). Linux only (elsewhere a no-op)."""
    libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    old = _StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(old)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(old), None)


class OpenVINO:
    """An exported HiT in OpenVINO on the CPU, reshaped to a fixed batch. precision None
    keeps OpenVINO's own choice (bfloat16 on CPUs with native bf16: `fast`'s int8 graph),
    "f32" forces float32 (mode `openvino_fp32`); `path` says which ran."""

    def __init__(self, onnx_path, cfg, precision=None, batch=1):
        ov = require("openvino")
        self.cfg, core = cfg, ov.Core()
        graph = core.read_model(str(onnx_path))
        graph.reshape({"template": [batch, 3, cfg.template_size, cfg.template_size],
                       "search": [batch, 3, cfg.search_size, cfg.search_size]})
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        with same_signal_stack():
            self.compiled = core.compile_model(graph, "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # f32, bf16
        self.request = self.compiled.create_infer_request()
        self.path = f"OpenVINO {ov.__version__.split('-')[0]}, CPU, {self.precision}"

    def __call__(self, template, search):
        inputs = {"template": np.ascontiguousarray(template.detach().float().cpu().numpy()),
                  "search": np.ascontiguousarray(search.detach().float().cpu().numpy())}
        # Shared, not copied, both ways: the call is synchronous and the outputs are copied
        # below before the next call can overwrite them (SPEED.md: a few % of `fast`).
        out = self.request.infer(inputs, share_inputs=True, share_outputs=True)
        boxes, score = (out[self.compiled.output(name)] for name in ("pred_boxes", "score"))
        return {"pred_boxes": torch.from_numpy(boxes.copy()), "score": torch.from_numpy(score.copy())}


# ----------------------------------------------------------------------------- int8 graphs
# Static int8: every GEMM and convolution with constant weights gets int8 weights (a scale
# per output channel) and int8 inputs (a scale per tensor, from calibration crops), as ONNX
# QuantizeLinear / DequantizeLinear pairs that OpenVINO runs as int8 kernels. The attention's
# products (q k^T, A v) stay float: quantised, they were slower. Symmetric scales: OpenVINO
# 2026.4 rejects asymmetric (uint8) activations' zero points after a Concat.
CALIBRATION_PAIRS = 16


def _pair(cfg, first, first_box, second, prev_box):
    """One calibration input pair as the tracker cuts it: the template around the first
    frame's box at factor 2, a later frame's search region around the box before it at 4."""
    template, _, _ = data.crop_resize(first, first_box, 2.0, cfg.template_size)  # track.TEMPLATE_FACTOR
    search, _, _ = data.crop_resize(second, prev_box, 4.0, cfg.search_size)  # track.SEARCH_FACTOR
    return {"template": data.normalize(template)[None].numpy(),  # (1, 3, 128, 128)
            "search": data.normalize(search)[None].numpy()}  # (1, 3, 256, 256)


def _sequence_pair(cfg, seq, k):
    """Calibration pair from frames 0 and k of `seq` (k clamped to its last frame)."""
    if len(seq.frames) < 2:
        raise ValueError(f"calibration sequence {seq.name}: needs at least 2 frames")
    k = min(k, len(seq.frames) - 1)
    if seq.gt is None or len(seq.gt) < k or not np.isfinite(seq.gt[[0, k - 1]]).all():
        raise ValueError(f"calibration sequence {seq.name}: needs ground-truth boxes for frames 1 "
                         f"and {k} (its groundtruth.txt)")
    first, second = data.read_image(seq.frames[0]), data.read_image(seq.frames[k])
    return _pair(cfg, first, seq.gt[0], second, seq.gt[k - 1])


def calibration_inputs(cfg, count=CALIBRATION_PAIRS, seed=0, sequences=None):
    """`count` (template, search) input pairs, each (1, 3, S, S) float32 numpy: by default
    frames 0 and 1 of procedural sequences (synth.py: no dataset needed to prepare), else
    `sequences` (with ground truth; better for weights trained on real video) in turn, pair
    i from frames 0 and 1 + i // len(sequences) of sequence i % len(sequences)."""
    if sequences:
        return [_sequence_pair(cfg, sequences[i % len(sequences)], 1 + i // len(sequences))
                for i in range(count)]
    import synth  # the procedural generator: only needed to calibrate
    pairs = []
    for i in range(count):
        frames = synth.render_sequence(np.random.default_rng([seed, i]), 2, 320, 240)
        (first, box, _), (second, _, _) = frames  # two (frame, box, absent)
        pairs.append(_pair(cfg, first, box, second, box))
    return pairs


def weighted_nodes(graph):
    """Names of the MatMul / Gemm / Conv nodes of an onnx graph whose weights are constant
    matrices or kernels (initializers of 2 or more dimensions): the Linears and
    convolutions. FoldedGate's product with proj1's bias (a vector) and the soft-argmax's
    products with its coordinate vectors (Constant nodes) stay float."""
    matrices = {t.name for t in graph.initializer if len(t.dims) >= 2}
    return [n.name for n in graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 and n.input[1] in matrices]


def quantize_onnx(src, dst, cfg, count=CALIBRATION_PAIRS, sequences=None):
    """Write `src` (an export_onnx graph) to `dst` with static int8 GEMMs and convolutions
    (see above), scales from the min/max over `count` calibration pairs (calibration_inputs:
    procedural, or cut from `sequences`), calibrated in ONNX Runtime (its quantisation
    tool). Returns `dst`."""
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization", "onnxruntime")
    pairs = calibration_inputs(cfg, count, sequences=sequences)  # bad sequences fail here, first

    class Pairs(quantization.CalibrationDataReader):
        def __init__(self):
            self.pairs = iter(pairs)

        def get_next(self):
            return next(self.pairs, None)

    source = onnx.load(str(src))  # read once: its nodes to quantise, its metadata to keep
    nodes = weighted_nodes(source.graph)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # the tool's advice to pre-process first (shape inference: not needed)
        quantization.quantize_static(
            str(src), str(dst), Pairs(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
            nodes_to_quantize=nodes, calibrate_method=quantization.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    graph = onnx.load(str(dst))  # the export's metadata again, and how it was quantised
    del graph.metadata_props[:]
    for prop in source.metadata_props:
        graph.metadata_props.add(key=prop.key, value=prop.value)
    origin = f"{len(sequences)} given sequences" if sequences else "procedural sequences"
    graph.metadata_props.add(key="int8", value=f"QDQ: {len(nodes)} Linears and convolutions, int8 weights per "
                             f"output channel, int8 inputs per tensor, min/max over {count} crop pairs "
                             f"from {origin} (fast.quantize_onnx)")
    onnx.checker.check_model(graph)
    onnx.save(graph, str(dst))
    return dst


def onnx_runtime_mode(model, mode, device, batch=1, int8=False, graph=None):
    """`model` (a HiT, FastHiT or bench.Released) exported, or its export `graph` if given,
    loaded in the runtime `mode` (onnxruntime; openvino_fp32, or openvino: its own
    precision); with `int8` (OpenVINO only) quantised first (quantize_onnx)."""
    with tempfile.TemporaryDirectory(prefix="hit_onnx_") as tmp:
        path = graph or export_onnx(model, os.path.join(tmp, "hit.onnx"))
        if int8 and mode != "onnxruntime":
            path = quantize_onnx(path, os.path.join(tmp, "hit_int8.onnx"), model.cfg)
        if mode == "onnxruntime":
            return OnnxRuntime(path, model.cfg, device)
        fn = OpenVINO(path, model.cfg, "f32" if mode == "openvino_fp32" else None, batch)
        if int8:
            fn.path += " (int8 GEMMs and convolutions, calibrated on procedural crops)"
        return fn


# ----------------------------------------------------------------------------- modes
# Each mode is the paper's (eager), the default (fused), or the fastest on a machine
# SPEED.md names; the modes that were none of these went in issue 34 (SPEED.md).
EXACT_MODES = ("eager", "fused", "cuda_graph", "onnxruntime", "openvino_fp32")  # within 1e-4 of eager
REDUCED_MODES = ("fast",)  # approximate: report its deviation
RUNTIMES = {"onnxruntime": "onnxruntime", "openvino_fp32": "openvino"}
MODES = EXACT_MODES + REDUCED_MODES
# Prepared for one batch size (a CUDA graph; OpenVINO reshaped at load): track.run_batched pads.
FIXED_BATCH_MODES = ("cuda_graph", "fast", "openvino_fp32")


def unavailable(mode, device):
    """Why `mode` cannot run on `device` (a sentence), or None when it can: the one check
    behind prepare's errors and bench.py's skipped modes."""
    device = torch.device(device)
    if mode not in MODES:
        return f"unknown mode {mode!r}; expected one of {MODES}"
    if mode == "cuda_graph" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if mode == "fast" and device.type != "cpu":
        return "fast runs on the CPU only (OpenVINO, fbgemm/oneDNN int8 kernels); on a GPU use cuda_graph"
    return runtime_unavailable(RUNTIMES[mode], mode, device) if mode in RUNTIMES else None


def runtime_unavailable(package, mode, device):
    """Why `mode`, run by the runtime `package` (onnxruntime, openvino), cannot run on `device`."""
    for missing in missing_packages(["onnx", package]):  # onnx: every runtime mode exports first
        return f"{mode} needs the optional package {missing!r}: pip install {missing} (or {EXTRAS})"
    if package == "openvino" and device.type != "cpu":
        return f"{mode} runs on the CPU here"
    if package == "onnxruntime" and device.type not in ("cpu", "cuda"):
        return f"{mode} runs on the CPU or a CUDA GPU"
    if package == "onnxruntime" and device.type == "cuda":
        import onnxruntime
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)"
    return None


def prepare(model, mode="fused", device=None, batch=1):
    """A HiT ready for inference in `mode` (see MODES) on `device`: a callable
    f(template, search) -> {"pred_boxes", "score"} on float32 inputs, with a `cfg`
    attribute. Every mode but `eager` rewrites the model in place (FastHiT) first. On CUDA
    PyTorch lets cuDNN convolutions use TF32 by default: run an exact mode inside no_tf32()
    to keep its 1e-4 (track.Tracker and bench.py do; cuda_graph captures under it)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    reason = unavailable(mode, device)
    if reason:
        raise ValueError(f"mode {mode}: {reason}")
    model = model.to(device).eval()
    if mode == "eager":
        return model
    fast = model if isinstance(model, FastHiT) else FastHiT(model)
    if mode == "fast":
        return fast_cpu(fast, batch)
    if mode == "cuda_graph":
        return CudaGraph(fast, batch)
    if mode in RUNTIMES:
        return onnx_runtime_mode(fast, mode, device, batch)
    if device.type == "cpu":
        pack_linears(fast)
        key = (fast.cfg, batch, torch.get_num_threads())
        if key in _GEMM_CHOICE:
            set_gemm(fast, _GEMM_CHOICE[key])
        else:
            _GEMM_CHOICE[key] = pick_gemm(fast, *example_inputs(fast.cfg, batch, device))
    return fast


def path_of(fn, mode):
    """What runs for `mode`: the mode's name, or for `fast` (and the runtimes) which path."""
    return getattr(fn, "path", mode)


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Deploy HiT: export it to ONNX (see also bench.py "
                                            "for speed and track.py --mode for tracking).")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write an ONNX graph (template, search -> pred_boxes, score; "
                                      "dynamic batch; BN folded and this project's rewrites in it)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a released .pth.tar or one of train.py's checkpoints")
    src.add_argument("--variant", choices=sorted(hit.VARIANTS), help="random weights instead")
    e.add_argument("--out", required=True, help="the .onnx file to write")
    e.add_argument("--opset", type=int, default=ONNX_OPSET,
                   help=f"ONNX opset, {OPSETS.start}-{OPSETS.stop - 1} (13 or more with --int8; default {ONNX_OPSET})")
    e.add_argument("--int8", action="store_true",
                   help="quantise its Linears and convolutions to static int8 (QDQ, calibrated on "
                        "procedural crops): the graph mode fast runs in OpenVINO; needs onnxruntime")
    e.add_argument("--calibration", metavar="FOLDER",
                   help="with --int8: calibrate on these sequences instead (a folder of frames with "
                        "groundtruth.txt, or a folder of such folders), e.g. for weights trained on real video")
    e.add_argument("--calibration-pairs", type=int, default=CALIBRATION_PAIRS, metavar="N",
                   help=f"with --int8: template/search pairs to calibrate on (default {CALIBRATION_PAIRS})")
    args = p.parse_args(argv)
    if (args.calibration or args.calibration_pairs != CALIBRATION_PAIRS) and not args.int8:
        p.error("--calibration and --calibration-pairs go with --int8")
    if args.calibration_pairs < 1:
        p.error(f"--calibration-pairs must be at least 1, got {args.calibration_pairs}")
    if args.opset not in OPSETS or (args.int8 and args.opset < 13):
        p.error(f"--opset {args.opset}: expected {13 if args.int8 else OPSETS.start}-{OPSETS.stop - 1}"
                + (" with --int8" if args.int8 else ""))
    return args


def export_command(args):
    """fast.py export: the checkpoint's (or a random) model to args.out, float or int8."""
    model = hit.load_checkpoint(args.checkpoint) if args.checkpoint else hit.build_hit(args.variant).eval()
    sequences = data.read_folder(args.calibration) if args.calibration else None
    with tempfile.TemporaryDirectory(prefix="hit_onnx_") as tmp:
        path = export_onnx(model, os.path.join(tmp, "hit.onnx"), args.opset)
        if args.int8:
            path = quantize_onnx(path, os.path.join(tmp, "hit_int8.onnx"), model.cfg, args.calibration_pairs, sequences)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, args.out)  # only a graph that passed onnx.checker reaches --out
    return model


def main(argv=None):
    args = parse_args(argv)
    exit_on_sigterm()
    try:
        model = export_command(args)
    except (ValueError, OSError, ImportError) as err:
        sys.exit(f"fast.py export: error: {err}")
    print(f"wrote {args.out}: HiT-{model.cfg.variant}, opset {args.opset}, dynamic batch"
          + (", int8 Linears and convolutions" if args.int8 else ""))


if __name__ == "__main__":
    main()
