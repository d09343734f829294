"""bench.py: timing, MAC counting, every mode against eager, device paths, the CLI.

Fast by design (HiT-Tiny, a handful of calls): these check that the measurement is
right, not how fast anything is.
"""
import copy
import json
import os
import subprocess
import sys
import time
import types
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import bench
import fast
import hit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One thread: on a shared 2-core machine two threads stall at every parallel region
# whenever another process holds a core (HiT-Tiny: 26 ms -> 1.6 s per forward).
THREADS = "1"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(int(THREADS))
    yield
    torch.set_num_threads(before)
CUDA = torch.cuda.is_available()
# Largest box deviation from eager (search-crop units) of each reduced-precision CPU mode
# on bench.randomize's HiT-Tiny, over its seeds 0, 1, 2 (inputs seed 1, batch 2), measured
# on a 2-core Sapphire Rapids with AMX: int8 0.249, bf16 0.046, fast 0.198. These random
# networks are chaotic on purpose (an output can jump a 16-pixel cell on a rounding
# change), so the bound is 2x the largest measured value, not a precision claim; the
# real cost of each mode is AUC with trained weights (SPEED.md).
# On CUDA, fp16 and bf16 take the CPU bf16 bound (fp16 has 3 more mantissa bits than
# bf16); no GPU was lent to measure them when this was set.
REDUCED_TOL = {"int8": 0.5, "bf16": 0.1, "fast": 0.4, "fp16": 0.1}


# ----------------------------------------------------------------------------- timing
def test_time_fn_times_a_sleep():
    calls = []
    times = bench.time_fn(lambda: time.sleep(0.002), warmup=2, iters=5,
                          sync=lambda: calls.append(1))
    assert len(times) == 5
    assert all(2.0 <= t <= 50.0 for t in times), times
    assert len(calls) == 2 * 5  # before starting and before stopping every timed call


def test_time_fn_counts_warmup_apart():
    n = []
    times = bench.time_fn(lambda: n.append(1), warmup=3, iters=4)
    assert len(n) == 7 and len(times) == 4 and all(t >= 0 for t in times)


def test_interleaved_timing_gives_every_mode_all_its_calls_in_rounds():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = bench.time_interleaved(fns, warmup=1, iters=25, chunk=10)
    assert {k: len(v) for k, v in times.items()} == {"a": 25, "b": 25, "c": 25}
    timed = order[3:]  # after one warm-up call each
    assert timed[:10] == ["a"] * 10 and timed[10:20] == ["b"] * 10  # round 1: a, b, c
    assert timed[30:40] == ["b"] * 10  # round 2 starts with the next mode


