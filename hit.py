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
import dataclasses
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

import attention_bias
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
    hidden_dim: int = 256  # C_h: width of the bridge projections and the head input
    stride: int = 16  # patch-embedding stride (levit.patch_embed: four stride-2 convs)

    def __post_init__(self):  # configs also arrive from checkpoints (config_from_dict)
        if self.levit not in levit.SPECS:
            raise ValueError(f"unknown LeViT spec {self.levit!r}; expected one of {sorted(levit.SPECS)}")
        if self.pos_layout not in attention_bias.LAYOUTS:
            raise ValueError(f"unknown pos_layout {self.pos_layout!r}; expected one of {attention_bias.LAYOUTS}")
        if self.stride != 16:
            raise ValueError(f"stride must be 16 (the LeViT patch embedding), got {self.stride}")
        # The search grid halves exactly twice (16 -> 8 -> 4 for 256), as the Bridge's 2x
        # upsamplings need; the template only needs whole tokens.
        if self.search_size <= 0 or self.search_size % 64 or self.template_size <= 0 or self.template_size % 16:
            raise ValueError(f"search_size must be a multiple of 64 and template_size of 16, got "
                             f"{self.search_size} and {self.template_size}")


VARIANTS = {
    "base": HiTConfig("base", "LeViT_384"),
    "small": HiTConfig("small", "LeViT_128"),
    "tiny": HiTConfig("tiny", "LeViT_128S"),
}


# ----------------------------------------------------------------------------- head
def autocast_on(device_type):
    return torch.is_autocast_enabled(device_type)


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
        self.feat_size, self.img_size = feat_size, feat_size * stride
        # Released quirk: corner coordinates are index * stride (0, 16, ..., 240), not cell centres
        coord = torch.arange(feat_size, dtype=torch.float32) * stride
        self.register_buffer("coord_x", coord.repeat(feat_size), persistent=False)  # (HW,) column
        self.register_buffer("coord_y", coord.repeat_interleave(feat_size), persistent=False)  # (HW,) row

    def score_maps(self, x):
        """(B, C, H, W) -> (B, 2, H, W): top-left and bottom-right corner logits."""
        maps = []
        for corner in ("tl", "br"):
            y = x
            for i in range(1, 6):
                y = getattr(self, f"conv{i}_{corner}")(y)
            maps.append(y)
        return torch.cat(maps, dim=1)

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


def reweight(e, g):
    """The head's input (released STARK-style head): every token of E re-weighted by its
    dot product with the global vector, e' = e * (e . g), no softmax. e (B, N, C_h), g (B, C_h)."""
    att = torch.bmm(e, g.unsqueeze(2))  # (B, N, 1): e . g per token
    return e * att  # (B, N, C_h)


