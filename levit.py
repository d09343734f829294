"""LeViT: the lightweight hierarchical vision transformer behind HiT.

Paper Sec. 3.2 (Fig. 3: multi-head and shrink attention) and LeViT (Graham et al., ICCV 2021).
The same modules make the ImageNet classifier (one 224x224 image) and the HiT backbone (search
and template embedded separately, then one token sequence [search; template]; hit.py).
Parameter names are the released LeViT's (`blocks.3.m.qkv.bn.weight`), so its checkpoints load
as they are; pytorch-image-models weights are renamed by a table (`TIMM_RENAMES`).
"""
import copy
import json
import re
import struct
from dataclasses import dataclass

import torch
from torch import nn

import attention_bias


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class LeViTSpec:
    embed_dim: tuple  # C per stage (C_max, C_mid, C_min in the paper's HiT notation)
    key_dim: int  # D: query/key width per head
    num_heads: tuple  # heads per stage for MHA (shrink attention uses C_in // D)
    depth: tuple  # MHA + MLP block pairs per stage
    drop_path: float = 0.0  # per-sample stochastic depth in training (LeViT-384 only)


SPECS = {
    "LeViT_128S": LeViTSpec((128, 256, 384), 16, (4, 6, 8), (2, 3, 4)),
    "LeViT_128": LeViTSpec((128, 256, 384), 16, (4, 8, 12), (4, 4, 4)),
    "LeViT_192": LeViTSpec((192, 288, 384), 32, (3, 5, 6), (4, 4, 4)),
    "LeViT_256": LeViTSpec((256, 384, 512), 32, (4, 6, 8), (4, 4, 4)),
    "LeViT_384": LeViTSpec((384, 512, 768), 32, (6, 9, 12), (4, 4, 4), drop_path=0.1),
}
MHA_V_RATIO = 2  # value width 2D per head in MHA (Eq. 1: W^V is C x 2D)
SA_V_RATIO = 4  # value width 4D per head in shrink attention (doubled to limit information loss)
MLP_RATIO = 2  # hidden width 2C in every residual MLP


def spec_of(arch):  # the LeViTSpec named `arch`, or a ValueError listing the known ones
    if arch not in SPECS:
        raise ValueError(f"unknown LeViT arch {arch!r}; expected one of {sorted(SPECS)}")
    return SPECS[arch]


# ----------------------------------------------------------------------------- conv/linear + BN
def fold_bn(weight, bias, bn):
    """Fold an eval-mode BatchNorm into the preceding conv/linear weight (out channels first)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    b = bn.bias - bn.running_mean * scale
    if bias is not None:
        b = b + bias * scale
    return weight * scale.view(shape), b


class FoldsBN(nn.Module):
    """A layer `c` without bias, then a BatchNorm `bn` (its weight starting at bn_weight_init);
    `fuse()` returns a copy of `c` with the BN folded into its weight and a bias."""

    def __init__(self, c, bn, bn_weight_init=1.0):
        super().__init__()
        self.c, self.bn = c, bn
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):
        return self.bn(self.c(x))

    @torch.no_grad()
    def fuse(self):
        w, b = fold_bn(self.c.weight, None, self.bn)
        layer = copy.deepcopy(self.c)
        layer.weight, layer.bias = nn.Parameter(w), nn.Parameter(b)
        return layer


class Conv2d_BN(FoldsBN):
    """Conv2d without bias, then BatchNorm2d."""

    def __init__(self, c_in, c_out, kernel, stride, pad):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=False), nn.BatchNorm2d(c_out))


class Linear_BN(FoldsBN):
    """Linear without bias, then BatchNorm1d over channels (all tokens of the batch pooled, as released)."""

    def __init__(self, c_in, c_out, bn_weight_init=1.0):
        super().__init__(nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out), bn_weight_init)
        nn.init.trunc_normal_(self.c.weight, std=0.02)

    def forward(self, x):
        y = self.c(x)  # (B, N, C_out)
        return self.bn(y.flatten(0, 1)).view_as(y)  # BN over (B*N, C_out)


class BN_Linear(nn.Module):
    """Classifier head of LeViT: BatchNorm1d then Linear; `fuse()` folds the BN forward."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.bn = nn.BatchNorm1d(c_in)
        self.l = nn.Linear(c_in, c_out)
        nn.init.trunc_normal_(self.l.weight, std=0.02)
        nn.init.zeros_(self.l.bias)

    def forward(self, x):
        return self.l(self.bn(x))

    @torch.no_grad()
    def fuse(self):  # l(x * scale + shift) = (W * scale) x + (b + W shift)
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)  # (C_in,)
        lin = copy.deepcopy(self.l)
        lin.bias.add_(self.l.weight @ (self.bn.bias - self.bn.running_mean * scale))
        lin.weight.mul_(scale[None, :])
        return lin


