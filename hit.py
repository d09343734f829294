"""HiT: the full tracker network, its variants, and checkpoint loading.

Paper Sec. 3 and Fig. 2, Table 1 (variants). Data flow for a template Z (128x128) and a
search crop X (256x256):

    backbone  LeViT over tokens [X; Z] (levit.py), dual-image attention bias
              (attention_bias.py); stage outputs S_max 16x16, S_mid 8x8, S_min 4x4 (search
              part) and the global vector G = mean of all last-stage tokens
    bridge    O = fused 16x16 map (bridge.py, Eq. 3), projected to 256 channels; G too
    head      corner head of STARK: e' = e * (e . g) re-weights every token by its dot
              product with G (no softmax), two conv towers give top-left and bottom-right
              score maps, a soft-argmax turns each into a corner.

Parameter names equal the released ones (`backbone.body.*`, `bottleneck.*`, `box_head.*`)
so a released `net` state dict loads with strict=True. `load_checkpoint` reads released
training checkpoints without executing anything from the file.
"""
import contextlib
import fast
import dataclasses
import io
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

import levit
from bridge import Bridge

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class HiTConfig:
    variant: str  # "base", "small", "tiny"
    levit: str  # LeViT spec name of the backbone (Table 1)
    pos_layout: str = "diagonal"  # Table 6; attention_bias.LAYOUTS
    bridge_stages: tuple = ("max", "mid", "min")  # Table 5
    template_size: int = 128  # crop factor 2
    search_size: int = 256  # crop factor 4
    hidden_dim: int = 256  # width of the bridge projections and the head input
    stride: int = 16  # patch-embedding stride


VARIANTS = {
    "base": HiTConfig("base", "LeViT_384"),
    "small": HiTConfig("small", "LeViT_128"),
    "tiny": HiTConfig("tiny", "LeViT_128S"),
}


# ----------------------------------------------------------------------------- head
def autocast_on(device_type):
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: one query per device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def conv_bn_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CornerHead(nn.Module):
    """STARK's corner head: two conv towers (256->256->128->64->32, then 1x1 -> 1) for the
    top-left and bottom-right corners, each followed by a soft-argmax over the map."""

    def __init__(self, c_in=256, feat_size=16, stride=16):
        super().__init__()
        chans = [c_in, c_in, c_in // 2, c_in // 4, c_in // 8]
        for corner in ("tl", "br"):
            for i in range(4):
                setattr(self, f"conv{i + 1}_{corner}", conv_bn_relu(chans[i], chans[i + 1]))
            setattr(self, f"conv5_{corner}", nn.Conv2d(chans[4], 1, 1))
        self.towers = None  # set by fuse(): both towers merged into one network
        self.feat_size, self.img_size = feat_size, feat_size * stride
        # Released quirk: corner coordinates are index * stride (0, 16, ..., 240), not cell centres
        coord = torch.arange(feat_size, dtype=torch.float32) * stride
        self.register_buffer("coord_x", coord.repeat(feat_size), persistent=False)  # (HW,) column
        self.register_buffer("coord_y", coord.repeat_interleave(feat_size), persistent=False)  # (HW,) row

    def score_maps(self, x):
        """(B, C, H, W) -> (B, 2, H, W): top-left and bottom-right corner logits."""
        if self.towers is not None:
            return self.towers(x)
        maps = []
        for corner in ("tl", "br"):
            y = x
            for i in range(1, 6):
                y = getattr(self, f"conv{i}_{corner}")(y)
            maps.append(y)
        return torch.cat(maps, dim=1)

    @torch.no_grad()
    def fuse(self):
        """Fold every BN and merge the two towers (inference only); returns self.

        Both first convs read the same input, so they become one conv with twice the
        outputs; the later layers become groups=2 convs (each group one corner). Same
        arithmetic per output, half the kernel launches, larger GEMMs."""
        if self.towers is not None:
            return self
        layers = []
        for i in range(1, 6):
            parts = []
            for corner in ("tl", "br"):
                m = getattr(self, f"conv{i}_{corner}")
                conv = m[0] if i < 5 else m
                parts.append(levit.fold_bn(conv.weight, conv.bias, m[1]) if i < 5 else (conv.weight, conv.bias))
                delattr(self, f"conv{i}_{corner}")
            w = torch.cat([p[0] for p in parts])  # (2*C_out, C_in/groups, k, k)
            groups = 1 if i == 1 else 2
            merged = nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2], 1, w.shape[2] // 2,
                               groups=groups).to(w)
            merged.weight.copy_(w)
            merged.bias.copy_(torch.cat([p[1] for p in parts]))
            layers += [merged, nn.ReLU(inplace=True)] if i < 5 else [merged]
        self.towers = nn.Sequential(*layers)
        return self

    def forward(self, x):
        return self.from_maps(self.score_maps(x))

    def from_maps(self, logits):
        """Corner logits (B, 2, H, W) -> box (B, 4) xyxy in [0, 1] of the crop, score (B,)."""
        if autocast_on(logits.device.type):  # mixed-precision training: a bf16 soft-argmax
            with torch.autocast(logits.device.type, enabled=False):  # would round corners to ~1 px
                return self.from_maps(logits.float())
        prob = logits.flatten(2).softmax(dim=-1)  # (B, 2, HW)
        cx, cy = prob @ self.coord_x, prob @ self.coord_y  # (B, 2) soft-argmax per corner
        box = torch.stack([cx[:, 0], cy[:, 0], cx[:, 1], cy[:, 1]], dim=1) / self.img_size  # (B, 4) xyxy
        # Confidence: geometric mean of the two corner maps' peak probabilities. A sharp,
        # unimodal pair of maps (a clear target) scores high; flat or multi-peaked maps low.
        # A weak signal in practice: TRAINING.md, "The score is not a confidence".
        score = prob.amax(dim=-1).prod(dim=-1).sqrt()  # (B,)
        return box, score


