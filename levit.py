"""LeViT: the lightweight hierarchical vision transformer behind HiT.

Paper Sec. 3.2 (Fig. 3: multi-head attention and shrink attention) and LeViT (Graham et
al., ICCV 2021). The same modules serve two purposes:

* the LeViT ImageNet classifier (one 224x224 image, 14x14 tokens), and
* the HiT backbone: the search and template images, embedded separately, then one token
  sequence [search; template] through all blocks (see hit.py).

Parameter names follow the released LeViT code (`patch_embed.0.c.weight`,
`blocks.3.m.qkv.bn.weight`, ...), so released checkpoints load without renaming.
Weights in the pytorch-image-models layout are converted with an explicit table
(`timm_to_release`). Every Conv/Linear + BatchNorm pair has a `fuse()` that folds the BN
(inference only), as the released tracker does before it runs.
"""
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


# ----------------------------------------------------------------------------- conv/linear + BN
def fold_bn(weight, bias, bn):
    """Fold an eval-mode BatchNorm into the preceding conv/linear weight (out channels first)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    b = bn.bias - bn.running_mean * scale
    if bias is not None:
        b = b + bias * scale
    return weight * scale.view(shape), b


class Conv2d_BN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d; `fuse()` folds the BN into the conv."""

    def __init__(self, c_in, c_out, kernel=1, stride=1, pad=0, bn_weight_init=1.0):
        super().__init__()
        self.c = nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):
        return self.bn(self.c(x))

    @torch.no_grad()
    def fuse(self):
        w, b = fold_bn(self.c.weight, None, self.bn)
        conv = nn.Conv2d(self.c.in_channels, self.c.out_channels, self.c.kernel_size,
                         self.c.stride, self.c.padding, bias=True).to(w)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        return conv


class Linear_BN(nn.Module):
    """Linear without bias followed by BatchNorm1d over channels (all tokens of the batch
    pooled, as the released code does); `fuse()` gives a plain Linear with bias."""

    def __init__(self, c_in, c_out, bn_weight_init=1.0):
        super().__init__()
        self.c = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)
        nn.init.trunc_normal_(self.c.weight, std=0.02)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):
        y = self.c(x)  # (B, N, C_out)
        return self.bn(y.flatten(0, 1)).view_as(y)  # BN over (B*N, C_out)

    @torch.no_grad()
    def fuse(self):
        w, b = fold_bn(self.c.weight, None, self.bn)
        lin = nn.Linear(self.c.in_features, self.c.out_features).to(w)
        lin.weight.copy_(w)
        lin.bias.copy_(b)
        return lin


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
    def fuse(self):
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_in,)
        shift = bn.bias - bn.running_mean * scale
        lin = nn.Linear(self.l.in_features, self.l.out_features).to(scale)
        lin.weight.copy_(self.l.weight * scale[None, :])
        lin.bias.copy_(self.l.bias + self.l.weight @ shift)
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
        self.m = m
        self.drop = drop

    def forward(self, x):
        if self.training and self.drop > 0:
            keep = torch.rand(x.size(0), 1, 1, device=x.device, dtype=x.dtype).ge_(self.drop)  # (B, 1, 1)
            return x + self.m(x) * keep.div(1 - self.drop)
        return x + self.m(x)


def mlp(dim, drop=0.0):
    """Residual MLP: Linear_BN(C, 2C), Hardswish, Linear_BN(2C, C) (last BN starts at 0)."""
    h = dim * MLP_RATIO
    return Residual(nn.Sequential(Linear_BN(dim, h), nn.Hardswish(),
                                  Linear_BN(h, dim, bn_weight_init=0.0)), drop)


class BiasTable(nn.Module):
    """The learned attention bias of Eq. 2: a table B^h (heads, entries) and the fixed
    (Nq, Nk) index of every query/key pair's offset into it (attention_bias.py).
    The index is derived, not learned, but it is a buffer of the released files."""

    def __init__(self, heads, index, entries):
        super().__init__()
        if index is None:  # "absolute" ablation: no relative bias at all
            self.attention_biases = None
            return
        self.attention_biases = nn.Parameter(torch.zeros(heads, entries))
        self.register_buffer("attention_bias_idxs", index)

    def bias(self):
        """Bias^h[p, q] for every head and (query, key) pair: (heads, Nq, Nk), or None."""
        if self.attention_biases is None:
            return None
        return self.attention_biases[:, self.attention_bias_idxs]