def fuse_bn(module):
    """Replace, in place and recursively, every child that has a `fuse()` by its result."""
    for name, child in module.named_children():
        if hasattr(child, "fuse"):
            setattr(module, name, child.fuse())
        else:
            fuse_bn(child)
    return module


# ----------------------------------------------------------------------------- blocks
class Residual(nn.Module):
    """x + m(x), with per-sample drop path in training (LeViT's stochastic depth)."""

    def __init__(self, m, drop=0.0):
        super().__init__()
        self.m, self.drop = m, drop

    def forward(self, x):
        if self.training and self.drop > 0:
            keep = torch.rand(x.size(0), 1, 1, device=x.device, dtype=x.dtype).ge_(self.drop)  # (B, 1, 1)
            return x + self.m(x) * keep.div(1 - self.drop)
        return x + self.m(x)


def mlp(dim, drop=0.0):
    """Residual MLP: Linear_BN(C, 2C), Hardswish, Linear_BN(2C, C) (last BN starts at 0)."""
    h = dim * MLP_RATIO
    return Residual(nn.Sequential(Linear_BN(dim, h), nn.Hardswish(), Linear_BN(h, dim, bn_weight_init=0.0)), drop)


class BiasTable(nn.Module):
    """What both attentions share: heads with key width D, value width v_ratio * D, scale
    D^-0.5 (Eq. 1), and the learned bias of Eq. 2: a table B^h (heads, entries) read through
    the fixed (Nq, Nk) index of every query/key pair's offset (attention_bias.py; a buffer of
    the released files, though derived). index None: the "absolute" ablation, no bias."""

    def __init__(self, heads, key_dim, v_ratio, index, entries):
        super().__init__()
        self.heads, self.key_dim, self.v_dim, self.scale = heads, key_dim, v_ratio * key_dim, key_dim ** -0.5
        self.attention_biases = None if index is None else nn.Parameter(torch.zeros(heads, entries))
        if index is not None:
            self.register_buffer("attention_bias_idxs", index)

    def bias(self):
        """Bias^h[p, q] for every head and (query, key) pair: (heads, Nq, Nk), or None."""
        return None if self.attention_biases is None else self.attention_biases[:, self.attention_bias_idxs]