def test_summarize():
    s = bench.summarize([5.0, 1.0, 2.0, 3.0, 4.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["p90_ms"] == 5.0
    assert s["fps"] == pytest.approx(1000 / 3)


# ----------------------------------------------------------------------------- MAC counting
def macs(module, *inputs):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / 2


def test_mac_count_equals_closed_form_for_small_layers():
    assert macs(nn.Linear(64, 32), torch.randn(5, 64)) == 5 * 64 * 32
    assert macs(nn.Conv2d(3, 8, 3, padding=1), torch.randn(1, 3, 10, 10)) == 8 * 3 * 9 * 100
    q, k = torch.randn(2, 7, 16), torch.randn(2, 16, 9)  # attention-style batched matmul
    assert macs(lambda a, b: torch.bmm(a, b), q, k) == 2 * 7 * 16 * 9


def test_hit_tiny_macs_match_the_notes():
    model = hit.build_hit("tiny").eval()
    assert hit.count_macs(model) == pytest.approx(1.016e9, rel=0.01)


# ----------------------------------------------------------------------------- modes vs eager
@pytest.fixture(scope="module")
def tiny():
    """Random HiT-Tiny with trained-like statistics (bench.randomize) and two inputs."""
    model = bench.make_model("tiny", seed=0)
    z, x = bench.make_inputs(model.cfg, 2, "cpu", seed=1)
    return model, z, x, bench.outputs(copy.deepcopy(model), z, x)


def test_float32_rounding_is_far_below_the_tolerance(tiny):
    """The exact tolerance is meaningful here: eager float32 sits well within it of a
    float64 run of the same network."""
    model, z, x, ref = tiny
    assert max(bench.deviation(ref, bench.reference64(model, z, x))) < bench.EXACT_TOL / 2


def test_random_model_makes_errors_visible(tiny):
    """The premise of the agreement tests: with these weights a 1 % change of one
    attention-bias table moves the outputs by more than the exact tolerance, and the
    score maps are neither flat nor one-hot."""
    model, z, x, ref = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.backbone.body.blocks[0].m.attention_biases.mul_(0.99)
    assert max(bench.deviation(bench.outputs(broken, z, x), ref)) > bench.EXACT_TOL
    assert ((ref["score"] > 0.02) & (ref["score"] < 0.99)).all(), ref["score"]
    assert (ref["pred_boxes"][0] - ref["pred_boxes"][1]).abs().max() > 0.01  # input matters


@pytest.mark.parametrize("mode", ["released", "eager", "fused", "int8", "fast", "bf16", "compile"])
def test_every_cpu_mode_agrees_with_eager(tiny, mode, monkeypatch):
    monkeypatch.setattr(fast, "openvino_available", lambda: False)  # fast: Inductor (OpenVINO: test_onnx.py)
    if mode == "bf16" and not fast.cpu_has_bf16():
        assert bench.skip_reason(mode, "cpu") is not None
        pytest.skip("this CPU has no native bfloat16")
    model, z, x, ref = tiny
    assert bench.skip_reason(mode, "cpu") is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch's deprecation notes for dynamic int8, and ours
        fn = bench.build_mode(model, mode, "cpu", batch=len(z))  # compiled for this batch
        box_dev, score_dev = bench.deviation(bench.outputs(fn, z, x), ref)
    fell_back = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    if mode == "fast" and fell_back:
        # Allowed, and announced: Inductor failed here (seen on a 16-core Xeon with torch
        # 2.11); the eager int8 path must be what came back.
        assert isinstance(fn.head.towers[0], fast.Int8Conv2d), fell_back
        print(f"fast fell back to eager int8: {fell_back[0]}")
    elif mode in ("compile", "fast") and (mode == "compile" or fast.cpu_has_bf16()):
        from torch._inductor import config as inductor_config
        assert isinstance(fn, fast.Compiled)
        assert fn.dtype == (torch.bfloat16 if mode == "fast" else None)
        assert fn.options["freezing"] and fn.options.get("max_autotune", False) == (mode == "fast")
        assert not inductor_config.freezing and not inductor_config.max_autotune  # set per call only
        from torch._dynamo.utils import counters
        graphs = counters["stats"]["unique_graphs"]
        with torch.inference_mode():
            z_inf, x_inf = z.clone(), x.clone()
        fn(z, x), fn(z_inf, x_inf)  # normal and inference tensors: the one graph serves both
        with torch.no_grad():
            fn(z, x)
        assert counters["stats"]["unique_graphs"] == graphs
    if bench.is_exact(mode):
        assert box_dev <= bench.EXACT_TOL and score_dev <= bench.EXACT_TOL, (box_dev, score_dev)
    else:
        print(f"{mode} deviation from eager: boxes {box_dev:.3g}, score {score_dev:.3g}")
        out = bench.outputs(fn, z, x)
        assert torch.isfinite(out["pred_boxes"]).all() and box_dev < REDUCED_TOL[mode]
        assert ((out["score"] > 0) & (out["score"] <= 1)).all()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())  # every mode worked on its own copy


@pytest.mark.parametrize("post,shift,levels", [("relu", 0.0, 255), ("none", 0.0, 255),
                                               ("hardswish", 2.0, 255), ("relu", 0.0, 127)])
def test_int8_conv_close_to_float_conv(post, shift, levels):
    """Per-call input range (signed, all-positive after a shift), per-channel weights,
    zero padding exact: within ~2 % of the float conv's output range."""
    torch.manual_seed(5)
    conv = nn.Conv2d(48, 64, 3, padding=1, groups=2)
    x = (torch.randn(1, 48, 16, 16) + shift).contiguous(memory_format=torch.channels_last)
    act = {"relu": torch.relu, "none": lambda t: t, "hardswish": nn.functional.hardswish}[post]
    with torch.inference_mode():
        ref = act(conv(x))
        q = fast.Int8Conv2d(conv, post, levels)  # 127: the 7-bit input of pre-VNNI CPUs
        got = q(x)
        assert torch.equal(copy.deepcopy(q)(x), got)  # the opaque packed weight is remade
    assert got.shape == ref.shape == (1, 64, 16, 16) and got.dtype == torch.float32
    err = (got - ref).abs().max() / ref.abs().max()
    # Measured (Sapphire Rapids): 0.0059-0.0102 with 8-bit inputs, 0.0175 with 7-bit; 2x.
    assert err < (0.02 if levels == 255 else 0.035), err
    assert err > 0  # it really is int8


def test_int8_fast_path_layers(monkeypatch):
    model = fast.FastHiT(hit.build_hit("tiny").eval())
    for bf16 in (True, False):  # bf16 is emulated (slow but correct) where it is not native
        monkeypatch.setattr(fast, "cpu_has_bf16", lambda cpuinfo=None, v=bf16: v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q8 = fast.int8_cpu(copy.deepcopy(model))
        assert not any(type(m) is nn.Linear for m in q8.backbone.modules())  # all int8
        assert all(isinstance(m, (fast.Int8Conv2d, nn.ReLU)) for m in q8.head.towers)
        assert isinstance(q8.backbone.body.patch_embed, fast.InBF16) == bf16
        with torch.inference_mode():
            out = q8(torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256))
        assert out["pred_boxes"].shape == (1, 4) and out["pred_boxes"].dtype == torch.float32
    with pytest.raises(ValueError, match="prepared for mode fused"):
        fast.quantize_int8(fast.prepare(copy.deepcopy(model), "fused", "cpu"))


def test_fast_mode_picks_compiled_bf16_or_int8(monkeypatch):
    """Without OpenVINO, fast = Inductor-compiled bf16 autocast where the CPU has native
    bf16; the eager int8 path without it, or (with a warning naming the reason) where
    compiling fails."""
    model = hit.build_hit("tiny").eval()
    made = []

    class FakeCompiled:
        def __init__(self, m, dtype, batch=1, autotune=False):
            made.append((dtype, batch, autotune))
            if len(made) > 1:
                raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fast, "Compiled", FakeCompiled)
    monkeypatch.setattr(fast, "openvino_available", lambda: False)
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert isinstance(fast.prepare(copy.deepcopy(model), "fast", "cpu", batch=3), FakeCompiled)
    assert made == [(torch.bfloat16, 3, True)]
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        fast_model = fast.prepare(copy.deepcopy(model), "fast", "cpu")
    assert isinstance(fast_model.head.towers[0], fast.Int8Conv2d)
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda cpuinfo=None: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no compile attempted, nothing to warn
        fast_model = fast.prepare(copy.deepcopy(model), "fast", "cpu")
    assert len(made) == 2 and isinstance(fast_model.head.towers[0], fast.Int8Conv2d)
    assert fast.path_of(fast_model, "fast") == "eager int8 (this CPU has no native bfloat16)"
    assert fast.path_of(fast.prepare(copy.deepcopy(model), "int8", "cpu"), "int8") == "int8"


