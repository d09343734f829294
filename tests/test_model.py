"""Model core: attention-bias layouts, LeViT, Bridge Module, HiT, fusing, checkpoints."""
import copy
import dataclasses
import functools
import itertools
import os
import pickle
import time

import pytest
import torch

import attention_bias
import bridge
import fast
import hit
import levit

GRIDS = [(16, 16), (8, 8)]  # search 256 / 16, template 128 / 16
torch.set_num_threads(2)


def loop_index(qpos, kpos, stride=1):
    """The released double loop: number offsets in order of first appearance."""
    table, idx = {}, []
    for p in qpos:
        row = []
        for q in kpos:
            off = (abs(stride * p[0] - q[0]), abs(stride * p[1] - q[1]))
            row.append(table.setdefault(off, len(table)))
        idx.append(row)
    return torch.tensor(idx), len(table)


# ----------------------------------------------------------------------------- attention bias
def test_positions_and_table_sizes_of_the_layouts():
    pos = attention_bias.token_positions(GRIDS, "diagonal")
    assert pos.shape == (320, 2)
    assert len({tuple(p) for p in pos}) == 320
    search, template = pos[:256], pos[256:]
    assert not set(search[:, 0]) & set(template[:, 0])  # no shared row
    assert not set(search[:, 1]) & set(template[:, 1])  # no shared column
    sep = attention_bias.token_positions(GRIDS, "separate")
    assert len({tuple(p) for p in sep}) == 256  # template overlaps the search's top-left
    mha, sa = attention_bias.stage_indices(GRIDS, "diagonal")
    assert [n for _, n in mha] == [560, 136, 32]
    assert [tuple(i.shape) for i, _ in mha] == [(320, 320), (80, 80), (20, 20)]
    assert [n for _, n in sa] == [558, 134]
    assert [tuple(i.shape) for i, _ in sa] == [(80, 320), (20, 80)]
    grids = [(2, 4), (2, 2)]  # search 2 rows x 4 columns: the template origin follows both sides
    want = {"diagonal": (2, 4), "vertical": (2, 0), "horizontal": (0, 4), "separate": (0, 0)}
    for layout, (r, c) in want.items():
        pos = attention_bias.token_positions(grids, layout)
        assert pos[8:].tolist() == [[r, c], [r, c + 1], [r + 1, c], [r + 1, c + 1]], layout


@pytest.mark.parametrize("layout", ["diagonal", "separate", "vertical", "horizontal"])
def test_closed_form_equals_loop_form(layout):
    mha, sa = attention_bias.stage_indices(GRIDS, layout)
    grids = GRIDS
    for s in range(3):  # MHA of stage s, then the shrink attention after it (on the subsampled queries)
        small = [attention_bias.subsample_grid(g) for g in grids]
        pos, qpos = (attention_bias.token_positions(g, layout).tolist() for g in (grids, small))
        for (idx, n), (ref, n_ref) in zip([mha[s]] + sa[s:s + 1], [loop_index(pos, pos), loop_index(qpos, pos, 2)]):
            assert n == n_ref and torch.equal(idx, ref)
        grids = small