def attend(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v for q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv).

    Written as baddbmm (bias + scale * q k^T in one GEMM call), softmax, bmm: the same
    arithmetic as the formula, in three calls; on CPU at these sizes it beats
    scaled_dot_product_attention with a float mask (SPEED.md).
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    qf = q.reshape(B * H, Nq, D)  # (B*H, Nq, D)
    kt = k.reshape(B * H, Nk, D).transpose(1, 2)  # (B*H, D, Nk)
    if bias is None:
        attn = torch.bmm(qf, kt).mul_(scale)
    else:
        bias = bias.expand(B, H, Nq, Nk).reshape(B * H, Nq, Nk)  # a view when B == 1
        attn = torch.baddbmm(bias, qf, kt, alpha=scale)  # (B*H, Nq, Nk)
    attn = attn.softmax(dim=-1)
    out = torch.bmm(attn, v.reshape(B * H, Nk, -1))  # (B*H, Nq, Dv)
    return out.view(B, H, Nq, -1)  # (B, H, Nq, Dv)


class Attention(BiasTable):
    """Multi-head attention (Fig. 3a, Eq. 1): per head q, k of width D and v of width 2D."""

    def __init__(self, dim, key_dim, heads, index=None, entries=0):
        super().__init__(heads, index, entries)
        self.heads, self.key_dim, self.v_dim = heads, key_dim, MHA_V_RATIO * key_dim
        self.scale = key_dim ** -0.5
        self.qkv = Linear_BN(dim, heads * (2 * key_dim + self.v_dim))
        self.proj = nn.Sequential(nn.Hardswish(),
                                  Linear_BN(heads * self.v_dim, dim, bn_weight_init=0.0))

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, self.heads, -1)  # (B, N, heads, 4D): split per head
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.v_dim], dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, N, *)
        x = attend(q, k, v, self.bias(), self.scale)  # (B, heads, N, 2D)
        x = x.transpose(1, 2).reshape(B, N, self.heads * self.v_dim)  # (B, N, heads*2D)
        return self.proj(x)


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
        super().__init__(heads, index, entries)
        self.heads, self.key_dim, self.v_dim = heads, key_dim, SA_V_RATIO * key_dim
        self.scale = key_dim ** -0.5
        self.kv = Linear_BN(dim_in, heads * (key_dim + self.v_dim))
        self.q = nn.Sequential(Subsample(grids), Linear_BN(dim_in, heads * key_dim))
        self.proj = nn.Sequential(nn.Hardswish(), Linear_BN(heads * self.v_dim, dim_out))

    def forward(self, x):
        B, N, _ = x.shape
        kv = self.kv(x).view(B, N, self.heads, -1)  # (B, N, heads, 5D): split per head
        k, v = kv.split([self.key_dim, self.v_dim], dim=3)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, N, D), (B, heads, N, 4D)
        q = self.q(x)  # (B, N', heads*D)
        Nq = q.shape[1]
        q = q.view(B, Nq, self.heads, self.key_dim).transpose(1, 2)  # (B, heads, N', D)
        x = attend(q, k, v, self.bias(), self.scale)  # (B, heads, N', 4D)
        x = x.transpose(1, 2).reshape(B, Nq, self.heads * self.v_dim)  # (B, N', heads*4D)
        return self.proj(x)