def xyxy_to_cxcywh(b):
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


# ----------------------------------------------------------------------------- network
class Backbone(nn.Module):
    """Holds the LeViT as `body` (the released attribute name)."""

    def __init__(self, cfg):
        super().__init__()
        s = cfg.stride
        grids = [(cfg.search_size // s,) * 2, (cfg.template_size // s,) * 2]  # search first
        self.body = levit.LeViT(levit.SPECS[cfg.levit], grids, cfg.pos_layout)

    def forward(self, template, search):
        return self.body.forward_stages([search, template])


class HiT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        spec = levit.SPECS[cfg.levit]
        self.backbone = Backbone(cfg)
        self.bottleneck = Bridge(spec.embed_dim, cfg.bridge_stages, cfg.hidden_dim)
        self.box_head = CornerHead(cfg.hidden_dim, cfg.search_size // cfg.stride, cfg.stride)
        self.fused = False  # backbone BNs folded
        self.head_fused = False  # bridge/head BNs folded, towers merged (fuse(head=True))
        self.head_folded = False  # proj1 folded into the head (fuse(head=True), Small/Tiny)

    def forward_features(self, template, search):
        """Every intermediate the fixtures check, plus the outputs. `bridge_tokens` is None
        once fuse(head=True) has folded proj1 into the head (they are never formed)."""
        s1, s2, s3 = self.backbone(template, search)  # (B, N_i, C_i), tokens [search; template]
        n = (self.cfg.search_size // self.cfg.stride) ** 2  # search tokens at stage 1 (256)
        g = s3.mean(dim=1)  # (B, C3): G, mean over all last-stage tokens (search and template)
        o = self.bottleneck(s1[:, :n], s2[:, :n // 4], s3[:, :n // 16])  # (B, 256, C1)
        g_p = self.bottleneck.proj2(g)  # (B, D)
        side = self.cfg.search_size // self.cfg.stride
        if self.head_folded:
            x, tokens = self.folded_gate(o, g_p), None  # (B, 256, C1 + 1)
        else:
            e = self.bottleneck.proj1(o)  # (B, 256, D)
            att = torch.bmm(e, g_p.unsqueeze(2))  # (B, 256, 1): e . g per token, no softmax
            x = e * att  # (B, 256, D)
            tokens = torch.cat([g_p.unsqueeze(1), e], dim=1).transpose(0, 1)  # (257, B, D)
        fmap = x.transpose(1, 2).reshape(x.shape[0], -1, side, side)  # (B, channels, 16, 16)
        maps = self.box_head.score_maps(fmap)  # (B, 2, 16, 16) corner logits
        box, score = self.box_head.from_maps(maps)
        return {"stage_features": [s1, s2, torch.cat([g.unsqueeze(1), s3], dim=1)],
                "bridge_tokens": tokens, "score_maps": maps,
                "pred_boxes": xyxy_to_cxcywh(box), "score": score}

    def forward(self, template, search, maps=False):
        """template (B,3,128,128), search (B,3,256,256), ImageNet-normalised.
        Returns pred_boxes (B, 4) = (cx, cy, w, h) normalised to the search crop, and
        score (B,) in (0, 1] (see CornerHead.forward); with maps=True also the corner
        logits "score_maps" (B, 2, 16, 16) (train.py's optional corner loss)."""
        out = self.forward_features(template, search)
        keys = ("pred_boxes", "score", "score_maps") if maps else ("pred_boxes", "score")
        return {k: out[k] for k in keys}

    def folded_gate(self, o, g_p):
        """The head's input without forming e = proj1(O) (see _fold_proj1):
        a = e . g = O (W1^T g) + b1 . g per token, then [a * O, a]."""
        w1, b1 = self.bottleneck.proj1.weight, self.bottleneck.proj1.bias  # (D, C1), (D,)
        u = g_p @ w1  # (B, C1)
        a = torch.baddbmm((g_p @ b1)[:, None, None], o, u.unsqueeze(2))  # (B, 256, 1)
        return torch.cat([o * a, a], dim=2)  # (B, 256, C1 + 1)

    @torch.no_grad()
    def _fold_proj1(self):
        """Fold proj1 (Linear C1 -> D) into the head's first conv, exactly in real arithmetic.

        The head computes conv1(a * (O W1^T + b1)) with a per-token scalar a. A conv is
        linear in its input, so this equals conv1'([a * O, a]) with conv1' = conv1 . W1 on
        the first C1 input channels and conv1 . b1 on one extra channel. For Small and Tiny
        (C1 = 128 < D = 256) this halves the head's largest convolution and removes proj1;
        for Base (C1 = 384) it would add work, so Base keeps the plain path.
        """
        proj, first = self.bottleneck.proj1, self.box_head.towers[0]
        if proj.in_features + 1 >= proj.out_features:
            return
        w = first.weight  # (O, D, 3, 3)
        w_o = torch.einsum("odhw,dc->ochw", w, proj.weight)  # (O, C1, 3, 3)
        w_a = torch.einsum("odhw,d->ohw", w, proj.bias).unsqueeze(1)  # (O, 1, 3, 3)
        conv = nn.Conv2d(proj.in_features + 1, w.shape[0], 3, 1, 1).to(w)
        conv.weight.copy_(torch.cat([w_o, w_a], dim=1))
        conv.bias.copy_(first.bias)
        self.box_head.towers[0] = conv
        self.head_folded = True

    def fuse(self, head=False):
        """Fold BatchNorm into the preceding layers, in place; returns the model.

        head=False folds the backbone's BNs, as the released tracker does (the "BN fused"
        parameter counts of Table 1). head=True prepares the whole network for fast
        inference: it also folds the Bridge Module's and the corner head's BNs, merges the
        two corner towers, folds proj1 into the head (Small, Tiny) and runs the patch
        embedding channels-last: the same function, computed faster; outputs agree within
        float rounding. Inference only.
        """
        self.eval()
        levit.fuse_bn(self.backbone)
        if head and not self.head_fused:
            self.bottleneck.fuse()
            self.box_head.fuse()
            self._fold_proj1()
            # Channels-last patch-embedding weights make the convs run (and return) NHWC:
            # faster for these few-channel convs, and NHWC is already token-major.
            self.backbone.body.patch_embed.to(memory_format=torch.channels_last)
            for m in self.backbone.modules():
                if isinstance(m, levit.BiasTable):
                    m.freeze()
            self.head_fused = True
        self.fused = True
        return self


def build_hit(variant, pos_layout="diagonal", bridge_stages=("max", "mid", "min")):
    if variant not in VARIANTS:
        raise ValueError(f"unknown HiT variant {variant!r}; expected one of {sorted(VARIANTS)}")
    cfg = dataclasses.replace(VARIANTS[variant], pos_layout=pos_layout,
                              bridge_stages=tuple(bridge_stages))
    return HiT(cfg)


def config_from_dict(d):
    d = dict(d)
    d["bridge_stages"] = tuple(d.get("bridge_stages", ("max", "mid", "min")))
    return HiTConfig(**d)


# ----------------------------------------------------------------------------- safe loading
STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                  "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                  "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8,
                  "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
                  "UntypedStorage": torch.uint8}


class _Refused(type):
    """Metaclass of placeholders: building one through a call (pickle REDUCE) is refused,
    so `os.system`, `eval` or any unknown callable in a file never runs."""

    def __call__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(
            f"refusing to call {cls.__module__}.{cls.__qualname__} from a checkpoint")


def _placeholder(module, name):
    """An inert stand-in for a class that is not allow-listed: it can be instantiated the
    way plain objects are pickled (NEWOBJ + BUILD) and keeps its state as a dict."""
    def setstate(self, state):
        self.__dict__["_state"] = state
    def new(cls, *args, **kwargs):  # NEWOBJ passes constructor args: keep none, run none
        return object.__new__(cls)
    return _Refused(name, (), {"__module__": module, "__qualname__": name,
                               "__new__": new, "__setstate__": setstate})


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data, requires_grad, hooks, *extra):
    return nn.Parameter(data, requires_grad=requires_grad)


class SafeUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers only (see `load_checkpoint`)."""
    ALLOWED = {("collections", "OrderedDict"): OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def __init__(self, file, read_record):
        super().__init__(file)
        self.read_record = read_record

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        return _placeholder(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        data = bytearray(self.read_record(f"data/{key}"))
        flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return flat.view(dtype) if dtype != torch.uint8 else flat


def safe_load(path):
    """Read a torch.save zip file without importing or running anything from it.

    Only tensors, parameters, OrderedDict and pickle's own plain types are rebuilt.
    Other classes become inert placeholders (their state kept as a dict); any attempt to
    call a non-allow-listed object (the way malicious pickles run code) raises.
    """
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable PyTorch zip checkpoint (truncated or "
                         f"corrupt, or the legacy pre-1.6 format): {e}") from e
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
    prefix = pkl[0][: -len("data.pkl")]
    try:
        with zf:
            return SafeUnpickler(io.BytesIO(zf.read(pkl[0])),
                                 lambda rec: zf.read(prefix + rec)).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused: {e}") from e
    except Exception as e:  # zip/CRC errors, short records, malformed pickle streams
        raise ValueError(f"{path}: truncated or corrupt checkpoint: {type(e).__name__}: {e}") from e


def _shapes(cfg):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in HiT(cfg).state_dict().items()}


def infer_config(sd, path="checkpoint"):
    """Find the variant whose state-dict keys and shapes equal those of `sd`."""
    have = {k: tuple(v.shape) for k, v in sd.items()}
    for cfg in VARIANTS.values():
        if _shapes(cfg) == have:
            return cfg
    close = min(VARIANTS.values(), key=lambda c: len(set(_shapes(c).items()) ^ set(have.items())))
    diff = sorted(set(_shapes(close).items()) ^ set(have.items()))[:10]
    raise ValueError(f"{path}: state dict matches no HiT variant; nearest {close.variant!r} "
                     f"differs in {diff}")


def load_checkpoint(path, device="cpu", variant=None):
    """A ready eval-mode HiT from a released training checkpoint (`*.pth.tar`, weights
    under `net`, variant inferred from shapes) or one of this project's checkpoints
    (weights under `model`, config under `config`). `variant`, when given, must match."""
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "config" in obj and "model" in obj:
        cfg, sd = config_from_dict(obj["config"]), obj["model"]
    elif "net" in obj:
        sd = obj["net"]
        cfg = infer_config(sd, path)
    else:
        raise ValueError(f"{path}: no 'net' (released) or 'model'+'config' (this project) entry; "
                         f"keys: {sorted(obj)}")
    if variant is not None and cfg.variant != variant:
        raise ValueError(f"{path}: checkpoint holds HiT-{cfg.variant}, not HiT-{variant}")
    model = HiT(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit HiT-{cfg.variant}: {e}") from e
    return model.to(device).eval()


# ----------------------------------------------------------------------------- inference modes
EXACT_MODES = ("eager", "fused", "compile", "cuda_graph")  # outputs within 1e-4 of eager
REDUCED_MODES = ("fp16", "bf16", "int8", "fast")  # faster, approximate: report their deviation
MODES = EXACT_MODES + REDUCED_MODES


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
    oneDNN's int8 convolution with float32 output. The fast mode's corner head: 3.9 ->
    1.7 ms for Tiny's towers (bf16: 2.3), within ~1.5 % of the float output.
    Pre-VNNI x86 CPUs multiply u8 x s8 pairs into saturating int16, so there the input
    uses 7 bits (`levels` 127), as PyTorch's own x86 quantisation does."""

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
    vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & fast.cpu_flags())
    mods, out = list(seq), []
    while mods:
        m = mods.pop(0)
        if isinstance(m, nn.Conv2d):
            post = {nn.ReLU: "relu", nn.Hardswish: "hardswish"}.get(type(mods[0]) if mods else None)
            if post:
                mods.pop(0)
            m = Int8Conv2d(m, post or "none", levels=255 if vnni else 127)
        out.append(m)
    return nn.Sequential(*out)


def example_inputs(cfg, batch=1, device="cpu"):
    """Zero (template, search) of the real shapes: for warm-up and compilation."""
    return (torch.zeros(batch, 3, cfg.template_size, cfg.template_size, device=device),
            torch.zeros(batch, 3, cfg.search_size, cfg.search_size, device=device))


class CastInputs(nn.Module):
    """Run a half/bfloat16 model on float32 inputs and return float32 outputs."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype, self.cfg = model.to(dtype), dtype, model.cfg

    def forward(self, template, search):
        out = self.model(template.to(self.dtype), search.to(self.dtype))
        return {k: v.float() for k, v in out.items()}


@contextlib.contextmanager
def no_tf32():
    """CUDA convolutions and matmuls in true float32 inside the block, flags restored after.
    PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa) by default; on an H100
    that moved HiT-Tiny's boxes by 1.6e-3 from the CPU's, where the exact modes promise
    1e-4. The exact modes run under it on CUDA (CudaGraph's capture, track.Tracker)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class CudaGraph(nn.Module):
    """Capture one forward at a fixed batch size in a CUDA graph and replay it: removes
    the per-kernel launch cost that dominates batch-1 GPU inference of a small model.
    Inputs are copied into static buffers; outputs are the graph's static tensors
    (clone them if you keep them across calls)."""

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


class Compiled(nn.Module):
    """A fused model compiled by torch.compile (Inductor), optionally under autocast.

    Modes `compile` (float32, exact) and, on CPUs with native bfloat16, `fast` (bf16
    autocast, `autotune`). Inductor runs with `freezing`: the weights become constants
    of the graph, folded and pre-packed once in oneDNN's blocked layout, and the
    elementwise ops (Hardswish, residual adds, softmax, the head's gate) are fused into a
    few C++/OpenMP kernels, which removes most of the per-op dispatch cost of a batch-1
    forward. `autotune` also lets Inductor time its own C++ GEMM kernels (AMX/AVX-512
    micro-kernels sized to these few-token GEMMs) against oneDNN's per GEMM and keep the
    faster: on a 2-core Sapphire Rapids HiT-Small in bf16 10.5 -> 8.4 ms (no gain in
    float32, so `compile` does not autotune).

    Freezing ties the graph to the weights of the first call: inference only; build a new
    one after changing weights. The first call compiles: 10-30 s on 2 cores, 1-3 min with
    autotune; Inductor caches it on disk, so later processes take a fraction of that.
    The constructor makes that call, so a missing C++ compiler fails there, not while
    tracking. The Inductor options are set around each call (a new input shape compiles
    again), never globally.
    """

    def __init__(self, model, dtype=None, batch=1, autotune=False):
        super().__init__()
        self.model, self.cfg, self.dtype = model, model.cfg, dtype
        self.options = {"freezing": True}
        if autotune:
            self.options.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
        device = next(model.parameters()).device
        self.device_type = device.type
        self.compiled = torch.compile(model, dynamic=False)
        # Autotuning writes a table per GEMM to stderr; keep the tracker's output readable.
        with torch.inference_mode(), contextlib.redirect_stderr(io.StringIO()):
            self(*example_inputs(model.cfg, batch, device))

    def forward(self, template, search):
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config
        # Dynamo keeps the graphs of every compiled HiT on the one code object of
        # HiT.forward, 8 by default: a process with several compiled models (bench.py)
        # would silently fall back to eager. Tensors made outside inference mode carry
        # another dispatch key and would compile a second graph: cloned into it instead.
        with dynamo_config.patch(recompile_limit=256), inductor_config.patch(self.options), \
                torch.inference_mode(), \
                torch.autocast(self.device_type, self.dtype, enabled=self.dtype is not None):
            template, search = (t if t.is_inference() else t.clone() for t in (template, search))
            out = self.compiled(template, search)
        return {k: v.float() for k, v in out.items()}


def unavailable(mode, device):
    """Why `mode` cannot run on `device` (a sentence), or None when it can: the one check
    behind hit.prepare's errors and bench.py's skipped modes."""
    device = torch.device(device)
    if mode not in MODES:
        return f"unknown mode {mode!r}; expected one of {MODES}"
    if mode == "cuda_graph" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if mode == "fp16" and device.type == "cpu":
        return "fp16 needs a GPU (cuda or mps); on the CPU use fast or int8"
    if mode == "bf16" and device.type == "cpu" and not fast.cpu_has_bf16():
        return ("bf16 on the CPU needs native bfloat16 (AVX512-BF16 or AMX); this CPU would "
                "emulate it, slower than fp32: use int8")
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support"
    if mode in ("int8", "fast") and device.type != "cpu":
        return f"{mode} runs on the CPU only (fbgemm/oneDNN int8 kernels)"
    return None


def prepare(model, mode="fused", device=None, batch=1):
    """The model ready for inference in `mode` (see MODES) on `device`; a callable
    f(template, search) -> {"pred_boxes", "score"} with a `cfg` attribute."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    reason = unavailable(mode, device)
    if reason:
        raise ValueError(f"mode {mode}: {reason}")
    model = model.to(device).eval()
    if mode == "eager":
        return model
    if not getattr(model, "head_fused", False):
        model.fuse(head=True)
    if mode in ("fp16", "bf16"):
        return CastInputs(model, torch.float16 if mode == "fp16" else torch.bfloat16)
    if mode in ("int8", "fast"):
        return quantize_int8(model) if mode == "int8" else fast_cpu(model, batch)
    if mode == "fused" and device.type == "cpu":
        levit.pack_linears(model)
        if any(isinstance(m, levit.PackedLinear) for m in model.modules()):
            levit.pick_gemm(model, *example_inputs(model.cfg, batch, device))
    if mode == "compile":
        return Compiled(model, batch=batch)
    if mode == "cuda_graph":
        return CudaGraph(model, batch)
    return model


def quantize_int8(model):
    """Dynamic int8 quantisation (int8 weights, activations quantised per call) of every
    backbone Linear: most of the MACs of Base, ~40 % of Small/Tiny. The convolutions stay
    float here; the fast mode adds int8 head convs (Int8Conv2d). PyTorch's own dynamic
    Conv2d (7-bit activations, per-tensor weights) was tried for the head first and cost
    6 AUC points on the procedural val split; Int8Conv2d costs none (README, Speed)."""
    import copy
    from torch.ao.quantization import quantize_dynamic
    if any(isinstance(m, levit.PackedLinear) for m in model.modules()):
        raise ValueError("this model was prepared for mode fused already; quantise a fresh one")
    q = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch.ao announces its own deprecation on every call
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        q.backbone = quantize_dynamic(q.backbone, {nn.Linear}, dtype=torch.qint8)
    return q


def fast_cpu(model, batch=1):
    """The fastest CPU model we found (mode `fast`). On CPUs with native bfloat16
    (AVX512-BF16, AMX): the fused model compiled by Inductor under bf16 autocast
    (`Compiled`: Linears, attention GEMMs and convolutions in bf16 with float32
    accumulation, as autocast chooses; the soft-argmax and the outputs in float32).
    Elsewhere, or where Inductor cannot build (no C++ compiler), the eager int8 path
    `int8_cpu`."""
    if fast.cpu_has_bf16():
        try:
            return Compiled(model, torch.bfloat16, batch, autotune=True)
        except Exception as e:  # Inductor's failures have no common base class
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"mode fast: torch.compile failed ({reason}); using eager int8 instead")
    return int8_cpu(model)


def int8_cpu(model):
    """The eager `fast` path where bf16 compilation is unavailable: the backbone Linears
    in dynamic int8 (quantize_int8), the corner head's convs in int8 (Int8Conv2d: ~40 %
    of Small/Tiny's MACs) and, where the CPU has native bfloat16, the patch embedding in
    bf16 (its few-channel convs are slower in int8 than in fp32). Attention, softmax, the
    Bridge and the soft-argmax stay float32. Where oneDNN's int8 convolution is missing
    (non-x86 builds) the head stays float32."""
    q = quantize_int8(model)
    try:
        q.box_head.towers = int8_convs(q.box_head.towers)
    except (RuntimeError, AttributeError, NotImplementedError):
        pass  # no oneDNN int8 convolution in this build
    if fast.cpu_has_bf16():
        q.backbone.body.patch_embed = InBF16(q.backbone.body.patch_embed)
    return q


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, batch=1):
    """Multiply-accumulates of one forward (torch FlopCounterMode FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = model.cfg
    z = torch.randn(batch, 3, cfg.template_size, cfg.template_size)
    x = torch.randn(batch, 3, cfg.search_size, cfg.search_size)
    device = next(model.parameters()).device
    counter, training = FlopCounterMode(display=False), model.training
    model.eval()  # a train-mode forward would update the BN running statistics
    try:
        with counter, torch.no_grad():
            model(z.to(device), x.to(device))
    finally:
        model.train(training)
    return counter.get_total_flops() / 2


if __name__ == "__main__":
    for name in VARIANTS:
        m = build_hit(name).eval()
        n = count_params(m)
        m.fuse()
        print(f"HiT-{name:5s} params {n:,} (BN fused {count_params(m):,})  "
              f"GMACs {count_macs(m) / 1e9:.3f}")