# ----------------------------------------------------------------------------- shared models
def randomize_bn_and_biases(model):
    """Random BN statistics and bias tables so that fusing and indexing are visible."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def built():
    """built(variant): a copy of an eval-mode HiT with randomize_bn_and_biases applied, each
    variant built once for the module (building, Base above all, takes seconds)."""
    @functools.cache
    def build(variant):
        torch.manual_seed(0)
        return randomize_bn_and_biases(hit.build_hit(variant)).eval()
    return lambda variant: copy.deepcopy(build(variant))


def meta(name, build=hit.build_hit):
    """A model on the meta device (shapes, no data: built at once), for checks that never run it."""
    with torch.device("meta"):
        return build(name)


def small_crops(**change):
    """HiT-Tiny on 128 / 64 crops: the same modules at a quarter of the tokens (tests of structure)."""
    return dataclasses.replace(hit.VARIANTS["tiny"], search_size=128, template_size=64, **change)


# ----------------------------------------------------------------------------- shapes and counts
PARAMS = {"base": (42_220_250, 42_168_586), "small": (11_069_794, 11_046_258), "tiny": (9_628_530, 9_609_474)}
DIMS = {"base": (384, 512, 768), "small": (128, 256, 384), "tiny": (128, 256, 384)}  # C per stage (Table 1)


@pytest.mark.parametrize("variant", ["base", "small", "tiny"])
def test_shapes_parameter_counts_and_variant_inference(built, variant):
    model = built(variant)
    assert hit.count_params(model) == PARAMS[variant][0]
    assert hit.infer_config(model.state_dict()) == hit.VARIANTS[variant]  # how released files load
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256))
    c1, c2, c3 = DIMS[variant]
    assert [tuple(t.shape) for t in out["stage_features"]] == [(1, 320, c1), (1, 80, c2), (1, 21, c3)]
    assert tuple(out["bridge_tokens"].shape) == (257, 1, 256)
    assert tuple(out["pred_boxes"].shape) == (1, 4)
    assert tuple(out["score"].shape) == (1,)
    assert 0 < out["score"].item() <= 1
    model.fuse()
    assert hit.count_params(model) == PARAMS[variant][1]


def test_fuse_keeps_outputs_on_trained_like_statistics(built):
    model = built("tiny")
    z, x = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ref = model.forward_features(z, x)
        a = model.fuse().forward_features(z, x)  # the backbone's BNs folded, as the released tracker
        fused = fast.FastHiT(model)  # every BN, merged towers, folded proj1
        b = fused(z, x)
    # Measured on the Sapphire Rapids: boxes 3e-8, scores 0, bridge tokens 3.6e-7. The bounds leave about
    # 10x for other CPUs' summation orders and still catch a folding slip (BN without its eps: 6.5e-6).
    for out in (a, b):
        assert (out["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-6
        assert (out["score"] - ref["score"]).abs().max() < 1e-6
    assert (a["bridge_tokens"] - ref["bridge_tokens"]).abs().max() < 4e-6
    assert fused.folded and isinstance(fused.gate, fast.FoldedGate)  # proj1 folded into the head
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in fused.modules())


def test_proj1_folding_equals_plain_head_on_large_activations(built):
    """The folded head regroups sums; check it on inputs far from zero as well."""
    model = built("small")
    z, x = torch.randn(1, 3, 128, 128) * 3, torch.randn(1, 3, 256, 256) * 3
    with torch.no_grad():
        ref = model(z, x)
        fused = fast.FastHiT(model)
        out = fused(z, x)
    assert fused.folded
    # Measured 0 (the regrouped sums round alike here); 1e-6 allows another CPU's summation order.
    assert (out["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-6
    assert (out["score"] - ref["score"]).abs().max() < 1e-6
    assert not fast.FastHiT(meta("base")).folded  # C1 = 384 > 256: folding would add work


SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(bridge.STAGES, r)]


@pytest.mark.parametrize("layout, stages", list(zip(itertools.cycle(attention_bias.LAYOUTS), SUBSETS)))
def test_every_layout_and_bridge_subset_builds_runs_and_trains(layout, stages):
    """Table 6's layouts and Table 5's stage subsets, paired so that each appears."""
    torch.manual_seed(0)
    model = randomize_bn_and_biases(hit.HiT(small_crops(pos_layout=layout, bridge_stages=stages)))
    model.train()  # randomized: zero-initialised residual BNs would block gradients
    out = model(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 128, 128))
    assert tuple(out["pred_boxes"].shape) == (2, 4)
    (out["pred_boxes"].sum() + out["score"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_bad_inputs_variants_and_configs_raise_clearly(built):
    model = built("tiny")
    z, x = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 256, 256)
    for args in [(x, z), (z[:1], x), (z, torch.randn(2, 3, 320, 320)), (z[0], x)]:
        with pytest.raises(ValueError, match=r"expected search \(B, \*\(3, 256, 256\)\) and "
                                             r"template \(B, \*\(3, 128, 128\)\) with one B"):
            model(*args)  # swapped images would otherwise run: 256 + 64 tokens either way
    for call, msg in [(lambda: hit.build_hit("large"), "unknown HiT variant"),
                      (lambda: levit.build_levit("LeViT_999"), "unknown LeViT arch"),
                      (lambda: hit.build_hit("tiny", bridge_stages=()), "non-empty subset"),
                      (lambda: hit.build_hit("tiny", bridge_stages=("max", "huge")), "non-empty subset"),
                      (lambda: hit.build_hit("tiny", bridge_stages="max"), "string 'max'"),
                      (lambda: model.backbone.body.forward_stages([x, z[:1]]), "one B"),
                      (lambda: model.backbone.body(x), "no classifier")]:
        with pytest.raises(ValueError, match=msg):
            call()
    tiny = dataclasses.asdict(hit.VARIANTS["tiny"])
    for change, msg in [({"search_size": 288}, "multiple of 64"), ({"template_size": 100}, "multiple of 64"),
                        ({"stride": 8}, "stride must be 16"), ({"levit": "LeViT_1"}, "unknown LeViT arch"),
                        ({"pos_layout": "diag"}, r"unknown pos_layout 'diag'; expected one of \('diagonal'"),
                        ({"bridge_stages": ["max", "max"]}, "non-empty subset")]:
        with pytest.raises(ValueError, match=msg):
            hit.config_from_dict({**tiny, **change})  # as from a checkpoint
    assert hit.config_from_dict({**tiny, "bridge_stages": ["max", "min"]}).bridge_stages == ("max", "min")  # JSON


def test_drop_path_keeps_the_input_dtype():
    y = levit.Residual(torch.nn.Identity(), drop=0.5).train()(torch.ones(64, 3, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    kept = (y[:, 0, 0] != 1).sum().item()  # kept samples: 1 + 1 / (1 - 0.5) = 3, dropped: 1
    assert set(y[:, 0, 0].tolist()) == {1.0, 3.0} and 10 < kept < 54


def test_count_macs_follows_the_model_dtype():
    model = hit.HiT(small_crops())
    assert hit.count_macs(model.to(torch.bfloat16)) == hit.count_macs(model.float())


def test_fused_upsample_equals_transposed_conv():
    torch.manual_seed(0)
    br = bridge.Bridge((32, 48, 64)).eval()
    randomize_bn_and_biases(br)
    s = [torch.randn(2, 256, 32), torch.randn(2, 64, 48), torch.randn(2, 16, 64)]
    with torch.no_grad():
        ref = br(*s)
        fused = fast.FastBridge(br)
        out = fused(*s)
    assert isinstance(fused.layers[0], fast.FusedUpsample)
    assert out.shape == (2, 256, 32)
    assert torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize("post", ["none", "hardswish"])
def test_packed_linear_equals_linear_and_follows_weight_changes(post):
    torch.manual_seed(3)
    lin = torch.nn.Linear(96, 160)
    packed = fast.PackedLinear(lin, post)
    act = torch.nn.functional.hardswish if post == "hardswish" else (lambda t: t)
    for shape in [(1, 80, 96), (2, 7, 96)]:  # M differs from the packing call's
        x = torch.randn(shape) * 3
        with torch.inference_mode():
            got = packed(x)
        assert (packed._packed is not None) == fast.onednn_linear_available()  # oneDNN ran where it exists
        assert got.shape == (*shape[:-1], 160)
        assert (got - act(lin(x))).abs().max() < 5e-6  # measured 4.8e-7 (oneDNN's fused Hardswish); 10x
    with torch.no_grad():
        lin.weight.mul_(-2)  # a packed copy made before this must not be reused
    with torch.inference_mode():
        assert (packed(x) - act(lin(x))).abs().max() < 1e-4
    copied = copy.deepcopy(packed)  # the opaque packed weight is not copied
    with torch.inference_mode():
        assert (copied(x) - act(lin(x))).abs().max() < 1e-4
    x.requires_grad_(True)
    packed(x).sum().backward()  # with autograd on it is F.linear: gradients flow
    assert lin.weight.grad is not None and x.grad is not None


def test_mode_fused_packs_every_linear_and_keeps_the_faster_gemm(monkeypatch, built):
    """prepare(mode fused): every Linear a PackedLinear (an MLP's Hardswish fused into it),
    then the forward timed with every PackedLinear on oneDNN, then on MKL, and the faster
    kept for all of them; outputs agree either way."""
    order = []  # the timer first: round-robin, so that noise hits every callable alike
    fns = [lambda: order.append("a"), lambda: (order.append("b"), time.sleep(0.002))]
    t_a, t_b = fast.median_seconds(fns, warmup=1, reps=3)
    assert order == ["a", "b"] * 4 and 0 <= t_a < t_b and t_b >= 0.002
    model = built("tiny")
    z, x = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        ref = model(z, x)
    model = fast.FastHiT(model)
    n_linear, sd = sum(type(m) is torch.nn.Linear for m in model.modules()), model.state_dict()
    monkeypatch.setattr(fast, "_GEMM_CHOICE", {})  # this test's choices are not the process's
    monkeypatch.setattr(fast, "median_seconds", lambda fns: [1.0, 2.0])  # no real timing here
    fused = fast.prepare(model, "fused", "cpu")
    assert not any(type(m) is torch.nn.Linear for m in fused.modules())
    packed = [m for m in fused.modules() if isinstance(m, fast.PackedLinear)]
    assert len(packed) == n_linear and all(m.use_onednn for m in packed)  # one choice for all
    assert sum(m.post == "hardswish" for m in packed) == 2 + 3 + 4 + 2  # MLPs: 9 blocks + 2 shrinks
    assert fused.state_dict().keys() == sd.keys()  # same names: Identity keeps the index
    for t_onednn, t_mkl in ((1.0, 2.0), (2.0, 1.0)):
        calls = []

        def timed(fns, calls=calls, t=(t_onednn, t_mkl)):
            for fn in fns:
                fn()
                calls.append([m.use_onednn for m in packed])
            return list(t)

        monkeypatch.setattr(fast, "median_seconds", timed)
        assert fast.pick_gemm(fused, z, x) == (t_onednn < t_mkl)
        assert [set(c) for c in calls] == [{True}, {False}]  # each timed run is one kernel throughout
        assert all(m.use_onednn == (t_onednn < t_mkl) for m in packed)
        with torch.inference_mode():
            out = fused(z, x)
        assert (out["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-4
        assert (out["score"] - ref["score"]).abs().max() < 1e-4


def test_frozen_biases_equal_the_gathered_table(built):
    """FastHiT gathers each attention's bias once; it must equal Eq. 2's table lookup,
    and it is made inside inference_mode too (tensors without version counters)."""
    model = built("tiny")
    tables = [m.bias() for m in model.modules() if isinstance(m, levit.BiasTable)]
    with torch.inference_mode():
        fused = fast.FastHiT(model.double())
        out = fused(torch.randn(1, 3, 128, 128).double(), torch.randn(1, 3, 256, 256).double())
    frozen = [m.bias() for m in fused.modules() if isinstance(m, fast.FrozenBias)]
    assert len(frozen) == len(tables) == 2 + 3 + 4 + 2  # 9 MHA blocks + 2 shrink attentions
    assert all(torch.equal(f, t.double()) for f, t in zip(frozen, tables))
    assert out["pred_boxes"].shape == (1, 4)


# ----------------------------------------------------------------------------- released fixtures
def test_tiny_matches_released_fixture(fixtures_dir, built):
    model = hit.load_checkpoint(fixtures_dir / "HiT_Tiny_ep1500_random7.pth.tar")
    assert model.cfg.variant == "tiny" and not model.training
    exp = torch.load(fixtures_dir / "HiT_Tiny_random7_expected.pt")
    fresh = built("tiny").state_dict()  # our first-seen numbering = released
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items() if k.endswith("attention_bias_idxs"))
    for fuse in (False, True):  # as loaded, then backbone BNs folded as the released tracker
        if fuse:
            model.fuse()
        with torch.no_grad():
            out = model.forward_features(exp["template"], exp["search"])
        for got, want in zip(out["stage_features"], exp["stage_features"]):
            assert got.shape == want.shape
            assert (got - want).abs().max() < 1e-4
        assert (out["bridge_tokens"] - exp["bridge_tokens"]).abs().max() < 1e-4
        assert (out["pred_boxes"] - exp["pred_boxes"][:, 0]).abs().max() < 1e-4
        with torch.no_grad():
            assert (model(exp["template"], exp["search"])["pred_boxes"] - exp["pred_boxes"][:, 0]).abs().max() < 1e-4
    with torch.no_grad():  # every fast.py rewrite (mode fused)
        out = fast.FastHiT(model)(exp["template"], exp["search"])
    assert (out["pred_boxes"] - exp["pred_boxes"][:, 0]).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["LeViT_128S_random11.pth", "levit_128s_timm_random11.safetensors"])
def test_levit_logits_match_released_fixture(fixtures_dir, name):
    exp = torch.load(fixtures_dir / "LeViT_128S_random11_expected.pt")
    model = levit.build_levit(exp["arch"]).eval()
    levit.load_imagenet_weights(model, fixtures_dir / name)
    with torch.no_grad():
        assert tuple(exp["logits"].shape) == (2, 1000)
        assert (model(exp["image"]) - exp["logits"]).abs().max() < 1e-4
        with pytest.raises(ValueError, match=r"expected image \(B, \*\(3, 224, 224\)\) with one B"):
            model(exp["image"][:, :, :192])
        levit.fuse_bn(model)
        assert (model(exp["image"]) - exp["logits"]).abs().max() < 1e-4
        a, b = model.train()(exp["image"])  # training: class and distillation logits apart
        assert a.shape == b.shape == (2, 1000)


def test_levit_classifier_shapes_without_fixtures():
    model = levit.build_levit("LeViT_128S")
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)
        a, b = model.train()(torch.zeros(2, 3, 224, 224))  # training: class and distillation logits apart
    assert a.shape == b.shape == (2, 1000)


def test_levit_weights_feed_the_hit_backbone_and_misfits_are_named(tmp_path, fixtures_dir, built):
    model = built("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    levit.load_imagenet_weights(model.backbone.body, fixtures_dir / "levit_128s_timm_random11.safetensors")
    src = levit.read_state_dict(fixtures_dir / "LeViT_128S_random11.pth")
    after = model.state_dict()
    assert torch.equal(after["backbone.body.blocks.4.kv.c.weight"], src["blocks.4.kv.c.weight"])
    assert torch.equal(after["backbone.body.patch_embed.0.bn.running_var"], src["patch_embed.0.bn.running_var"])
    bias = "backbone.body.blocks.0.m.attention_biases"  # tables dropped: not the file's 14x14 ones
    assert torch.equal(after[bias], before[bias])
    assert not hit.HiT(small_crops()).backbone.body.blocks[0].m.attention_biases.any()  # new tables start at 0
    assert torch.equal(after["box_head.conv1_tl.0.weight"], before["box_head.conv1_tl.0.weight"])
    absolute = hit.HiT(small_crops(pos_layout="absolute"))  # Table 6's Abs: its embedding starts random
    pos = absolute.backbone.body.pos_embed.detach().clone()
    levit.load_imagenet_weights(absolute.backbone.body, fixtures_dir / "LeViT_128S_random11.pth")
    assert torch.equal(absolute.backbone.body.pos_embed, pos)
    assert torch.equal(absolute.state_dict()["backbone.body.blocks.4.kv.c.weight"], src["blocks.4.kv.c.weight"])
    with pytest.raises(ValueError, match="shape mismatch"):  # LeViT-128S does not fit HiT-Base
        levit.load_imagenet_weights(meta("base").backbone.body, fixtures_dir / "LeViT_128S_random11.pth")
    sd = levit.read_state_dict(fixtures_dir / "LeViT_128S_random11.pth")
    del sd["blocks.4.kv.c.weight"]
    sd["blocks.99.m.qkv.c.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        levit.load_imagenet_weights(meta("LeViT_128S", levit.build_levit), tmp_path / "bad.pth")
    assert "blocks.4.kv.c.weight" in str(err.value) and "blocks.99.m.qkv.c.weight" in str(err.value)
    timm = levit.read_safetensors(fixtures_dir / "levit_128s_timm_random11.safetensors")
    timm["stages.0.blocks.0.attn.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mystery"):
        levit.timm_to_release(timm, levit.SPECS["LeViT_128S"])


# ----------------------------------------------------------------------------- checkpoints
def test_released_and_project_checkpoints_load(tmp_path, built):
    """Released files name no variant: their shapes do (every variant: test_shapes_...).
    This project's carry their config, Table 5 / 6 choices and crop sizes too."""
    torch.save({"net": built("small").state_dict(), "epoch": 3}, tmp_path / "ck.pth.tar")
    assert hit.load_checkpoint(tmp_path / "ck.pth.tar").cfg.variant == "small"
    with pytest.raises(ValueError, match="not HiT-tiny"):
        hit.load_checkpoint(tmp_path / "ck.pth.tar", variant="tiny")
    model = hit.HiT(small_crops(pos_layout="vertical", bridge_stages=("max", "min")))
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.cfg)}, tmp_path / "own.pth")
    loaded = hit.load_checkpoint(tmp_path / "own.pth")
    assert loaded.cfg == model.cfg
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def evil(fn, arg):
    """An object that pickles as the call fn(arg): how a malicious checkpoint runs code."""
    return type("Evil", (), {"__reduce__": lambda self: (fn, (arg,))})()