def attend(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v for q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv),
    as baddbmm (bias + scale * q k^T in one GEMM call), softmax, bmm: on CPU at these sizes
    faster than scaled_dot_product_attention with a float mask (SPEED.md)."""
    (B, H, Nq, D), Nk = q.shape, k.shape[2]
    qf = q.reshape(B * H, Nq, D)  # (B*H, Nq, D)
    kt = k.reshape(B * H, Nk, D).transpose(1, 2)  # (B*H, D, Nk)
    if bias is None:
        attn = torch.bmm(qf, kt).mul_(scale)
    else:
        bias = bias.expand(B, H, Nq, Nk).reshape(B * H, Nq, Nk)  # a view when B == 1
        attn = torch.baddbmm(bias, qf, kt, alpha=scale)  # (B*H, Nq, Nk)
    out = torch.bmm(attn.softmax(dim=-1), v.reshape(B * H, Nk, -1))  # (B*H, Nq, Dv)
    return out.view(B, H, Nq, -1)  # (B, H, Nq, Dv)


def split_heads(x, heads, widths):
    """(B, N, heads*sum(widths)) -> one (B, heads, N, w) per width: the per-head split."""
    B, N, _ = x.shape
    return x.view(B, N, heads, -1).transpose(1, 2).split(widths, dim=3)  # (B, heads, N, sum(widths))


def merge_heads(x):
    """(B, heads, N, Dv) -> (B, N, heads*Dv): Concat(H_1, ..., H_N) of Eq. 1."""
    return x.transpose(1, 2).flatten(2)  # (B, N, heads*Dv)


class Attention(BiasTable):
    """Multi-head attention (Fig. 3a, Eq. 1): per head q, k of width D and v of width 2D."""

    def __init__(self, dim, key_dim, heads, index=None, entries=0):
        super().__init__(heads, key_dim, MHA_V_RATIO, index, entries)
        self.qkv = Linear_BN(dim, heads * (2 * key_dim + self.v_dim))
        self.proj = nn.Sequential(nn.Hardswish(), Linear_BN(heads * self.v_dim, dim, bn_weight_init=0.0))

    def forward(self, x):
        q, k, v = split_heads(self.qkv(x), self.heads, [self.key_dim, self.key_dim, self.v_dim])
        return self.proj(merge_heads(attend(q, k, v, self.bias(), self.scale)))


class Subsample(nn.Module):
    """Keep every second row and column, separately on each image's grid (search, then
    template), preserving the [search; template] order (paper Sec. 3.2, SA)."""

    def __init__(self, grids):
        super().__init__()
        self.grids = [tuple(g) for g in grids]

    def forward(self, x):
        B, _, C = x.shape
        parts, start = [], 0
        for h, w in self.grids:
            g = x[:, start:start + h * w].view(B, h, w, C)  # (B, h, w, C)
            parts.append(g[:, ::2, ::2].reshape(B, -1, C))  # (B, ceil(h/2)*ceil(w/2), C)
            start += h * w
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class ShrinkAttention(BiasTable):
    """Shrink attention (Fig. 3b): keys/values from all tokens, queries from the 2x
    subsampled tokens; heads = C_in // D, value width 4D; no residual around it."""

    def __init__(self, dim_in, dim_out, key_dim, grids, index=None, entries=0):
        heads = dim_in // key_dim
        super().__init__(heads, key_dim, SA_V_RATIO, index, entries)
        self.kv = Linear_BN(dim_in, heads * (key_dim + self.v_dim))
        self.q = nn.Sequential(Subsample(grids), Linear_BN(dim_in, heads * key_dim))
        self.proj = nn.Sequential(nn.Hardswish(), Linear_BN(heads * self.v_dim, dim_out))

    def forward(self, x):
        k, v = split_heads(self.kv(x), self.heads, [self.key_dim, self.v_dim])  # (B, heads, N, D / 4D)
        (q,) = split_heads(self.q(x), self.heads, [self.key_dim])  # (B, heads, N', D)
        return self.proj(merge_heads(attend(q, k, v, self.bias(), self.scale)))  # (B, N', C_out)


