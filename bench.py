"""bench.py: measure HiT honestly (paper Table 1, Table 2 speed columns).

    python bench.py --device cpu --variant all          # model-only table, this machine
    python bench.py --device cuda --variant base --json out.json
    python bench.py --device cuda                        # on a Jetson too (reads /etc/nv_tegra_release)

Method (HIT_NOTES "Speed as the paper measures it", done right): random inputs of the real
shapes (template 128, search 256), `torch.inference_mode`, a fixed thread count, warm-up
runs, then timed runs each bracketed by `torch.cuda.synchronize()` on CUDA (the released
script does not synchronise, which flatters GPU numbers). Modes are timed interleaved,
round-robin, so machine noise hits them alike; we report median and p90.

Modes (see hit.prepare): `released` re-runs the released implementation's op sequence on
the same weights (the baseline for every speed-up claim), `eager` (unfused), `fused`
(the default), `compile`, `cuda_graph`; reduced precision `fp16`, `bf16` (GPU) and `int8`
(CPU) are reported with their output deviation and never presented as exact.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import hit

EXACT_TOL = 1e-4  # max |pred_boxes - eager| for a mode to count as exact


# ----------------------------------------------------------------------------- the released op sequence
class Released(torch.nn.Module):
    """The released forward, op for op, on this project's modules and weights: backbone BN
    fused (as the released tracker does), attention as (q @ k^T) * scale + bias -> softmax
    -> @ v, the Bridge's ConvTranspose2d + BN, the head's Conv + BN + ReLU unfused, maps in
    NCHW. The baseline every speed-up is measured against, in the same process."""

    def __init__(self, model):
        super().__init__()
        self.m = model.fuse(head=False)

    def attention(self, blk, x):
        B, N, _ = x.shape
        if hasattr(blk, "qkv"):  # MHA
            q, k, v = blk.qkv(x).view(B, N, blk.heads, -1).split([blk.key_dim, blk.key_dim, blk.v_dim], dim=3)
            q = q.permute(0, 2, 1, 3)
        else:  # shrink attention
            k, v = blk.kv(x).view(B, N, blk.heads, -1).split([blk.key_dim, blk.v_dim], dim=3)
            q = blk.q(x)
            q = q.view(B, q.shape[1], blk.heads, blk.key_dim).permute(0, 2, 1, 3)
        k, v = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * blk.scale + blk.bias()
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, q.shape[2], -1)
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
        B = x.shape[0]
        maps = [f[:, :side * side].transpose(1, 2).reshape(B, -1, side, side)
                for f, side in zip(feats, (16, 8, 4))]  # (B, C, h, w) search parts
        g = feats[2].mean(1)
        br = self.m.bottleneck
        y = F.relu(br.layers[0](maps[2]) + maps[1])
        y = br.layers[1](y) + maps[0]
        e = br.proj1(y.flatten(2).transpose(1, 2))  # (B, 256, D)
        gp = br.proj2(g).unsqueeze(2)  # (B, D, 1)
        att = torch.matmul(e, gp)  # (B, 256, 1)
        opt = (e.unsqueeze(-1) * att.unsqueeze(-2)).permute(0, 3, 2, 1).contiguous()  # (B, 1, D, 256)
        box, score = self.m.box_head(opt.view(B, -1, 16, 16))
        return {"pred_boxes": hit.xyxy_to_cxcywh(box), "score": score}