@pytest.mark.parametrize("mode", ["fused", "cuda_graph", "fp16", "bf16"])
def test_cuda_modes(tiny, mode):
    if not CUDA:
        runs_on_cpu = mode == "fused" or (mode == "bf16" and fast.cpu_has_bf16())
        assert (bench.skip_reason(mode, "cpu") is None) == runs_on_cpu
        pytest.skip("no CUDA device")
    model, z, x, ref = tiny
    fn = bench.build_mode(model, mode, "cuda", batch=2)
    with fast.no_tf32():  # as bench.main runs them; a CUDA graph keeps its capture's kernels anyway
        box_dev, score_dev = bench.deviation(bench.outputs(fn, z.cuda(), x.cuda()), ref)
    tol = bench.EXACT_TOL if bench.is_exact(mode) else REDUCED_TOL[mode]
    assert box_dev <= tol and score_dev <= tol, (box_dev, score_dev)


def test_no_tf32_sets_and_restores_the_flags():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with fast.no_tf32():
                assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
                raise RuntimeError("inside")
        assert torch.backends.cudnn.allow_tf32  # restored, even after an exception
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_modes_that_cannot_run_are_skipped_with_a_note(tiny):
    model = tiny[0]
    args = types.SimpleNamespace(modes=["cuda_graph", "fp16", "fused", "nonsense"], batch=1,
                                 seed=0, warmup=0, iters=2, checkpoint=None)
    notes = []
    records, skipped = bench.bench_variant(model, args, torch.device("cpu"), log=notes.append)
    assert [r["mode"] for r in records] == ["fused"]
    assert [s["mode"] for s in skipped] == ["cuda_graph", "fp16", "nonsense"]
    assert all(s["reason"] for s in skipped) and len(notes) == 3
    assert records[0]["speedup_vs_released"] is None  # no baseline in this run
    assert bench.skip_reason("int8", "cuda") and bench.skip_reason("int8", "cpu") is None


