"""A procedural tracking data set, written in GOT-10k layout. Skip on a first read.

It exists only because this project cannot download LaSOT, GOT-10k, COCO or TrackingNet
(paper Sec. 4.1): train.py trains on it by default and track.py can score on its val
split, so every command of the repository runs from a fresh clone. Nothing here is part
of HiT. Each sequence is a textured target moving over a cluttered, moving background
with look-alike distractors, occluders, lighting drift, noise, blur and JPEG artefacts,
so that tracking it is not trivial. train.py makes it once with `ensure`.

    python synth.py --out data_cache/synth_test --sequences 80 --frames 100 --seed 12345

The bytes written depend on (seed, sequence index) alone: the same seed gives the same
files for any --workers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm


# ----------------------------------------------------------------------------- textures


def _smooth_noise(rng, h: int, w: int, base: int = 3, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1], float32 (h, w): bicubic-upsampled random grids."""
    acc, amp, persistence = np.zeros((h, w), np.float32), 1.0, rng.uniform(0.35, 0.7)
    for octave in range(octaves):
        grid = rng.random((base * 2 ** octave + 1, base * 2 ** octave + 1)).astype(np.float32)
        acc += amp * np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC))
        amp *= persistence
    return (acc - acc.min()) / max(float(np.ptp(acc)), 1e-6)


def _palette_map(t: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] (any shape) through a piecewise-linear colour ramp (K, 3)."""
    pos = np.clip(t, 0, 1) * (len(palette) - 1)
    i0 = np.minimum(pos.astype(np.int64), len(palette) - 2)
    frac = (pos - i0)[..., None]
    return palette[i0] * (1 - frac) + palette[i0 + 1] * frac  # (..., 3) float


def _pattern(rng, h: int, w: int, kind: str, freq: float, angle: float) -> np.ndarray:
    """Texture field in [0, 1], (h, w): stripes, checker, rings or noise."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)  # (h, w) each
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * (u * np.cos(angle) + v * np.sin(angle)))
    if kind == "checker":
        ru, rv = u * np.cos(angle) - v * np.sin(angle), u * np.sin(angle) + v * np.cos(angle)
        return ((np.floor(ru * freq) + np.floor(rv * freq)) % 2).astype(np.float32)
    if kind == "rings":
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * np.hypot(u - 0.5, v - 0.5) + angle)
    return _smooth_noise(rng, h, w, base=max(2, int(freq / 2)), octaves=3)