def patch_embed(dim):
    """Four 3x3 stride-2 Conv2d_BN (C/8, C/4, C/2, C) with Hardswish between: stride 16."""
    chans = [3, dim // 8, dim // 4, dim // 2, dim]
    layers = [m for i in range(4) for m in (Conv2d_BN(chans[i], chans[i + 1], 3, 2, 1), nn.Hardswish())]
    return nn.Sequential(*layers[:-1])  # none after the last


# ----------------------------------------------------------------------------- the network
class LeViT(nn.Module):
    """LeViT over images given as token grids (stride-16 sides): [(14, 14)] the ImageNet
    classifier (num_classes > 0: class and distillation heads, averaged in eval), [(16, 16),
    (8, 8)] the HiT backbone (search, template). `layout`: position encoding (attention_bias.py)."""

    def __init__(self, spec, grids=((14, 14),), layout="diagonal", num_classes=0):
        super().__init__()
        self.spec, self.grids = spec, [tuple(g) for g in grids]
        C, D = spec.embed_dim, spec.key_dim
        relative = layout != "absolute"
        mha_idx, sa_idx = attention_bias.stage_indices(self.grids, layout) if relative else \
            ([(None, 0)] * 3, [(None, 0)] * 2)  # (index, entries) per attention
        self.patch_embed = patch_embed(C[0])
        if not relative:  # Table 6 ablation: learned absolute position, no attention bias
            self.pos_embed = nn.Parameter(torch.zeros(1, sum(h * w for h, w in self.grids), C[0]))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        blocks, self.stage_ends, grids_s = [], [], self.grids
        for s in range(3):
            for _ in range(spec.depth[s]):
                blocks.append(Residual(Attention(C[s], D, spec.num_heads[s], *mha_idx[s]), spec.drop_path))
                blocks.append(mlp(C[s], spec.drop_path))
            self.stage_ends.append(len(blocks))  # stage output = output of the block before
            if s < 2:
                blocks.append(ShrinkAttention(C[s], C[s + 1], D, grids_s, *sa_idx[s]))
                blocks.append(mlp(C[s + 1], spec.drop_path))
                grids_s = [attention_bias.subsample_grid(g) for g in grids_s]
        self.blocks = nn.ModuleList(blocks)
        if num_classes > 0:
            self.head, self.head_dist = BN_Linear(C[2], num_classes), BN_Linear(C[2], num_classes)

    def check_images(self, images):
        """Each image (B, 3, 16h, 16w) for its grid (h, w), one B: HiT's input check (swapped images would run)."""
        names = ("search", "template") if len(self.grids) == 2 else ("image",) * len(self.grids)
        want = [(3, 16 * h, 16 * w) for h, w in self.grids]  # (C, H, W) per image
        if len(images) != len(want) or any(im.dim() != 4 or tuple(im.shape[1:]) != w or len(im) != len(images[0])
                                           for im, w in zip(images, want)):
            expected, got = (" and ".join(f"{n} {s}" for n, s in zip(names + ("extra",) * len(images), shapes))
                             for shapes in ([f"(B, *{w})" for w in want], [tuple(x.shape) for x in images]))
            raise ValueError(f"expected {expected} with one B; got {got}")

    def tokens(self, images):
        """Patch-embed every image separately and concatenate: (B, sum(h*w), C1)."""
        self.check_images(images)
        parts = [self.patch_embed(im).flatten(2).transpose(1, 2) for im in images]  # (B, hw, C)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return x + self.pos_embed if hasattr(self, "pos_embed") else x

    def forward_stages(self, images):
        """Outputs of the three stages (before each shrink attention, and the last)."""
        x, outs = self.tokens(images), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 in self.stage_ends:
                outs.append(x)
        return outs

    def forward(self, x):
        if not hasattr(self, "head") or len(self.grids) != 1:
            raise ValueError("this LeViT has no classifier (num_classes=0 or several images, as "
                             "in HiT's backbone): call forward_stages")
        x = self.forward_stages([x])[-1].mean(1)  # (B, C3): global average over tokens
        a, b = self.head(x), self.head_dist(x)
        return (a, b) if self.training else (a + b) / 2


def build_levit(arch, num_classes=1000):
    """The LeViT ImageNet classifier for 224x224 input (`arch` in SPECS)."""
    return LeViT(spec_of(arch), grids=[(14, 14)], num_classes=num_classes)


# ----------------------------------------------------------------------------- ImageNet weights
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def read_safetensors(path):
    """Read a .safetensors file by hand: 8-byte little-endian header size, JSON header
    {name: {dtype, shape, data_offsets}}, then the raw little-endian tensor bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header size {n} exceeds the file ({len(raw)} bytes)")
    header, data, out = json.loads(raw[8:8 + n]), memoryview(raw)[8 + n:], {}
    header.pop("__metadata__", None)
    for name, meta in header.items():
        begin, end = meta["data_offsets"]
        if meta["dtype"] not in SAFETENSORS_DTYPES or end > len(data):
            raise ValueError(f"{path}: bad entry {name!r}: {meta}")
        dtype = SAFETENSORS_DTYPES[meta["dtype"]]
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(meta["shape"])  # the header's shape
    return out


def read_state_dict(path):
    """A LeViT state dict from a release `.pth` ({'model': sd}), a bare state-dict `.pth`,
    or a `.safetensors` file. Never runs code from the file (weights_only)."""
    path = str(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as a PyTorch weights file: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return dict(obj)


# pytorch-image-models name -> release name. {b}: release index of timm block (s, j) or of stage
# s's downsample; b1 = b + 1 (its MLP); k2: index of ln{k} / conv{k} in the release Sequential.
_B, _D = r"stages\.(?P<s>\d)\.blocks\.(?P<j>\d+)\.", r"stages\.(?P<s>\d)\.downsample\."
_LB, _BIAS = r"(?P<kind>linear|bn)\.(?P<name>\w+)", r"(?P<name>attention_bias(?:es|_idxs))"
TIMM_RENAMES = [
    (r"stem\.conv(?P<k>\d)\." + _LB, "patch_embed.{k2}.{kind}.{name}"),
    (_B + r"attn\." + _BIAS, "blocks.{b}.m.{name}"),
    (_B + r"attn\.qkv\." + _LB, "blocks.{b}.m.qkv.{kind}.{name}"),
    (_B + r"attn\.proj\.ln\." + _LB, "blocks.{b}.m.proj.1.{kind}.{name}"),
    (_B + r"mlp\.ln(?P<k>\d)\." + _LB, "blocks.{b1}.m.{k2}.{kind}.{name}"),
    (_D + r"attn_downsample\." + _BIAS, "blocks.{b}.{name}"),
    (_D + r"attn_downsample\.kv\." + _LB, "blocks.{b}.kv.{kind}.{name}"),
    (_D + r"attn_downsample\.(?P<part>q|proj)\.ln\." + _LB, "blocks.{b}.{part}.1.{kind}.{name}"),
    (_D + r"mlp\.ln(?P<k>\d)\." + _LB, "blocks.{b1}.m.{k2}.{kind}.{name}"),
    (r"(?P<head>head|head_dist)\." + _LB, "{head}.{kind}.{name}"),
]


def timm_block_numbers(spec):
    """{(stage, timm block j): release block} and {(stage, None): its shrink attention}."""
    numbers, n = {}, 0
    for s in range(3):
        for j in ([None] if s else []) + list(range(spec.depth[s])):
            numbers[(s, j)] = n  # the attention; its residual MLP is n + 1
            n += 2
    return numbers


def timm_name(key, numbers):
    """The release name of pytorch-image-models key `key` (numbers: timm_block_numbers), or
    None when not exactly one rule matches or the block is not in the spec."""
    hits = [(m.groupdict(), fmt) for rx, fmt in TIMM_RENAMES if (m := re.fullmatch(rx, key))]
    if len(hits) != 1:
        return None
    g, fmt = hits[0]
    if "s" in g:
        g["b"] = numbers.get((int(g["s"]), int(g["j"]) if g.get("j") else None))
        if g["b"] is None:
            return None
        g["b1"] = g["b"] + 1
    g["k2"] = 2 * (int(g.get("k") or 1) - 1)
    g["kind"] = {"linear": "l" if "head" in g else "c"}.get(g.get("kind"), "bn")  # release attribute names
    return fmt.format(**g)


def timm_to_release(sd, spec):
    """Rename a pytorch-image-models LeViT state dict to the release layout: every source
    key through exactly one rule, and into a name no other key took."""
    numbers, out, unmatched = timm_block_numbers(spec), {}, []
    for key, value in sd.items():
        name = timm_name(key, numbers)
        if name is None:
            unmatched.append(key)
        elif name in out:
            raise ValueError(f"two source keys map to {name!r}")
        else:
            out[name] = value
    if unmatched:
        raise ValueError(f"pytorch-image-models keys with no (or several) rename rules: {unmatched}")
    return out


def load_imagenet_weights(model, path):
    """Load LeViT ImageNet weights (release or pytorch-image-models layout) into `model`, the
    classifier of the same arch or a HiT backbone's body (heads and bias tables dropped: the
    released HiT starts its tables at zero). Bias indices in the file must equal the model's;
    every other key must fill one model key of the same shape and every model key be filled,
    else nothing is loaded and a ValueError lists the offending keys."""
    sd = read_state_dict(path)
    if any(k.startswith("stem.") for k in sd):
        sd = timm_to_release(sd, model.spec)
    target, multi = model.state_dict(), len(model.grids) > 1

    def kept(k):  # heads and bias tables of a HiT start anew; "absolute"'s pos_embed is in no file
        return not ((multi and ("attention_bias" in k or k.startswith("head"))) or k == "pos_embed")

    idx = "attention_bias_idxs"
    src = {k: v for k, v in sd.items() if kept(k) and not k.endswith(idx)}
    tgt = {k: v for k, v in target.items() if kept(k) and not k.endswith(idx)}
    missing, unexpected = sorted(set(tgt) - set(src)), sorted(set(src) - set(tgt))
    shapes = sorted(f"{k}: file {tuple(src[k].shape)} vs model {tuple(tgt[k].shape)}"
                    for k in set(src) & set(tgt) if src[k].shape != tgt[k].shape)
    wrong_idx = sorted(k for k, v in sd.items() if k.endswith(idx) and kept(k)
                       and (k not in target or not torch.equal(v, target[k])))
    if missing or unexpected or shapes or wrong_idx:
        raise ValueError(f"{path}: weights do not fit this LeViT ({model.spec}):\n"
                         f"  missing from file: {missing}\n  not in model: {unexpected}\n"
                         f"  shape mismatch: {shapes}\n  bias index differs: {wrong_idx}")
    with torch.no_grad():
        for k, v in src.items():
            target[k].copy_(v)
    return model


if __name__ == "__main__":
    with torch.no_grad():
        for arch in SPECS:
            m = build_levit(arch).eval()
            print(f"{arch:11s} params {sum(p.numel() for p in m.parameters()):,}  "
                  f"logits {tuple(m(torch.randn(1, 3, 224, 224)).shape)}")