def patch_embed(dim):
    """Four 3x3 stride-2 Conv2d_BN (C/8, C/4, C/2, C) with Hardswish between: stride 16."""
    chans = [3, dim // 8, dim // 4, dim // 2, dim]
    layers = []
    for i in range(4):
        layers.append(Conv2d_BN(chans[i], chans[i + 1], 3, 2, 1))
        if i < 3:
            layers.append(nn.Hardswish())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- the network
class LeViT(nn.Module):
    """LeViT over one or more images given as token grids (stride-16 side lengths).

    grids=[(14, 14)] is the ImageNet classifier; grids=[(16, 16), (8, 8)] the HiT
    backbone (search, template). `layout` picks the position encoding (attention_bias.py).
    With num_classes > 0 the class and distillation heads are added; eval logits are
    their mean, training returns both.
    """

    def __init__(self, spec, grids=((14, 14),), layout="diagonal", num_classes=0):
        super().__init__()
        self.spec, self.grids, self.layout = spec, [tuple(g) for g in grids], layout
        C, D = spec.embed_dim, spec.key_dim
        relative = layout != "absolute"
        mha_idx, sa_idx = attention_bias.stage_indices(self.grids, layout) if relative else (None, None)
        self.patch_embed = patch_embed(C[0])
        if not relative:  # Table 6 ablation: learned absolute position, no attention bias
            n_tokens = sum(h * w for h, w in self.grids)
            self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, C[0]))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        blocks, self.stage_ends, grids_s = [], [], self.grids
        for s in range(3):
            idx, n = mha_idx[s] if relative else (None, 0)
            for _ in range(spec.depth[s]):
                blocks.append(Residual(Attention(C[s], D, spec.num_heads[s], idx, n), spec.drop_path))
                blocks.append(mlp(C[s], spec.drop_path))
            self.stage_ends.append(len(blocks))  # stage output = output of the block before
            if s < 2:
                idx, n = sa_idx[s] if relative else (None, 0)
                blocks.append(ShrinkAttention(C[s], C[s + 1], D, grids_s, idx, n))
                blocks.append(mlp(C[s + 1], spec.drop_path))
                grids_s = [attention_bias.subsample_grid(g) for g in grids_s]
        self.blocks = nn.ModuleList(blocks)
        if num_classes > 0:
            self.head = BN_Linear(C[2], num_classes)
            self.head_dist = BN_Linear(C[2], num_classes)

    def check_images(self, images):
        """Each image must be (B, 3, 16h, 16w) for its grid (h, w), in the grids' order, and
        all of one batch: the token sequence would otherwise still fit the attention biases
        (a swapped template and search make as many tokens) or fail deep inside a block."""
        if len(images) != len(self.grids):
            raise ValueError(f"expected {len(self.grids)} images for grids {self.grids}, got {len(images)}")
        want = [(3, 16 * h, 16 * w) for h, w in self.grids]  # (C, H, W) per image
        batch = images[0].shape[0]
        if any(im.dim() != 4 or tuple(im.shape[1:]) != w or im.shape[0] != batch for im, w in zip(images, want)):
            raise ValueError(f"images must be (B, C, H, W) with one B and (C, H, W) = {want} in that "
                             f"order; got {[tuple(im.shape) for im in images]}")

    def tokens(self, images):
        """Patch-embed every image separately and concatenate: (B, sum(h*w), C1)."""
        self.check_images(images)
        parts = [self.patch_embed(im).flatten(2).transpose(1, 2) for im in images]  # (B, hw, C)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if hasattr(self, "pos_embed"):
            x = x + self.pos_embed
        return x

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

    def fuse(self):
        """Fold every BatchNorm (eval-mode inference only); returns self."""
        return fuse_bn(self)


def build_levit(arch, num_classes=1000):
    """The LeViT ImageNet classifier for 224x224 input (`arch` in SPECS)."""
    if arch not in SPECS:
        raise ValueError(f"unknown LeViT arch {arch!r}; expected one of {sorted(SPECS)}")
    return LeViT(SPECS[arch], grids=[(14, 14)], num_classes=num_classes)


# ----------------------------------------------------------------------------- weights
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


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
    header = json.loads(raw[8:8 + n])
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        if meta["dtype"] not in SAFETENSORS_DTYPES or end > len(data):
            raise ValueError(f"{path}: bad entry {name!r}: {meta}")
        dtype = SAFETENSORS_DTYPES[meta["dtype"]]
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype) if end > begin \
            else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(meta["shape"])
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
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return dict(obj)


def _block_numbers(spec):
    """Release block index of each pytorch-image-models (stage, block) and downsample."""
    blocks, down, n = {}, {}, 0
    for s in range(3):
        if s > 0:
            down[s] = n  # shrink attention; its residual MLP is n + 1
            n += 2
        for j in range(spec.depth[s]):
            blocks[(s, j)] = n  # attention; its MLP is n + 1
            n += 2
    return blocks, down


# pytorch-image-models name -> release name. {blk}/{blk1}/{dn}/{dn1} are block numbers.
TIMM_RENAMES = [
    (r"stem\.conv(\d)\.linear\.(.*)", lambda m, b: f"patch_embed.{2 * (int(m[1]) - 1)}.c.{m[2]}"),
    (r"stem\.conv(\d)\.bn\.(.*)", lambda m, b: f"patch_embed.{2 * (int(m[1]) - 1)}.bn.{m[2]}"),
    (r"stages\.(\d)\.blocks\.(\d+)\.attn\.attention_bias(es|_idxs)",
     lambda m, b: f"blocks.{b['blk']}.m.attention_bias{m[3]}"),
    (r"stages\.(\d)\.blocks\.(\d+)\.attn\.qkv\.(linear|bn)\.(.*)",
     lambda m, b: f"blocks.{b['blk']}.m.qkv.{_c(m[3])}.{m[4]}"),
    (r"stages\.(\d)\.blocks\.(\d+)\.attn\.proj\.ln\.(linear|bn)\.(.*)",
     lambda m, b: f"blocks.{b['blk']}.m.proj.1.{_c(m[3])}.{m[4]}"),
    (r"stages\.(\d)\.blocks\.(\d+)\.mlp\.ln(\d)\.(linear|bn)\.(.*)",
     lambda m, b: f"blocks.{b['blk'] + 1}.m.{2 * (int(m[3]) - 1)}.{_c(m[4])}.{m[5]}"),
    (r"stages\.(\d)\.downsample\.attn_downsample\.attention_bias(es|_idxs)",
     lambda m, b: f"blocks.{b['dn']}.attention_bias{m[2]}"),
    (r"stages\.(\d)\.downsample\.attn_downsample\.kv\.(linear|bn)\.(.*)",
     lambda m, b: f"blocks.{b['dn']}.kv.{_c(m[2])}.{m[3]}"),
    (r"stages\.(\d)\.downsample\.attn_downsample\.q\.ln\.(linear|bn)\.(.*)",
     lambda m, b: f"blocks.{b['dn']}.q.1.{_c(m[2])}.{m[3]}"),
    (r"stages\.(\d)\.downsample\.attn_downsample\.proj\.ln\.(linear|bn)\.(.*)",
     lambda m, b: f"blocks.{b['dn']}.proj.1.{_c(m[2])}.{m[3]}"),
    (r"stages\.(\d)\.downsample\.mlp\.ln(\d)\.(linear|bn)\.(.*)",
     lambda m, b: f"blocks.{b['dn'] + 1}.m.{2 * (int(m[2]) - 1)}.{_c(m[3])}.{m[4]}"),
    (r"(head|head_dist)\.linear\.(.*)", lambda m, b: f"{m[1]}.l.{m[2]}"),
    (r"(head|head_dist)\.bn\.(.*)", lambda m, b: f"{m[1]}.bn.{m[2]}"),
]