class HiT(nn.Module):
    """Backbone, Bridge Module, corner head (Fig. 2)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        spec = levit.SPECS[cfg.levit]
        self.backbone = Backbone(cfg)
        self.bottleneck = Bridge(spec.embed_dim, cfg.bridge_stages, cfg.hidden_dim)
        self.box_head = CornerHead(cfg.hidden_dim, cfg.search_size // cfg.stride, cfg.stride)

    def forward_features(self, template, search):
        """The outputs and every intermediate the released fixtures check."""
        self.check_inputs(template, search)
        s1, s2, s3 = self.backbone(template, search)  # (B, N_i, C_i), tokens [search; template]
        side = self.cfg.search_size // self.cfg.stride  # 16: the search grid at stage 1
        n = side * side  # search tokens at stage 1 (256); 64 and 16 at stages 2, 3
        g = s3.mean(dim=1)  # (B, C3): G, mean over all last-stage tokens (search and template)
        o = self.bottleneck(s1[:, :n], s2[:, :n // 4], s3[:, :n // 16])  # (B, 256, C1): O of Eq. 3
        e, g_p = self.bottleneck.proj1(o), self.bottleneck.proj2(g)  # (B, 256, C_h), (B, C_h)
        x = reweight(e, g_p)  # (B, 256, C_h)
        fmap = x.transpose(1, 2).reshape(x.shape[0], -1, side, side)  # (B, C_h, 16, 16)
        maps = self.box_head.score_maps(fmap)  # (B, 2, 16, 16) corner logits
        box, score = self.box_head.from_maps(maps)
        tokens = torch.cat([g_p.unsqueeze(1), e], dim=1).transpose(0, 1)  # (257, B, C_h) as released
        s3_g = torch.cat([g.unsqueeze(1), s3], dim=1)  # (B, 1 + N_3, C3): G first, as released
        return {"stage_features": [s1, s2, s3_g],
                "bridge_tokens": tokens, "score_maps": maps,
                "pred_boxes": xyxy_to_cxcywh(box), "score": score}

    def check_inputs(self, template, search):
        """Clear errors for inputs that would otherwise fail deep inside the backbone, or
        not at all: a swapped template and search make as many tokens."""
        z, x = (3, self.cfg.template_size, self.cfg.template_size), (3, self.cfg.search_size, self.cfg.search_size)
        if template.dim() != 4 or search.dim() != 4 or tuple(template.shape[1:]) != z \
                or tuple(search.shape[1:]) != x or template.shape[0] != search.shape[0]:
            raise ValueError(f"expected template (B, *{z}) and search (B, *{x}), got "
                             f"{tuple(template.shape)} and {tuple(search.shape)}")

    def forward(self, template, search, maps=False):
        """template (B,3,128,128), search (B,3,256,256), ImageNet-normalised.
        Returns pred_boxes (B, 4) = (cx, cy, w, h) normalised to the search crop, and
        score (B,) in (0, 1] (see CornerHead.from_maps); with maps=True also the corner
        logits "score_maps" (B, 2, 16, 16) (train.py's optional corner loss)."""
        out = self.forward_features(template, search)
        keys = ("pred_boxes", "score", "score_maps") if maps else ("pred_boxes", "score")
        return {k: out[k] for k in keys}

    def fuse(self):
        """Fold the backbone's BatchNorms into the preceding layers, in place, as the
        released tracker does before it runs (Table 1's "BN fused" parameter counts);
        returns the model. Inference only. fast.py folds the rest for speed."""
        self.eval()
        levit.fuse_bn(self.backbone)
        return self


def build_hit(variant, pos_layout="diagonal", bridge_stages=("max", "mid", "min")):
    if isinstance(bridge_stages, str):  # tuple("max") would be ('m', 'a', 'x')
        raise ValueError(f"bridge_stages must be a sequence of stage names, got the string {bridge_stages!r}")
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


# ----------------------------------------------------------------------------- size (Table 1)
def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, batch=1):
    """Multiply-accumulates of one forward (torch FlopCounterMode FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg, p = model.cfg, next(model.parameters())
    z = torch.randn(batch, 3, cfg.template_size, cfg.template_size, dtype=p.dtype, device=p.device)
    x = torch.randn(batch, 3, cfg.search_size, cfg.search_size, dtype=p.dtype, device=p.device)
    counter, training = FlopCounterMode(display=False), model.training
    model.eval()  # a train-mode forward would update the BN running statistics
    try:
        with counter, torch.no_grad():
            model(z, x)
    finally:
        model.train(training)
    return counter.get_total_flops() / 2


# ----------------------------------------------------------------------------- devices
# One parser and one synchronise for every script (train.py, track.py, bench.py, fast.py).
def default_device():
    """The fastest device present: cuda, else mps, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def parse_device(text):
    """--device -> torch.device: None, "" or "auto" picks default_device(); else cpu, cuda,
    cuda:N or mps, which this machine must have. ValueError names the value."""
    if text in (None, "", "auto"):
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {text!r}: HiT runs on cpu, cuda or mps")
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= usable:
        raise ValueError(f"--device {text!r}: this machine has {usable} usable CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text!r}: MPS is not available on this machine")
    return device


def sync(device):
    """Wait for the device's queued kernels (GPUs run asynchronously), so timings are honest."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def distributed_env():
    """(rank, world, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


if __name__ == "__main__":
    for name in VARIANTS:
        m = build_hit(name).eval()
        n = count_params(m)
        m.fuse()
        print(f"HiT-{name:5s} params {n:,} (BN fused {count_params(m):,})  "
              f"GMACs {count_macs(m) / 1e9:.3f}")
