"""HiT: the full tracker network, its variants, and checkpoint loading.

Paper Sec. 3, Fig. 2 and Table 1 (variants). For a template Z (128x128), a search crop X (256x256):
    backbone  LeViT over tokens [X; Z] (levit.py, attention_bias.py): stage outputs S_max 16x16,
              S_mid 8x8, S_min 4x4 (search part), G = mean of all last-stage tokens
    bridge    O = fused 16x16 map (bridge.py, Eq. 3), projected to 256 channels; G too
    head      STARK's corner head: e' = e * (e . g) (no softmax), two conv towers, soft-argmax.
Parameter names equal the released ones (`backbone.body.*`, `bottleneck.*`, `box_head.*`):
a released `net` state dict loads with strict=True. `load_checkpoint` runs nothing from the file.
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
from bridge import STAGES, Bridge

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class HiTConfig:
    variant: str  # "base", "small", "tiny"
    levit: str  # LeViT spec name of the backbone (Table 1)
    pos_layout: str = "diagonal"  # Table 6; attention_bias.LAYOUTS
    bridge_stages: tuple = STAGES  # Table 5: a non-empty subset of ("max", "mid", "min")
    template_size: int = 128  # crop factor 2
    search_size: int = 256  # crop factor 4
    hidden_dim: int = 256  # C_h: width of the bridge projections and the head input
    stride: int = 16  # patch-embedding stride (levit.patch_embed: four stride-2 convs)

    def __post_init__(self):  # the one check of every config: built, or read from a checkpoint
        levit.spec_of(self.levit)  # a ValueError for an unknown LeViT
        if self.pos_layout not in attention_bias.LAYOUTS:
            raise ValueError(f"unknown pos_layout {self.pos_layout!r}; expected one of {attention_bias.LAYOUTS}")
        if isinstance(self.bridge_stages, str):  # tuple("max") would be ('m', 'a', 'x')
            raise ValueError(f"bridge_stages must be a sequence of stage names, got the string {self.bridge_stages!r}")
        stages = tuple(self.bridge_stages)  # a list when read from JSON
        if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"bridge_stages must be a non-empty subset of {STAGES}, got {stages}")
        object.__setattr__(self, "bridge_stages", stages)  # frozen dataclass: set once, here
        if self.stride != 16:
            raise ValueError(f"stride must be 16 (the LeViT patch embedding), got {self.stride}")
        # The search grid halves twice exactly (16, 8, 4) for the Bridge's 2x upsamplings; the template: whole tokens
        if self.search_size <= 0 or self.search_size % 64 or self.template_size <= 0 or self.template_size % 16:
            raise ValueError(f"search_size must be a multiple of 64 and template_size of 16, got "
                             f"{self.search_size} and {self.template_size}")


VARIANTS = {"base": HiTConfig("base", "LeViT_384"), "small": HiTConfig("small", "LeViT_128"),
            "tiny": HiTConfig("tiny", "LeViT_128S")}


# ----------------------------------------------------------------------------- head
class CornerHead(nn.Module):
    """STARK's corner head: two conv towers (256->256->128->64->32, then 1x1 -> 1) for the
    top-left and bottom-right corners, each followed by a soft-argmax over the map."""

    def __init__(self, c_in=256, feat_size=16, stride=16):
        super().__init__()
        chans = [c_in, c_in, c_in // 2, c_in // 4, c_in // 8]
        for corner in ("tl", "br"):
            for i in range(4):
                setattr(self, f"conv{i + 1}_{corner}", nn.Sequential(  # conv 3x3 + BN + ReLU
                    nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1), nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)))
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
        if torch.is_autocast_enabled(logits.device.type):  # mixed-precision training: a bf16 soft-argmax
            with torch.autocast(logits.device.type, enabled=False):  # would round corners to ~1 px
                return self.from_maps(logits.float())
        prob = logits.flatten(2).softmax(dim=-1)  # (B, 2, HW)
        cx, cy = prob @ self.coord_x, prob @ self.coord_y  # (B, 2) soft-argmax per corner
        box = torch.stack([cx[:, 0], cy[:, 0], cx[:, 1], cy[:, 1]], dim=1) / self.img_size  # (B, 4) xyxy
        # Confidence: geometric mean of the two maps' peak probabilities: high for sharp, unimodal
        # maps. A weak signal in practice (TRAINING.md, "The score is not a confidence").
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
        grids = [(cfg.search_size // cfg.stride,) * 2, (cfg.template_size // cfg.stride,) * 2]  # search first
        self.body = levit.LeViT(levit.SPECS[cfg.levit], grids, cfg.pos_layout)

    def forward(self, template, search):
        return self.body.forward_stages([search, template])


def reweight(e, g):
    """The head's input (released STARK-style): e' = e * (e . g), each token of e (B, N, C_h)
    scaled by its dot product with the global vector g (B, C_h); no softmax."""
    att = torch.bmm(e, g.unsqueeze(2))  # (B, N, 1): e . g per token
    return e * att  # (B, N, C_h)


class HiT(nn.Module):
    """Backbone, Bridge Module, corner head (Fig. 2)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.bottleneck = Bridge(levit.SPECS[cfg.levit].embed_dim, cfg.bridge_stages, cfg.hidden_dim)
        self.box_head = CornerHead(cfg.hidden_dim, cfg.search_size // cfg.stride, cfg.stride)

    def forward_features(self, template, search):
        """The outputs and every intermediate the released fixtures check. The backbone
        checks the input shapes (levit.LeViT.check_images)."""
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
        return {"stage_features": [s1, s2, s3_g], "bridge_tokens": tokens, "score_maps": maps,
                "pred_boxes": xyxy_to_cxcywh(box), "score": score}

    def forward(self, template, search, maps=False):
        """template (B,3,128,128), search (B,3,256,256), ImageNet-normalised -> pred_boxes (B, 4)
        (cx, cy, w, h) normalised to the search crop, score (B,) in (0, 1] (CornerHead.from_maps);
        with maps=True also the corner logits "score_maps" (B, 2, 16, 16)."""
        out = self.forward_features(template, search)
        return {k: out[k] for k in ("pred_boxes", "score") + (("score_maps",) if maps else ())}

    def fuse(self):
        """Fold the backbone's BatchNorms in place, as the released tracker does before it runs
        (Table 1's "BN fused" counts); inference only. Returns the model."""
        self.eval()
        levit.fuse_bn(self.backbone)
        return self


def build_hit(variant, pos_layout="diagonal", bridge_stages=STAGES):
    if variant not in VARIANTS:
        raise ValueError(f"unknown HiT variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return HiT(dataclasses.replace(VARIANTS[variant], pos_layout=pos_layout, bridge_stages=bridge_stages))


def config_from_dict(d):
    """A HiTConfig from its dataclasses.asdict form (checkpoints, ONNX metadata)."""
    return HiTConfig(**d)


# ----------------------------------------------------------------------------- safe loading
# torch.<Name>Storage -> the element type its bytes are viewed as
STORAGES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16,
            "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8,
            "Byte": torch.uint8, "Bool": torch.bool, "Untyped": torch.uint8}


class _Refused(type):
    """Metaclass of placeholders: building one through a call (pickle REDUCE) is refused,
    so `os.system`, `eval` or any unknown callable in a file never runs."""

    def __call__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(f"refusing to call {cls.__module__}.{cls.__qualname__} from a checkpoint")


def _placeholder(module, name):
    """An inert stand-in for a class that is not allow-listed: it can be instantiated the
    way plain objects are pickled (NEWOBJ, whose constructor args it ignores, then BUILD)
    and keeps its state as a dict."""
    return _Refused(name, (), {"__module__": module, "__qualname__": name,
                               "__new__": lambda cls, *args, **kwargs: object.__new__(cls),
                               "__setstate__": lambda self, state: self.__dict__.update(_state=state)})


class SafeUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers only (see `safe_load`)."""
    ALLOWED = {("torch", f"{name}Storage"): dtype for name, dtype in STORAGES.items()} | {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"):  # torch's own argument list, no more, no less
            lambda storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None:
                storage.as_strided(tuple(size), tuple(stride), offset),
        ("torch._utils", "_rebuild_parameter"):
            lambda data, requires_grad, hooks, *extra: nn.Parameter(data, requires_grad=requires_grad)}

    def __init__(self, file, read_record):
        super().__init__(file)
        self.read_record = read_record

    def find_class(self, module, name):
        return self.ALLOWED.get((module, name)) or _placeholder(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        data = bytearray(self.read_record(f"data/{pid[2]}"))  # pid: ("storage", dtype, key, location, numel)
        flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return flat.view(pid[1])  # the bytes as elements of the storage's dtype


def safe_load(path):
    """Read a torch.save zip file without importing or running anything from it: tensors,
    parameters, OrderedDict and pickle's plain types are rebuilt; other classes become inert
    placeholders (state kept as a dict); calling one (as malicious pickles do) raises."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable PyTorch zip checkpoint (truncated or "
                         f"corrupt, or the legacy pre-1.6 format): {e}") from e
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
    prefix = pkl[0][: -len("data.pkl")]
    try:
        with zf:
            return SafeUnpickler(io.BytesIO(zf.read(pkl[0])), lambda rec: zf.read(prefix + rec)).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused: {e}") from e
    except Exception as e:  # zip/CRC errors, short records, malformed pickle streams
        raise ValueError(f"{path}: truncated or corrupt checkpoint: {type(e).__name__}: {e}") from e


def infer_config(sd, path="checkpoint"):
    """The variant whose state-dict keys and shapes equal those of `sd`."""
    have = {(k, tuple(v.shape)) for k, v in sd.items()}
    with torch.device("meta"):  # shapes only: no memory
        diff = {c: {(k, tuple(v.shape)) for k, v in HiT(c).state_dict().items()} ^ have for c in VARIANTS.values()}
    nearest = min(diff, key=lambda c: len(diff[c]))
    if diff[nearest]:
        raise ValueError(f"{path}: state dict matches no HiT variant; nearest {nearest.variant!r} "
                         f"differs in {sorted(diff[nearest])[:10]}")
    return nearest


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
        cfg, sd = infer_config(obj["net"], path), obj["net"]
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
    try:
        with counter, torch.no_grad():
            model.eval()(z, x)  # a train-mode forward would update the BN running statistics
    finally:
        model.train(training)
    return counter.get_total_flops() / 2


# ----------------------------------------------------------------------------- devices
# One parser and one synchronise for every script (train.py, track.py, bench.py).
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
        print(f"HiT-{name:5s} params {n:,} (BN fused {count_params(m.fuse()):,})  GMACs {count_macs(m) / 1e9:.3f}")