@pytest.mark.parametrize("how", ["system", "eval"])
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, how):
    marker, cmd = tmp_path / "pwned", f"touch {tmp_path / 'pwned'}"
    payload = evil(os.system, cmd) if how == "system" else evil(eval, f"__import__('os').system({cmd!r})")
    torch.save({"net": {"x": torch.zeros(1)}, "settings": payload}, tmp_path / "evil.pth.tar")
    with pytest.raises(ValueError, match="refus"):
        hit.load_checkpoint(tmp_path / "evil.pth.tar")
    assert not marker.exists()


def test_released_placeholders_keep_state_and_bad_files_give_clear_errors(tmp_path, fixtures_dir):
    obj = hit.safe_load(fixtures_dir / "HiT_Tiny_ep1500_random7.pth.tar")
    assert obj["epoch"] == 1500 and obj["net_type"] == "HiT"
    assert type(obj["settings"]).__module__.startswith("lib.train.admin")
    with pytest.raises(pickle.UnpicklingError):
        type(obj["settings"])()  # placeholders cannot be called
    data = (fixtures_dir / "HiT_Tiny_ep1500_random7.pth.tar").read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for name in ("cut.pth.tar", "junk.pth"):
        with pytest.raises(ValueError, match=name):
            hit.load_checkpoint(tmp_path / name)
    torch.save({"net": {"backbone.x": torch.zeros(3)}}, tmp_path / "odd.pth.tar")
    with pytest.raises(ValueError, match="matches no HiT variant"):
        hit.load_checkpoint(tmp_path / "odd.pth.tar")
    raw = (fixtures_dir / "levit_128s_timm_random11.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:1000])
    with pytest.raises(ValueError, match="cut.safetensors"):
        levit.read_safetensors(tmp_path / "cut.safetensors")
