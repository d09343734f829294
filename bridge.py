"""The Bridge Module: fuse the three backbone stages into one 16x16 feature map.

Paper Sec. 3.3, Eq. 3, Fig. 2 (red box) and Table 5 (which stages to fuse).

Eq. 3 reads O = S_max + Up(S_mid + Up(S_min)). The released code and weights add two
details the equation omits: every upsampling is a ConvTranspose2d(k=2, s=2, with bias)
followed by BatchNorm2d, and a ReLU follows the first addition:

    x = ReLU(up1(S_min) + S_mid)        # 4x4xC3 -> 8x8xC2
    O = up2(x) + S_max                  # 8x8xC2 -> 16x16xC1, no ReLU

Table 5 ablations fuse any non-empty subset of {max, mid, min}: start at the deepest
stage kept, upsample step by step to 16x16 and add each kept stage at its resolution.
Then `proj1` maps every token of O to the head width (256) and `proj2` maps the global
vector G. Parameter names (`layers.0.0.weight`, `proj1`, `proj2`) follow the release
(there the module is called `bottleneck`).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

STAGES = ("max", "mid", "min")


def upsample(c_in, c_out):
    """ConvTranspose2d(k=2, s=2) + BatchNorm2d: doubles the map side."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, 2), nn.BatchNorm2d(c_out))


class Bridge(nn.Module):
    """Bridge Module on token tensors: inputs are the search tokens of each stage
    (B, h*w, C) row-major, output O (B, 256, C_max). `proj1` (tokens of O) and `proj2`
    (G) live here, as in the release, and are applied by hit.HiT. `stages`: a non-empty
    subset of STAGES (checked with the rest of the config, hit.HiTConfig)."""

    def __init__(self, dims, stages=STAGES, out_dim=256):
        super().__init__()
        c_max, c_mid, c_min = dims
        self.stages = stages
        # Identity keeps the released index of layers.1 when up1 is not needed (no params)
        self.layers = nn.ModuleList([
            upsample(c_min, c_mid) if "min" in stages else nn.Identity(),
            upsample(c_mid, c_max) if ("min" in stages or "mid" in stages) else nn.Identity(),
        ])
        self.proj1 = nn.Linear(c_max, out_dim)  # every token of O
        self.proj2 = nn.Linear(c_min, out_dim)  # the global vector G

    def up(self, i, x, side):
        """Upsampling layer i on tokens: (B, side*side, C) -> (B, 4*side*side, C')."""
        B, _, C = x.shape
        m = x.transpose(1, 2).reshape(B, C, side, side)  # (B, C, h, w)
        return self.layers[i](m).flatten(2).transpose(1, 2)  # (B, 4hw, C') row-major

    def forward(self, s_max, s_mid, s_min):
        side = math.isqrt(s_min.shape[1])  # 4 for a 256 search crop (4x4 tokens)
        x = None
        if "min" in self.stages:
            x = self.up(0, s_min, side)  # (B, 4*side^2, C_mid)
            x = F.relu(x + s_mid if "mid" in self.stages else x)  # released ReLU after first add
        elif "mid" in self.stages:
            x = s_mid
        if x is not None:
            x = self.up(1, x, 2 * side)  # (B, 16*side^2, C_max)
            x = x + s_max if "max" in self.stages else x
        else:
            x = s_max
        return x  # (B, 256, C_max): O of Eq. 3; proj1 / proj2 are applied by the caller


if __name__ == "__main__":
    br = Bridge((128, 256, 384)).eval()
    B = 2
    o = br(torch.randn(B, 256, 128), torch.randn(B, 64, 256), torch.randn(B, 16, 384))
    print("params", sum(p.numel() for p in br.parameters()), "O", tuple(o.shape))