def test_table_flags_an_exact_mode_that_deviates():
    rec = dict(variant="tiny", mode="fused", exact=True, exact_ok=False, median_ms=1.0,
               p90_ms=1.0, min_ms=1.0, fps=1000.0, speedup_vs_released=1.0, max_abs_dev=1e-3,
               score_dev=0.0, params_unfused=1, params_fused=1, gmacs=1.0, peak_mem_mb=1.0)
    assert "NOT EXACT" in bench.format_table([rec])
    assert "NOT EXACT" not in bench.format_table([dict(rec, exact_ok=True)])
    assert "reduced" in bench.format_table([dict(rec, mode="int8", exact=False, exact_ok=None)])
    fell_back = dict(rec, mode="fast", exact=False, exact_ok=None, path="eager int8 (no bf16)")
    assert "[eager int8 (no bf16)]" in bench.format_table([fell_back])  # never silently
    assert "[" not in bench.format_table([dict(rec, exact_ok=True, path="fused")])


# ----------------------------------------------------------------------------- training step
def test_step_fn_fails_loudly_without_train_step(tiny, monkeypatch):
    """No silent stand-in: when train.train_step cannot be imported, step_fn raises and
    names the import error instead of timing some other loss."""
    model = copy.deepcopy(tiny[0]).train()
    optimizer = torch.optim.AdamW(model.parameters())
    batch = bench.random_batch(model.cfg, 1, torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "train", None)  # makes `import train` raise ImportError
    with pytest.raises(RuntimeError, match=r"not importable \(ModuleNotFoundError: import of train"):
        bench.step_fn(model, optimizer, batch, torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "train", types.ModuleType("train"))  # no train_step
    with pytest.raises(RuntimeError, match="AttributeError"):
        bench.step_fn(model, optimizer, batch, torch.device("cpu"))
    monkeypatch.delitem(sys.modules, "train")  # the real train.py: its step is what is timed
    assert bench.step_fn(model, optimizer, batch, torch.device("cpu"))[1] == \
        "train.train_step (Eq. 4 loss)"


