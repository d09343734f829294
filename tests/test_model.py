"""Model core: attention-bias layouts, LeViT, Bridge Module, HiT, fusing, checkpoints."""
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
def test_diagonal_positions_are_unique_and_separate_overlaps():
    pos = attention_bias.token_positions(GRIDS, "diagonal")
    assert pos.shape == (320, 2)
    assert len({tuple(p) for p in pos}) == 320
    search, template = pos[:256], pos[256:]
    assert not set(search[:, 0]) & set(template[:, 0])  # no shared row
    assert not set(search[:, 1]) & set(template[:, 1])  # no shared column
    sep = attention_bias.token_positions(GRIDS, "separate")
    assert len({tuple(p) for p in sep}) == 256  # template overlaps the search's top-left


@pytest.mark.parametrize("layout", ["diagonal", "separate", "vertical", "horizontal"])
def test_closed_form_equals_loop_form(layout):
    grids = GRIDS
    for s in range(3):
        pos = attention_bias.token_positions(grids, layout)
        idx, n = attention_bias.bias_index(pos, pos)
        ref, n_ref = loop_index(pos.tolist(), pos.tolist())
        assert n == n_ref and torch.equal(idx, ref)
        if s < 2:
            small = [attention_bias.subsample_grid(g) for g in grids]
            qpos = attention_bias.token_positions(small, layout)
            idx, n = attention_bias.bias_index(qpos, pos, stride=2)
            ref, n_ref = loop_index(qpos.tolist(), pos.tolist(), stride=2)
            assert n == n_ref and torch.equal(idx, ref)
            grids = small


def test_diagonal_table_sizes_and_index_shapes():
    mha, sa = attention_bias.stage_indices(GRIDS, "diagonal")
    assert [n for _, n in mha] == [560, 136, 32]
    assert [tuple(i.shape) for i, _ in mha] == [(320, 320), (80, 80), (20, 20)]
    assert [n for _, n in sa] == [558, 134]
    assert [tuple(i.shape) for i, _ in sa] == [(80, 320), (20, 80)]


def test_template_origin_follows_both_sides_of_a_non_square_search_grid():
    grids = [(2, 4), (2, 2)]  # search 2 rows x 4 columns
    want = {"diagonal": (2, 4), "vertical": (2, 0), "horizontal": (0, 4), "separate": (0, 0)}
    for layout, (r, c) in want.items():
        pos = attention_bias.token_positions(grids, layout)
        assert pos[8:].tolist() == [[r, c], [r, c + 1], [r + 1, c], [r + 1, c + 1]], layout


def test_unknown_layout_raises():
    with pytest.raises(ValueError, match="diagonal"):
        attention_bias.token_positions(GRIDS, "spiral")


# ----------------------------------------------------------------------------- shapes and counts
PARAMS = {"base": (42_220_250, 42_168_586), "small": (11_069_794, 11_046_258),
          "tiny": (9_628_530, 9_609_474)}
STAGE_SHAPES = {"base": [(1, 320, 384), (1, 80, 512), (1, 21, 768)],
                "small": [(1, 320, 128), (1, 80, 256), (1, 21, 384)],
                "tiny": [(1, 320, 128), (1, 80, 256), (1, 21, 384)]}


@pytest.mark.parametrize("variant", ["base", "small", "tiny"])
def test_shapes_and_parameter_counts(variant):
    torch.manual_seed(0)
    model = hit.build_hit(variant).eval()
    assert hit.count_params(model) == PARAMS[variant][0]
    z, x = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = model.forward_features(z, x)
    assert [tuple(t.shape) for t in out["stage_features"]] == STAGE_SHAPES[variant]
    assert tuple(out["bridge_tokens"].shape) == (257, 1, 256)
    assert tuple(out["pred_boxes"].shape) == (1, 4)
    assert tuple(out["score"].shape) == (1,)
    assert 0 < out["score"].item() <= 1
    model.fuse()
    assert hit.count_params(model) == PARAMS[variant][1]