def _background(rng, h: int, w: int) -> np.ndarray:
    """Cluttered per-sequence texture, float32 (h, w, 3) in [0, 255]."""
    palette = rng.uniform(0, 255, (rng.integers(3, 6), 3))
    kind = rng.choice(["noise", "stripes", "rings", "checker"], p=[0.55, 0.2, 0.1, 0.15])
    field = _pattern(rng, h, w, str(kind), rng.uniform(3, 25), rng.uniform(0, np.pi))
    field = 0.6 * field + 0.4 * _smooth_noise(rng, h, w)
    canvas = Image.fromarray(_palette_map(field, palette).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(10, 60)):  # clutter blobs of assorted sizes
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 0.12 * min(h, w))
        fill = tuple(int(c) for c in rng.uniform(0, 255, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([cx - r, cy - r * rng.uniform(0.4, 1.6), cx + r, cy + r], fill=fill)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    return np.asarray(canvas, np.float32)


# ----------------------------------------------------------------------------- objects


def _shape_mask(rng, size: int, shape: str, params: np.ndarray) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "ellipse":
        draw.ellipse([0, 0, size - 1, size - 1], fill=255)
    elif shape == "rect":
        draw.rounded_rectangle([0, 0, size - 1, size - 1], radius=int(params[0] * size / 4), fill=255)
    else:  # star-like polygon: fixed vertex count, per-vertex radius
        k = len(params)
        ang = 2 * np.pi * np.arange(k) / k
        pts = [(size / 2 + r * size / 2 * np.cos(a), size / 2 + r * size / 2 * np.sin(a)) for r, a in zip(params, ang)]
        draw.polygon(pts, fill=255)
    return mask


def _sprite(rng, look: dict, size: int = 96) -> np.ndarray:
    """Textured RGBA object (h, w, 4) uint8 cropped to its shape, with a dark rim."""
    field = _pattern(rng, size, size, look["pattern"], look["freq"], look["angle"])
    rgb = _palette_map(field, look["palette"])
    mask = _shape_mask(rng, size, look["shape"], look["params"])
    inner = np.asarray(mask.filter(ImageFilter.MinFilter(5))) > 0
    rgb[~inner] *= 0.45  # outline so the silhouette is visible on any background
    rgba = np.dstack([np.clip(rgb, 0, 255), np.asarray(mask)]).astype(np.uint8)  # (s,s,3)+(s,s) -> (s,s,4)
    ys, xs = np.nonzero(rgba[:, :, 3])
    return rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _random_look(rng) -> dict:
    shape = str(rng.choice(["ellipse", "rect", "polygon"]))
    params = rng.uniform(0.45, 1.0, rng.integers(5, 10)) if shape == "polygon" else rng.uniform(0, 1, 1)
    return {"shape": shape, "params": params, "palette": rng.uniform(0, 255, (rng.integers(2, 5), 3)),
            "pattern": str(rng.choice(["stripes", "checker", "rings", "noise"])),
            "freq": rng.uniform(2, 8), "angle": rng.uniform(0, np.pi)}


def _similar_look(rng, look: dict) -> dict:
    """A distractor of the same family: same shape/pattern kind, perturbed colours."""
    out = dict(look)
    out["palette"] = np.clip(look["palette"] + rng.normal(0, rng.uniform(8, 45), look["palette"].shape), 0, 255)
    out["freq"] = look["freq"] * rng.uniform(0.8, 1.25)
    out["angle"] = look["angle"] + rng.normal(0, 0.4)
    if look["shape"] == "polygon":
        out["params"] = np.clip(look["params"] + rng.normal(0, 0.08, look["params"].shape), 0.3, 1.0)
    return out


# ----------------------------------------------------------------------------- motion


def _camera_walk(rng, n: int, margin: int) -> np.ndarray:
    """Camera shake and drift: (n, 2) pixel offsets, a damped random walk within +-margin."""
    cam_vel, cam = np.zeros(2), np.zeros((n, 2))
    cam_speed = rng.choice([0.0, 0.5, 2.0], p=[0.3, 0.4, 0.3])
    for t in range(1, n):
        cam_vel = 0.85 * cam_vel + rng.normal(0, cam_speed, 2)
        cam[t] = np.clip(cam[t - 1] + cam_vel, -margin, margin)
    return cam


def _trajectory(rng, n: int, w: int, h: int, side: float, cam: np.ndarray) -> np.ndarray:
    """Damped random-walk motion with scale and aspect drift; (n, 4) centre x, y, width,
    height in frame pixels. Objects are carried by the camera (cam: (n, 2) offsets)."""
    pos = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
    speed = rng.uniform(0.3, 4.0) * side / 40
    vel = rng.normal(0, speed, 2)
    log_s, log_a = math.log(side), rng.normal(0, 0.35)
    ds = da = 0.0
    lo, hi = math.log(10), math.log(0.5 * min(w, h))
    out = np.empty((n, 4))
    for t in range(n):
        vel = 0.9 * vel + rng.normal(0, 0.35 * speed, 2)
        margin = np.array([w, h]) * 0.1
        vel += 0.05 * (np.maximum(margin - pos, 0) - np.maximum(pos - (np.array([w, h]) - margin), 0))
        pos = pos + vel - (cam[t] - cam[t - 1] if t else 0)
        ds, da = 0.9 * ds + rng.normal(0, 0.008), 0.9 * da + rng.normal(0, 0.008)
        log_s, log_a = float(np.clip(log_s + ds, lo, hi)), float(np.clip(log_a + da, -0.9, 0.9))
        size = math.exp(log_s)
        out[t] = pos[0], pos[1], size * math.exp(log_a / 2), size * math.exp(-log_a / 2)
    return out


def _rotation_track(rng, n: int) -> np.ndarray:
    """In-plane rotation (degrees) as a damped random walk; half the objects stay upright."""
    strength = rng.uniform(0, 1.5) if rng.random() < 0.5 else 0.0
    angle, rate, out = rng.normal(0, 10 * strength), 0.0, np.empty(n)
    for t in range(n):
        rate = 0.9 * rate + rng.normal(0, strength)
        angle = float(np.clip(angle + rate, -40, 40))
        out[t] = angle
    return out


def _occluder_tracks(rng, n: int, target: np.ndarray) -> list:
    """Occluders that sweep across the target's path: list of (n, 4) tracks (NaN = off)."""
    tracks = []
    for _ in range(rng.choice([0, 1, 2, 3], p=[0.2, 0.4, 0.3, 0.1])):
        tc, dur = int(rng.integers(int(0.1 * n), max(int(0.9 * n), int(0.1 * n) + 1))), int(rng.integers(8, 35))
        cx, cy, tw, th = target[min(tc, n - 1), :4]
        size = math.sqrt(tw * th) * rng.uniform(0.6, 2.4)
        direction = rng.normal(0, 1, 2)
        direction /= max(np.linalg.norm(direction), 1e-6)
        span = (size + math.sqrt(tw * th)) * rng.uniform(1.0, 2.0)
        normal = np.array([-direction[1], direction[0]]) * rng.normal(0, 0.3) * math.sqrt(tw * th)
        track = np.full((n, 4), np.nan)
        for t in range(max(0, tc - dur // 2), min(n, tc + dur // 2 + 1)):
            c = np.array([cx, cy]) + normal + direction * span * ((t - tc) / max(dur, 1))
            track[t] = c[0], c[1], size * rng.uniform(0.97, 1.03), size * 0.8
        tracks.append(track)
    return tracks


# ----------------------------------------------------------------------------- frames


def _place(frame, rgba, cx, cy, bw, bh, angle=0.0, alpha_out=None):
    """Alpha-composite a sprite resized to (bw, bh), rotated by `angle` degrees and
    centred at (cx, cy). Returns (x0, y0, w, h), the tight integer box of its opaque
    pixels (possibly partly outside the frame), and its total alpha mass in pixels."""
    spr = Image.fromarray(rgba).resize((max(2, int(round(bw))), max(2, int(round(bh)))), Image.BILINEAR)
    if angle:
        spr = spr.rotate(angle, Image.BILINEAR, expand=True)
    left, top, right, bottom = spr.getbbox() or (0, 0, 1, 1)
    x0 = int(round(cx - spr.width / 2)) + left
    y0 = int(round(cy - spr.height / 2)) + top
    spr = np.asarray(spr.crop((left, top, right, bottom)), np.float32)  # (h, w, 4)
    h, w = spr.shape[:2]
    fh, fw = frame.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, fw), min(y0 + h, fh)
    if xa < xb and ya < yb:
        part = spr[ya - y0:yb - y0, xa - x0:xb - x0]
        a = part[:, :, 3:] / 255.0
        frame[ya:yb, xa:xb] = frame[ya:yb, xa:xb] * (1 - a) + part[:, :, :3] * a
        if alpha_out is not None:
            alpha_out[ya:yb, xa:xb] = np.maximum(alpha_out[ya:yb, xa:xb], a[:, :, 0])
    return (x0, y0, w, h), float(spr[:, :, 3].sum()) / 255.0


def _motion_blur(frame: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Average of `length` copies shifted along a line (edge-replicated borders)."""
    pad = length
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    acc = np.zeros_like(frame)
    for i in range(length):
        dy, dx = int(round(i * math.sin(angle))), int(round(i * math.cos(angle)))
        acc += padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return acc / length


def _sensor(rng, n: int, w: int, h: int) -> dict:
    """Per-sequence camera response: gain drift, white-balance tint, sensor noise level and
    the chance of motion blur."""
    gain_log = np.cumsum(rng.normal(0, 0.02, n)) + rng.normal(0, 0.15)
    tint = rng.uniform(0.9, 1.1, 3)
    noise_sigma, blur_p = rng.uniform(0, 6), rng.uniform(0, 0.2)
    # One sensor-noise field per sequence, shifted per frame: fresh-looking noise at a
    # fraction of the cost of drawing h*w*3 normals every frame.
    noise = rng.standard_normal((h + 32, w + 32, 3), dtype=np.float32) * np.float32(noise_sigma)
    return {"rng": rng, "gain_log": gain_log, "tint": tint, "blur_p": blur_p, "noise": noise}


def _finish(frame, t, sensor, occluders, target_alpha, placed, mass):
    """Occluders over the target, then the sensor: (frame uint8, box clipped to the frame,
    absent). `placed` is the target's tight box (x0, y0, w, h), possibly outside the
    frame, and `mass` its alpha in pixels; it is absent when > 90 % is hidden or outside."""
    h, w = frame.shape[:2]
    cover = np.zeros((h, w), np.float32)
    for rgba, track in occluders:  # in front of the target
        if not np.isnan(track[t, 0]):
            _place(frame, rgba, *track[t], alpha_out=cover)
    seen = float((target_alpha * (1 - cover)).sum())
    absent = seen < 0.1 * max(mass, 1e-6)
    x0, y0, bw, bh = placed
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + bw, w), min(y0 + bh, h)
    box = (xa, ya, xb - xa, yb - ya) if xa < xb and ya < yb else (0, 0, 0, 0)
    rng = sensor["rng"]
    frame *= math.exp(float(np.clip(sensor["gain_log"][t], -0.6, 0.4))) * sensor["tint"]
    if rng.random() < sensor["blur_p"]:
        frame = _motion_blur(frame, int(rng.integers(3, 9)), rng.uniform(0, np.pi))
    nx, ny = rng.integers(0, 33, 2)
    frame += sensor["noise"][ny:ny + h, nx:nx + w]
    return np.clip(frame, 0, 255).astype(np.uint8), box, absent


def render_sequence(rng, n: int, w: int, h: int):
    """Yield (frame uint8 (h, w, 3), box x,y,w,h clipped to the frame, absent) per frame:
    the camera's view of the padded background, look-alikes behind the target, then
    occluders and the sensor (_finish)."""
    margin = 48
    bg = _background(rng, h + 2 * margin, w + 2 * margin)
    cam = _camera_walk(rng, n, margin)
    look = _random_look(rng)
    target_rgba = _sprite(rng, look)
    side = rng.uniform(18, 0.3 * min(w, h))
    target = np.column_stack([_trajectory(rng, n, w, h, side, cam), _rotation_track(rng, n)])  # (n, 5)
    distractors = [(_sprite(rng, _similar_look(rng, look)),
                    np.column_stack([_trajectory(rng, n, w, h, side * rng.uniform(0.7, 1.3), cam),
                                     _rotation_track(rng, n)]))
                   for _ in range(rng.integers(1, 4))]
    occluders = [(_sprite(rng, _random_look(rng)), track) for track in _occluder_tracks(rng, n, target)]
    sensor = _sensor(rng, n, w, h)
    for t in range(n):
        ox, oy = int(round(margin + cam[t, 0])), int(round(margin + cam[t, 1]))
        frame = bg[oy:oy + h, ox:ox + w].copy()
        for rgba, other in distractors:  # behind the target
            _place(frame, rgba, *other[t])
        target_alpha = np.zeros((h, w), np.float32)
        box = _place(frame, target_rgba, *target[t], alpha_out=target_alpha)
        yield _finish(frame, t, sensor, occluders, target_alpha, *box)


# ----------------------------------------------------------------------------- files
MARKER = "COMPLETE.json"  # written last: a folder without it is refused; an interrupted .partial is redone


def _write_sequence(task) -> None:
    """Sequence `index` of the set into `folder`; its bytes depend on (seed, index) alone."""
    folder, seed, index, frames, size = task
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, index])
    quality = int(rng.integers(75, 96))
    gt_lines, absent_lines = [], []
    for k, (frame, box, absent) in enumerate(render_sequence(rng, frames, *size), 1):
        Image.fromarray(frame).save(folder / f"{k:08d}.jpg", quality=quality)
        gt_lines.append(",".join(f"{v:.4f}" for v in box))
        absent_lines.append("1" if absent else "0")
    (folder / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")
    (folder / "absence.label").write_text("\n".join(absent_lines) + "\n")


def synth(out, sequences: int = 300, frames: int = 100, seed: int = 0, size=(320, 240),
          val_fraction: float = 0.1, progress: bool = True, workers: int = 1) -> None:
    """Write a procedural tracking data set in GOT-10k layout: out/train/<name>/00000001.jpg,
    groundtruth.txt (x,y,w,h, 4 decimals; clipped to the frame), absence.label (1 when more
    than 90 % of the target is hidden or outside), out/{train,val}/list.txt.

    Each sequence: a cluttered textured background with camera motion, a textured, outlined
    target with damped random-walk motion and scale/aspect drift, 1-3 look-alike
    distractors and occluders sweeping across the target; global gain drift, sensor noise,
    JPEG artefacts and occasional motion blur. Sequences depend on (seed, index) alone, so
    `workers` processes write the same bytes as one. list.txt is written last, so a split
    with a list.txt is complete.
    """
    out = Path(out)
    n_val = min(sequences - 1, max(1, round(sequences * val_fraction))) if val_fraction > 0 and sequences > 1 else 0
    splits = {"train": range(sequences - n_val), "val": range(sequences - n_val, sequences)}
    tasks = [(str(out / split / f"synth_{i:05d}"), seed, i, frames, tuple(size))
             for split, indices in splits.items() for i in indices]
    with tqdm(total=sequences, desc="synth", unit="seq", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(min(workers, sequences)) as pool:
                for _ in pool.map(_write_sequence, tasks, chunksize=1):
                    bar.update(1)
        else:
            for task in tasks:
                _write_sequence(task)
                bar.update(1)
    for split, indices in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / "list.txt").write_text("".join(f"synth_{i:05d}\n" for i in indices))


def ensure(folder, sequences: int, frames: int, seed: int, log=print) -> Path:
    """Generate the procedural set once into `folder` (train.py's default data). It is
    written to folder.partial and renamed when complete, with MARKER (its parameters)
    written last: an interrupted generation is redone. A complete set is never deleted:
    one made with other parameters is refused (it may be another run's data), and a folder
    without the marker is not ours."""
    folder, want = Path(folder), {"sequences": sequences, "frames": frames, "seed": seed}
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return folder
    if folder.exists() and not marker.is_file():
        raise ValueError(f"--synth-dir {folder} exists but was not made by train.py (no {MARKER}); "
                         f"remove it, pick another --synth-dir, or train on it with --data got10k:{folder}")
    if folder.exists():
        raise ValueError(f"--synth-dir {folder} was made with {json.loads(marker.read_text())}, not the {want} "
                         f"asked for: pass another --synth-dir for these --synth-* settings")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"generating the procedural set ({sequences} sequences x {frames} frames) in {folder}")
    synth(tmp, sequences, frames, seed, workers=os.cpu_count() or 1)  # same bytes for any count
    (tmp / MARKER).write_text(json.dumps(want))
    os.replace(tmp, folder)
    return folder


# ----------------------------------------------------------------------------- CLI
# The target's side is drawn from [18, 0.3 * the frame's shorter side] pixels, so a
# shorter side under 60 leaves no range to draw from.
MIN_SIDE = 60


def check_args(p, args) -> None:
    """argparse errors for values that would otherwise fail deep inside generation, or
    write a set mixed with an earlier one's files."""
    for flag, value in (("--sequences", args.sequences), ("--frames", args.frames), ("--workers", args.workers)):
        if value < 1:
            p.error(f"{flag} {value}: expected 1 or more")
    if min(args.size) < MIN_SIDE:
        p.error(f"--size {args.size[0]} {args.size[1]}: each side must be >= {MIN_SIDE} pixels")
    if not 0 <= args.val_fraction <= 1:
        p.error(f"--val-fraction {args.val_fraction}: expected a number in [0, 1]")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # stale sequences would mix with new ones
        p.error(f"--out {out} exists and is not an empty folder: pick another --out, or remove it first")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write the procedural GOT-10k-layout data set, the "
                                "stand-in for real tracking data sets (train.py's default).")
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--sequences", type=int, default=300, help="number of sequences (train + val)")
    p.add_argument("--frames", type=int, default=100, help="frames per sequence")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of sequences in val/, in [0, 1]; at least one sequence stays in train/ "
                        "(so 1 puts all but one in val/)")
    p.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"),
                   help=f"frame size, each side >= {MIN_SIDE}")
    p.add_argument("--workers", type=int, default=1, help="processes (same bytes for any number)")
    args = p.parse_args(argv)
    check_args(p, args)
    synth(args.out, args.sequences, args.frames, args.seed, tuple(args.size), args.val_fraction,
          workers=args.workers)


if __name__ == "__main__":
    main(sys.argv[1:])