def _c(kind):
    return "c" if kind == "linear" else "bn"


def timm_to_release(sd, spec):
    """Rename a pytorch-image-models LeViT state dict to the release layout.

    Every source key must match exactly one rule and every produced name must be new."""
    blocks, down = _block_numbers(spec)
    out, unmatched = {}, []
    for key, value in sd.items():
        hits = [(rx, fn) for rx, fn in TIMM_RENAMES if re.fullmatch(rx, key)]
        if len(hits) != 1:
            unmatched.append(key)
            continue
        m = re.fullmatch(hits[0][0], key)
        s = int(m[1]) if key.startswith("stages.") else 0
        nums = {"dn": down.get(s, -1)}
        if ".blocks." in key:
            if (s, int(m[2])) not in blocks:
                unmatched.append(key)
                continue
            nums["blk"] = blocks[(s, int(m[2]))]
        name = hits[0][1](m, nums)
        if name in out:
            raise ValueError(f"two source keys map to {name!r}")
        out[name] = value
    if unmatched:
        raise ValueError(f"pytorch-image-models keys with no (or several) rename rules: {unmatched}")
    return out


def load_imagenet_weights(model, path):
    """Load LeViT ImageNet weights (release or pytorch-image-models layout) into `model`:
    the classifier of the same arch, or the LeViT body of a HiT backbone.

    For a multi-image (HiT) model the heads and the bias tables are dropped, as the
    released HiT does (its tables start at zero). Bias index buffers are derived, not
    learned: when the file carries them they must equal this model's. Every other source
    key must fill exactly one model key of the same shape, and every model key must be
    filled; otherwise a ValueError lists the offending keys.
    """
    sd = read_state_dict(path)
    if any(k.startswith("stem.") for k in sd):
        sd = timm_to_release(sd, model.spec)
    target = model.state_dict()
    multi = len(model.grids) > 1

    def dropped(k):  # the "absolute" layout's position embedding is not in any LeViT file
        return (multi and ("attention_bias" in k or k.startswith("head"))) or k == "pos_embed"

    src_idx = {k: v for k, v in sd.items() if k.endswith("attention_bias_idxs")}
    src = {k: v for k, v in sd.items() if not dropped(k) and k not in src_idx}
    tgt = {k: v for k, v in target.items() if not dropped(k) and not k.endswith("attention_bias_idxs")}
    missing = sorted(set(tgt) - set(src))
    unexpected = sorted(set(src) - set(tgt))
    shapes = sorted(f"{k}: file {tuple(src[k].shape)} vs model {tuple(tgt[k].shape)}"
                    for k in set(src) & set(tgt) if src[k].shape != tgt[k].shape)
    wrong_idx = sorted(k for k, v in src_idx.items()
                       if not dropped(k) and (k not in target or not torch.equal(v, target[k])))
    if missing or unexpected or shapes or wrong_idx:
        raise ValueError(f"{path}: weights do not fit this LeViT ({model.spec}):\n"
                         f"  missing from file: {missing}\n  not in model: {unexpected}\n"
                         f"  shape mismatch: {shapes}\n  bias index differs: {wrong_idx}")
    with torch.no_grad():
        for k, v in src.items():
            target[k].copy_(v)
    return model


if __name__ == "__main__":
    for arch in SPECS:
        m = build_levit(arch).eval()
        n = sum(p.numel() for p in m.parameters())
        with torch.no_grad():
            y = m(torch.randn(1, 3, 224, 224))
        print(f"{arch:11s} params {n:,}  logits {tuple(y.shape)}")