def test_fuse_keeps_outputs_on_trained_like_statistics():
    model = trained_like("tiny", seed=1)
    z, x = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ref = model.forward_features(z, x)
        model.fuse()  # the backbone's BNs, as the released tracker
        a = model.forward_features(z, x)
        fused = fast.FastHiT(model)  # every BN, merged towers, folded proj1
        b = fused(z, x)
    # Measured on the Sapphire Rapids: boxes 3e-8, scores 0, bridge tokens 3.6e-7. The
    # bounds leave about 10x for other CPUs' summation orders and still catch a folding
    # slip: BN folded without its eps moves the tokens by 6.5e-6.
    for out in (a, b):
        assert (out["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-6
        assert (out["score"] - ref["score"]).abs().max() < 1e-6
    assert (a["bridge_tokens"] - ref["bridge_tokens"]).abs().max() < 4e-6
    assert fused.folded and isinstance(fused.gate, fast.FoldedGate)  # proj1 folded into the head
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in fused.modules())


def test_proj1_folding_equals_plain_head_on_large_activations():
    """The folded head regroups sums; check it on inputs far from zero as well."""
    model = trained_like("small", seed=2)
    z, x = torch.randn(1, 3, 128, 128) * 3, torch.randn(1, 3, 256, 256) * 3
    with torch.no_grad():
        ref = model(z, x)
        fused = fast.FastHiT(model)
        out = fused(z, x)
    assert fused.folded
    # Measured 0 on boxes and scores (the regrouped sums round alike here); 1e-6 allows
    # another CPU's summation order (the exact modes' contract is 1e-4).
    assert (out["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-6
    assert (out["score"] - ref["score"]).abs().max() < 1e-6
    base = fast.FastHiT(hit.build_hit("base"))
    assert not base.folded  # C1 = 384 > 256: folding would add work


def trained_like(variant, seed):
    """An eval-mode HiT (weights seeded by `seed`) with randomize_bn_and_biases applied."""
    torch.manual_seed(seed)
    model = hit.build_hit(variant)
    randomize_bn_and_biases(model)
    return model.eval()


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


@pytest.mark.parametrize("layout", attention_bias.LAYOUTS)
def test_every_layout_builds_runs_and_trains(layout):
    check_all_parameters_get_gradients(hit.build_hit("tiny", pos_layout=layout))


@pytest.mark.parametrize("stages", [s for r in (1, 2, 3) for s in itertools.combinations(bridge.STAGES, r)])
def test_every_bridge_subset_builds_runs_and_trains(stages):
    check_all_parameters_get_gradients(hit.build_hit("tiny", bridge_stages=stages))


def check_all_parameters_get_gradients(model):
    torch.manual_seed(0)
    randomize_bn_and_biases(model)  # zero-initialised residual BNs would block gradients
    model.train()
    out = model(torch.randn(2, 3, 128, 128), torch.randn(2, 3, 256, 256))
    assert tuple(out["pred_boxes"].shape) == (2, 4)
    (out["pred_boxes"].sum() + out["score"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_bad_bridge_stages_and_variant_raise():
    with pytest.raises(ValueError, match="non-empty subset"):
        hit.build_hit("tiny", bridge_stages=())
    with pytest.raises(ValueError, match="non-empty subset"):
        hit.build_hit("tiny", bridge_stages=("max", "huge"))
    with pytest.raises(ValueError, match="unknown HiT variant"):
        hit.build_hit("large")
    with pytest.raises(ValueError, match="unknown LeViT arch"):
        levit.build_levit("LeViT_999")


def test_bad_inputs_and_configs_raise_clearly():
    model = hit.build_hit("tiny").eval()
    z, x = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 256, 256)
    for args in [(x, z), (z[:1], x), (z, torch.randn(2, 3, 320, 320)), (z[0], x)]:
        with pytest.raises(ValueError, match=r"expected template \(B, \*\(3, 128, 128\)\)"):
            model(*args)  # swapped images would otherwise run: 256 + 64 tokens either way
    with pytest.raises(ValueError, match="one B"):
        model.backbone.body.forward_stages([x, z[:1]])
    with pytest.raises(ValueError, match="string 'max'"):
        hit.build_hit("tiny", bridge_stages="max")
    tiny = hit.VARIANTS["tiny"]
    for change, msg in [({"search_size": 288}, "multiple of 64"), ({"template_size": 100}, "multiple of 64"),
                        ({"stride": 8}, "stride must be 16"), ({"levit": "LeViT_1"}, "unknown LeViT spec"),
                        ({"pos_layout": "diag"}, "unknown pos_layout")]:
        with pytest.raises(ValueError, match=msg):
            hit.config_from_dict({**hit.dataclasses.asdict(tiny), **change})  # as from a checkpoint
    with pytest.raises(ValueError, match="no classifier"):
        model.backbone.body(x)


def test_drop_path_keeps_the_input_dtype():
    block = levit.Residual(torch.nn.Identity(), drop=0.5).train()
    x = torch.ones(64, 3, 4, dtype=torch.bfloat16)
    y = block(x)
    assert y.dtype == torch.bfloat16
    kept = (y[:, 0, 0] != 1).sum().item()  # kept samples: 1 + 1 / (1 - 0.5) = 3, dropped: 1
    assert set(y[:, 0, 0].tolist()) == {1.0, 3.0} and 10 < kept < 54


def test_count_macs_follows_the_model_dtype():
    model = hit.build_hit("tiny")
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


ONEDNN = fast.onednn_linear_available()


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
        assert (packed._packed is not None) == ONEDNN  # the oneDNN GEMM ran where it exists
        assert got.shape == (*shape[:-1], 160)
        assert (got - act(lin(x))).abs().max() < 5e-6  # measured 4.8e-7 (oneDNN's fused Hardswish); 10x
    with torch.no_grad():
        lin.weight.mul_(-2)  # a packed copy made before this must not be reused
    with torch.inference_mode():
        assert (packed(x) - act(lin(x))).abs().max() < 1e-4
    copied = __import__("copy").deepcopy(packed)  # the opaque packed weight is not copied
    with torch.inference_mode():
        assert (copied(x) - act(lin(x))).abs().max() < 1e-4
    x.requires_grad_(True)
    packed(x).sum().backward()  # with autograd on it is F.linear: gradients flow
    assert lin.weight.grad is not None and x.grad is not None


def test_pack_linears_replaces_every_linear_and_fuses_mlp_hardswish():
    model = trained_like("tiny", seed=4)
    z, x = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        ref = model(z, x)
    model = fast.FastHiT(model)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    sd = model.state_dict()
    fast.pack_linears(model)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    packed = [m for m in model.modules() if isinstance(m, fast.PackedLinear)]
    assert len(packed) == n_linear
    assert sum(m.post == "hardswish" for m in packed) == 2 + 3 + 4 + 2  # MLPs: 9 blocks + 2 shrinks
    assert model.state_dict().keys() == sd.keys()  # same names: Identity keeps the index
    with torch.inference_mode():
        out = model(z, x)
    assert (out["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-4
    assert (out["score"] - ref["score"]).abs().max() < 1e-4


def test_pick_gemm_keeps_the_faster_kernel_for_the_whole_model(monkeypatch):
    """fused mode times the forward with every PackedLinear on oneDNN, then on MKL, and
    keeps the faster for all of them; outputs agree either way."""
    model = trained_like("tiny", seed=4)
    z, x = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        ref = model(z, x)
    fused = fast.prepare(model, "fused", "cpu")
    packed = [m for m in fused.modules() if isinstance(m, fast.PackedLinear)]
    assert len({m.use_onednn for m in packed}) == 1  # one choice for the whole model
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


def test_median_seconds_times_each_callable_round_robin():
    order = []
    fns = [lambda: order.append("a"), lambda: (order.append("b"), time.sleep(0.002))]
    t_a, t_b = fast.median_seconds(fns, warmup=1, reps=3)
    assert order == ["a", "b"] * 4 and 0 <= t_a < t_b and t_b >= 0.002


def test_frozen_biases_equal_the_gathered_table():
    """FastHiT gathers each attention's bias once; it must equal Eq. 2's table lookup,
    and it is made inside inference_mode too (tensors without version counters)."""
    model = trained_like("tiny", seed=5)
    tables = [m.bias() for m in model.modules() if isinstance(m, levit.BiasTable)]
    with torch.inference_mode():
        fused = fast.FastHiT(model.double())
        out = fused(torch.randn(1, 3, 128, 128).double(), torch.randn(1, 3, 256, 256).double())
    frozen = [m.bias() for m in fused.modules() if isinstance(m, fast.FrozenBias)]
    assert len(frozen) == len(tables) == 2 + 3 + 4 + 2  # 9 MHA blocks + 2 shrink attentions
    assert all(torch.equal(f, t.double()) for f, t in zip(frozen, tables))
    assert out["pred_boxes"].shape == (1, 4)


def test_levit_classifier_shapes():
    model = levit.build_levit("LeViT_128S").eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(2, 3, 224, 224)).shape) == (2, 1000)
    model.train()
    a, b = model(torch.randn(2, 3, 224, 224))
    assert a.shape == b.shape == (2, 1000)


# ----------------------------------------------------------------------------- released fixtures
def test_tiny_matches_released_fixture(fixtures_dir):
    model = hit.load_checkpoint(fixtures_dir / "HiT_Tiny_ep1500_random7.pth.tar")
    assert model.cfg.variant == "tiny" and not model.training
    exp = torch.load(fixtures_dir / "HiT_Tiny_random7_expected.pt")
    fresh = hit.build_hit("tiny").state_dict()
    for k, v in model.state_dict().items():
        if k.endswith("attention_bias_idxs"):
            assert torch.equal(v, fresh[k]), k  # our first-seen numbering = released
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
        assert (model(exp["image"]) - exp["logits"]).abs().max() < 1e-4
        model.fuse()
        assert (model(exp["image"]) - exp["logits"]).abs().max() < 1e-4


def test_levit_weights_feed_the_hit_backbone(fixtures_dir):
    model = hit.build_hit("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    levit.load_imagenet_weights(model.backbone.body, fixtures_dir / "levit_128s_timm_random11.safetensors")
    src = levit.read_state_dict(fixtures_dir / "LeViT_128S_random11.pth")
    after = model.state_dict()
    assert torch.equal(after["backbone.body.blocks.4.kv.c.weight"], src["blocks.4.kv.c.weight"])
    assert torch.equal(after["backbone.body.patch_embed.0.bn.running_var"], src["patch_embed.0.bn.running_var"])
    assert not after["backbone.body.blocks.0.m.attention_biases"].any()  # tables dropped, start at 0
    assert torch.equal(after["box_head.conv1_tl.0.weight"], before["box_head.conv1_tl.0.weight"])
    absolute = hit.build_hit("tiny", pos_layout="absolute")  # Table 6's Abs: its embedding starts random
    pos = absolute.backbone.body.pos_embed.detach().clone()
    levit.load_imagenet_weights(absolute.backbone.body, fixtures_dir / "LeViT_128S_random11.pth")
    assert torch.equal(absolute.backbone.body.pos_embed, pos)
    assert torch.equal(absolute.state_dict()["backbone.body.blocks.4.kv.c.weight"], src["blocks.4.kv.c.weight"])
    with pytest.raises(ValueError, match="shape mismatch"):  # LeViT-128S does not fit HiT-Base
        levit.load_imagenet_weights(hit.build_hit("base").backbone.body,
                                    fixtures_dir / "LeViT_128S_random11.pth")


def test_converter_reports_missing_and_unknown_keys(tmp_path, fixtures_dir):
    sd = levit.read_state_dict(fixtures_dir / "LeViT_128S_random11.pth")
    del sd["blocks.4.kv.c.weight"]
    sd["blocks.99.m.qkv.c.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        levit.load_imagenet_weights(levit.build_levit("LeViT_128S"), tmp_path / "bad.pth")
    assert "blocks.4.kv.c.weight" in str(err.value) and "blocks.99.m.qkv.c.weight" in str(err.value)
    timm = levit.read_safetensors(fixtures_dir / "levit_128s_timm_random11.safetensors")
    timm["stages.0.blocks.0.attn.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mystery"):
        levit.timm_to_release(timm, levit.SPECS["LeViT_128S"])


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("variant", ["small", "base"])
def test_released_layout_infers_variant(tmp_path, variant):
    model = hit.build_hit(variant)
    torch.save({"net": model.state_dict(), "epoch": 3}, tmp_path / "ck.pth.tar")
    loaded = hit.load_checkpoint(tmp_path / "ck.pth.tar")
    assert loaded.cfg.variant == variant
    with pytest.raises(ValueError, match="not HiT-tiny"):
        hit.load_checkpoint(tmp_path / "ck.pth.tar", variant="tiny")


def test_project_checkpoint_roundtrip(tmp_path):
    import dataclasses
    model = hit.build_hit("tiny", pos_layout="vertical", bridge_stages=("max", "min"))
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.cfg)}, tmp_path / "own.pth")
    loaded = hit.load_checkpoint(tmp_path / "own.pth")
    assert loaded.cfg == model.cfg
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


class Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("how", ["system", "eval"])
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    payload = Evil(os.system, cmd) if how == "system" else \
        Evil(eval, f"__import__('os').system({cmd!r})")
    torch.save({"net": {"x": torch.zeros(1)}, "settings": payload}, tmp_path / "evil.pth.tar")
    with pytest.raises(ValueError, match="refus"):
        hit.load_checkpoint(tmp_path / "evil.pth.tar")
    assert not marker.exists()


def test_truncated_and_garbage_checkpoints_give_clear_errors(tmp_path, fixtures_dir):
    data = (fixtures_dir / "HiT_Tiny_ep1500_random7.pth.tar").read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pth.tar"):
        hit.load_checkpoint(tmp_path / "cut.pth.tar")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        hit.load_checkpoint(tmp_path / "junk.pth")
    torch.save({"net": {"backbone.x": torch.zeros(3)}}, tmp_path / "odd.pth.tar")
    with pytest.raises(ValueError, match="matches no HiT variant"):
        hit.load_checkpoint(tmp_path / "odd.pth.tar")


def test_released_checkpoint_placeholders_keep_state(fixtures_dir):
    obj = hit.safe_load(fixtures_dir / "HiT_Tiny_ep1500_random7.pth.tar")
    assert obj["epoch"] == 1500 and obj["net_type"] == "HiT"
    settings = obj["settings"]
    assert type(settings).__module__.startswith("lib.train.admin")
    with pytest.raises(pickle.UnpicklingError):
        type(settings)()  # placeholders cannot be called


def test_safetensors_reader_rejects_truncated(tmp_path, fixtures_dir):
    raw = (fixtures_dir / "levit_128s_timm_random11.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:1000])
    with pytest.raises(ValueError, match="cut.safetensors"):
        levit.read_safetensors(tmp_path / "cut.safetensors")