# ----------------------------------------------------------------------------- machine
def test_jetson_board_string_parsed_from_release_files(tmp_path):
    """Only the board name: jetson_board() reads the L4T release and device-tree model
    files (None where they are absent). Nothing is timed on a Jetson here."""
    assert bench.jetson_board(tmp_path / "nv_tegra_release") is None
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R32 (release), REVISION: 7.1, GCID: 27863751, BOARD: t186ref, "
                       "EABI: aarch64, DATE: Mon Jul 26 19:36:31 UTC 2021\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Xavier Developer Kit\x00")
    name = bench.jetson_board(release, model)
    assert name == "NVIDIA Jetson AGX Xavier Developer Kit (L4T R32.7.1, board t186ref)"
    assert "L4T R32.7.1" in bench.jetson_board(release, tmp_path / "absent")


def test_cpu_bf16_flag_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not fast.cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert fast.cpu_has_bf16(info)
    assert not fast.cpu_has_bf16(tmp_path / "absent")  # not Linux: no claim


def test_cpu_name_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    assert bench.cpu_name(info) == "AMD EPYC 7B13"
    assert bench.cpu_name(tmp_path / "absent")  # falls back, never empty
    assert bench.device_name("cpu")


def test_default_modes_per_device():
    cpu = bench.default_modes("cpu")
    assert cpu[:6] == ["released", "released_ort", "released_ov_fp32", "released_ov", "released_ort_int8",
                       "released_ov_int8"]
    assert cpu[6:14] == ["eager", "fused", "compile", "onnxruntime", "openvino_fp32", "int8", "fast", "openvino"]
    assert ("bf16" in cpu) == fast.cpu_has_bf16() and "fp16" not in cpu
    assert all(m in bench.ALL_MODES for m in cpu)
    cuda = bench.default_modes("cuda")
    assert "cuda_graph" in cuda and "int8" not in cuda and "compile" not in cuda
    assert "released_ort" in cuda and "openvino" not in cuda  # OpenVINO runs on the CPU here


# ----------------------------------------------------------------------------- command line
def test_help_exits_zero():
    r = subprocess.run([sys.executable, "bench.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--device" in r.stdout


def test_cli_runs_end_to_end(tmp_path):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "bench.py", "--variant", "tiny", "--iters", "3",
                        "--warmup", "1", "--modes", "released,fused", "--json", str(out),
                        "--track-frames", "5", "--train-batch", "2", "--train-steps", "1",
                        "--threads", THREADS],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "released" in r.stdout and "tracking tiny" in r.stdout and "training tiny" in r.stdout
    res = json.loads(out.read_text())
    assert set(res) >= {"records", "tracking", "training", "machine"}
    assert [rec["mode"] for rec in res["records"]] == ["released", "fused"]
    for rec in res["records"]:
        assert set(rec) >= {"variant", "device", "device_name", "torch", "threads", "batch",
                            "mode", "exact", "params_unfused", "params_fused", "gmacs",
                            "median_ms", "p90_ms", "min_ms", "fps", "speedup_vs_released",
                            "max_abs_dev", "score_dev", "dev_vs_fp64", "eager_fp32_err",
                            "peak_mem_mb", "peak_mem_kind"}
        assert rec["median_ms"] > 0 and rec["exact"] and rec["exact_ok"] is True  # within EXACT_TOL of eager
        assert rec["gmacs"] == pytest.approx(1.016, rel=0.01)
    assert res["records"][0]["speedup_vs_released"] == 1.0
    track, train = res["tracking"][0], res["training"][0]
    assert track["mode"] == "fused" and track["frames"] == 5 and track["e2e_fps"] > 0
    assert track["model_fps"] > 0 and track["network_ms"] > 0
    assert train["batch"] == 2 and train["samples_per_s"] > 0 and train["precision"] == "float32"
    amp = bench.amp_dtype_for(torch.device("cpu"))  # --amp's bf16 step where it is native
    assert [t["precision"] for t in res["training"]] == ["float32"] + (["amp bfloat16"] if amp else [])
    assert res["machine"]["device"] == "cpu" and res["machine"]["threads"] == int(THREADS)
