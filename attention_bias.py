"""Dual-image position encoding: token positions and attention-bias indices.

Paper Sec. 3.2 ("Dual-image Position Encoding"), Eq. 2, Fig. 4 and Table 6.

LeViT injects relative position into attention with a learned table B^h indexed by the
absolute offset between a query pixel and a key pixel (Eq. 2):

    Bias^h[p, q] = B^h(|p.r - q.r|, |p.c - q.c|)

HiT feeds two images (search first, then template) as one token sequence, so every token
needs a position on a common plane. The layouts of Table 6:

    diagonal    search (r, c); template (Rx + r, Rx + c)  -- the released default (Fig. 4b)
    separate    search (r, c); template (r, c)            -- each from its own origin (Fig. 4a)
    vertical    search (r, c); template (Rx + r, c)
    horizontal  search (r, c); template (r, Rx + c)
    absolute    no relative bias; a learned absolute embedding instead (see levit.py)

Rx is the search grid side at that stage (16, 8, 4 for a 256 search crop).

Table entries are numbered in the order offsets are first met when looping queries in
sequence order (outer) and keys in sequence order (inner): this is how the released code
builds them, and the order of the columns of every released `attention_biases` tensor.
"""
import numpy as np
import torch

LAYOUTS = ("diagonal", "separate", "vertical", "horizontal", "absolute")


def subsample_grid(grid):
    """Grid (h, w) after the 2x subsampling of shrink attention (x[::2, ::2])."""
    h, w = grid
    return ((h + 1) // 2, (w + 1) // 2)


def token_positions(grids, layout="diagonal"):
    """Integer (row, col) of every token, images in sequence order, each row-major.

    grids: [(h, w), ...]; the first is the search image (or the single LeViT image).
    Returns an int64 array (N, 2). `layout` is one of LAYOUTS (checked by hit.HiTConfig).
    """
    rows, cols = grids[0]  # Rx: the search grid's sides; the template is placed past them
    origins = {"diagonal": (rows, cols), "separate": (0, 0), "absolute": (0, 0),
               "vertical": (rows, 0), "horizontal": (0, cols)}[layout]
    out = []
    for i, (h, w) in enumerate(grids):
        r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        pos = np.stack([r.ravel(), c.ravel()], axis=1)  # (h*w, 2) row-major
        if i > 0:
            pos = pos + np.array(origins)
        out.append(pos)
    return np.concatenate(out).astype(np.int64)


def bias_index(query_pos, key_pos, stride=1):
    """Index of the learned bias for every (query, key) pair, and the table size.

    Offsets are (|stride * q.r - k.r|, |stride * q.c - k.c|): shrink attention queries
    live on the subsampled grid (stride 2), MHA queries on the key grid (stride 1).
    Closed form of the released double loop: the offsets are numbered by first
    appearance in row-major (query, key) order.
    Returns (idx LongTensor (Nq, Nk), num_entries).
    """
    q = np.asarray(query_pos)[:, None, :] * stride  # (Nq, 1, 2)
    k = np.asarray(key_pos)[None, :, :]  # (1, Nk, 2)
    off = np.abs(q - k)  # (Nq, Nk, 2)
    code = off[..., 0] * (off[..., 1].max() + 1) + off[..., 1]  # (Nq, Nk) one int per offset
    uniq, first, inverse = np.unique(code.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))  # first-seen numbering
    idx = rank[inverse].reshape(code.shape)  # (Nq, Nk)
    return torch.from_numpy(idx), len(uniq)


def stage_indices(grids, layout="diagonal", num_stages=3):
    """Bias indices for every attention of a LeViT with `num_stages` stages.

    Returns (mha, sa): mha[s] = (idx, entries) for the MHA blocks of stage s;
    sa[s] = (idx, entries) for the shrink attention entering stage s + 1.
    """
    mha, sa = [], []
    for s in range(num_stages):
        pos = token_positions(grids, layout)
        mha.append(bias_index(pos, pos))
        if s + 1 < num_stages:
            small = [subsample_grid(g) for g in grids]
            sa.append(bias_index(token_positions(small, layout), pos, stride=2))
            grids = small
    return mha, sa


if __name__ == "__main__":
    grids = [(16, 16), (8, 8)]  # search 256 / 16, template 128 / 16
    for layout in LAYOUTS[:4]:
        mha, sa = stage_indices(grids, layout)
        print(f"{layout:10s} MHA entries {[n for _, n in mha]} idx {[tuple(i.shape) for i, _ in mha]}"
              f"  SA entries {[n for _, n in sa]} idx {[tuple(i.shape) for i, _ in sa]}")
