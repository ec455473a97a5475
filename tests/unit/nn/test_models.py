
import pytest
import torch

from normfree import block_betas, count_macs, count_params, create_model, list_models
from normfree.nn.config import plan_blocks
from normfree.nn.network import BranchOutput, NFBlock
from normfree.nn.counts import count
from normfree.nn.variants import BN_TWINS, VARIANTS, get_config

# docs/architecture.md §6: parameters with a 1000-class head, GMACs at the test size.
NFNET_TABLE = {
    "nfnet_f0": (71_489_284, 12.38), "nfnet_f1": (132_634_256, 35.54),
    "nfnet_f2": (193_779_228, 62.59), "nfnet_f3": (254_924_200, 114.76),
    "nfnet_f4": (316_069_172, 215.24), "nfnet_f5": (377_214_144, 289.76),
    "nfnet_f6": (438_359_116, 377.28), "nfnet_f7": (499_504_088, 478.78),
}


def meta_model(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


@pytest.mark.parametrize("name", sorted(NFNET_TABLE))
def test_nfnet_params_and_macs_match_the_paper_table(name):
    params, gmacs = NFNET_TABLE[name]
    model = meta_model(name)
    assert count_params(model) == params
    assert count_macs(model) / 1e9 == pytest.approx(gmacs, abs=0.01)


def test_other_reference_parameter_counts():
    assert count_params(meta_model("nf_resnet50")) == 25_557_048
    assert count_params(meta_model("nf_regnet_b0")) == 8_595_372


def test_plus_variants_are_wider():
    cfg = VARIANTS["nfnet_f4_plus"]
    assert cfg.widths == (384, 768, 2048, 2048)
    assert cfg.stem_widths[-1] == 192 and cfg.final_channels == 4096
    assert cfg.depths == VARIANTS["nfnet_f4"].depths


def test_betas_follow_the_expected_variance_of_f0():
    # docs/architecture.md §4: expected input variance per block of F0 (α = 0.2)
    variances = [1.00, 1.04, 1.04, 1.08, 1.04, 1.08, 1.12, 1.16, 1.20, 1.24, 1.04, 1.08]
    betas = block_betas((1, 2, 6, 3), 0.2)
    assert [round(1 / b ** 2, 2) for b in betas] == variances
    model_betas = [b.beta for b in meta_model("nfnet_f0").modules()
                   if isinstance(b, NFBlock)]
    assert model_betas == betas


def test_f0_block_widths_groups_and_stochastic_depth():
    plans = plan_blocks(VARIANTS["nfnet_f0"])
    assert [p.width for p in plans[:4]] == [128, 256, 256, 768]
    assert [p.groups for p in plans[:4]] == [1, 2, 2, 6]
    assert [p.stride for p in plans[:4]] == [1, 2, 1, 2]
    assert plans[0].drop_rate == 0.0
    assert plans[6].drop_rate == pytest.approx(0.25 * 6 / 12)


def test_regnet_widths_use_input_channels_and_groups_of_eight():
    plans = plan_blocks(VARIANTS["nf_regnet_b0"])
    assert plans[0].in_channels == 36 and plans[0].width == 32  # ratio 1, groups of 8
    assert plans[1].width == int(36 * 2.25) // 8 * 8
    assert VARIANTS["nf_regnet_b0"].final_channels == 960


def test_initialisation():
    torch.manual_seed(0)
    model = create_model("nfnet_s0", num_classes=10)
    fc = model.head.fc.weight
    assert fc.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(model.head.fc.bias == 0)
    assert all(b.skip_gain.item() == 0.0 for b in model.modules()
               if isinstance(b, NFBlock))
    conv = model.stages[2][0].conv1
    assert conv.weight.std().item() == pytest.approx(conv.fan_in ** -0.5, rel=0.1)
    assert torch.all(conv.gain == 1) and torch.all(conv.bias == 0)
    regnet = create_model("nf_regnet_b0", num_classes=10)
    assert torch.all(regnet.head.fc.weight == 0)


def test_tiny_model_stays_cheap_for_the_test_suite():
    """Many tests train nfnet_tiny: its cost is pinned as work (parameters, MACs), which unlike
    wall-clock time does not depend on how busy the machine is."""
    model = create_model("nfnet_tiny", num_classes=10)
    assert count_params(model) == 22_956
    assert count_macs(model, image_size=16) == 590_464
    x = torch.randn(8, 3, 16, 16)
    model(x).logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model(x).shape == (8, 10)


def test_api_features_and_reset_classifier():
    model = create_model("nfnet_tiny", num_classes=10)
    feats = model.forward_features(torch.randn(2, 3, 16, 16))
    assert feats.shape == (2, model.num_features, 4, 4)
    model.reset_classifier(3)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert model.cfg.train_size == 16 and model.cfg.test_size == 16


def test_numerics_switch():
    timm_cfg = meta_model("nfnet_f0", numerics="timm").cfg
    assert timm_cfg.activation == "gelu_exact" and timm_cfg.ws_eps == "add"
    ref = meta_model("nfnet_f0").cfg
    assert ref.activation == "gelu" and ref.ws_eps == "clamp"
    with pytest.raises(ValueError, match="numerics"):
        create_model("nfnet_tiny", numerics="jax")


def test_bad_names_and_overrides_list_what_exists():
    with pytest.raises(ValueError, match="nfnet_f0"):
        create_model("nfnet_f9")
    with pytest.raises(ValueError, match="depths"):
        create_model("nfnet_tiny", dephts=(1, 1))
    with pytest.raises(ValueError, match="activation"):
        create_model("nfnet_tiny", activation="swishy")


def test_bad_inputs_name_what_was_expected():
    model = create_model("nfnet_tiny", num_classes=10)
    with pytest.raises(ValueError, match="4 dims"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="total stride 4"):
        model(torch.randn(1, 3, 3, 3))


def test_every_listed_model_builds():
    for name in list_models():
        model = meta_model(name, num_classes=10)
        assert count_params(model) > 0, name


def test_small_variants_end_at_least_4x4_on_28px():
    for name in ("nfnet_s0", "nfnet_s0_dense", "nfnet_s1", "nf_resnet_s26", "nfnet_s0_bn"):
        model = create_model(name, num_classes=10).eval()
        with torch.no_grad():
            feats = model.forward_features(torch.randn(2, 1, 28, 28))
        assert feats.shape[-1] >= 4, name


def test_nfnet_s1_stem_sees_28px_at_full_resolution():
    model = create_model("nfnet_s1", num_classes=10)
    with torch.no_grad():
        assert model.stem(torch.randn(1, 1, 28, 28)).shape[-2:] == (28, 28)
    assert [f["reduction"] for f in model.feature_info] == [2, 2, 4, 8]


def test_nfnet_s0_dense_has_one_dense_3x3_per_block_and_a_full_resolution_stem():
    model = create_model("nfnet_s0_dense", num_classes=10)
    with torch.no_grad():
        assert model.stem(torch.randn(1, 1, 28, 28)).shape[-2:] == (28, 28)
    blocks = [m for m in model.modules() if isinstance(m, NFBlock)]
    assert len(blocks) == 5
    for block in blocks:
        spatial = [m for m in block.modules()
                   if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(spatial) == 1 and spatial[0].groups == 1
        assert "se" not in dict(block.named_children())  # no squeeze-excite
    assert [f["reduction"] for f in model.feature_info] == [2, 2, 4, 8]


@pytest.mark.parametrize("order", ["bn_act", "act_bn"])
def test_bn_twin_shares_topology(order):
    nf = create_model("nf_resnet_s26", num_classes=10)
    bn = create_model("resnet_s26_bn", num_classes=10, order=order)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nf.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    nf_convs = [m.weight.shape for m in nf.modules() if isinstance(m, torch.nn.Conv2d)]
    bn_convs = [m.weight.shape for m in bn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert nf_convs == bn_convs
    assert bn(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    with pytest.raises(ValueError, match="order"):
        create_model("resnet_s26_bn", order="bn_bn")


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("nfnet_tiny", 10, stochastic_depth=0.5)  # its RNG must be replayed
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("skip_gain"):
                p.fill_(0.7)
    x = torch.randn(4, 3, 16, 16)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(*grads))
    assert any(g.abs().sum() > 0 for g in grads[1])


@pytest.mark.parametrize("name,size", [("nfnet_f0", 64), ("nf_resnet26", 65),
                                       ("nf_regnet_b0", 64), ("nfnet_s0", 28)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_prepacked_inference_matches_the_autograd_path(name, size, memory_format):
    """fp32 CPU inference runs on prepacked weights with the activations inside the convs;
    the features must equal the training-mode computation (the plain conv path)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("the prepacked path needs mkldnn")
    torch.manual_seed(0)
    model = create_model(name, 10).eval().to(memory_format=memory_format)
    x = torch.randn(2, model.cfg.in_chans, size, size).contiguous(memory_format=memory_format)
    with torch.no_grad():
        fast = model.forward_features(x)
    plain = model.forward_features(x).detach()  # grad enabled: standardised in the graph
    assert torch.allclose(fast, plain, rtol=0, atol=1e-5 * plain.abs().max().item())
    convs = [m for m in model.modules() if hasattr(m, "_packed")]
    assert convs and all(m._packed for m in convs)  # every WS conv ran on a packed weight


def test_compiled_inference_with_freezing_matches_eager():
    """timm's fastest inference path (inductor freezing) must work on our models too: the
    prepacked eager path must not put graph breaks into what torch.compile traces."""
    import torch._inductor.config as inductor
    torch.manual_seed(0)
    model = create_model("nfnet_tiny", 4).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), inductor.patch(freezing=True):
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-5)


def test_stochastic_depth_drops_whole_residual_branches_of_nf_blocks():
    torch.manual_seed(0)
    block = create_model("nfnet_tiny", 4).stages[-1][0].train()
    block.drop_path.rate = 0.5
    with torch.no_grad():
        block.skip_gain.fill_(1.0)
        x = torch.randn(32, block.conv1.in_channels, 8, 8)
        y = block(x)
        out, gate, shortcut = block.branch_and_shortcut(x)  # no randomness inside the branch
        branch = out * gate
    kept = torch.isclose(y, shortcut + block.alpha * branch, atol=1e-6).flatten(1).all(1)
    dropped = torch.equal(y[~kept], shortcut[~kept])
    assert dropped and 4 < kept.sum().item() < 28  # ~half of 32 examples kept


def test_se_gate_folded_into_skip_gain_multiply_matches_the_materialised_branch():
    torch.manual_seed(0)
    block = create_model("nfnet_tiny", 4).stages[-1][0].eval()
    with torch.no_grad():
        block.skip_gain.fill_(0.7)
        x = torch.randn(4, block.conv1.in_channels, 8, 8)
        folded = block(x)
        out, gate, shortcut = block.branch_and_shortcut(x)
        seen = []
        handle = block.residual.register_forward_hook(lambda m, i, o: seen.append(o))
        observed = block(x)
        handle.remove()
    assert gate.shape == (4, out.shape[1], 1, 1)
    # a hook on `residual` sees the whole branch, and watching changes nothing
    assert torch.allclose(BranchOutput.value(seen[0]), out * gate)
    assert torch.allclose(folded, shortcut + 0.7 * block.alpha * out * gate, atol=1e-6)
    assert torch.equal(observed, folded)


@pytest.mark.parametrize("name,folds", [("nf_resnet26", True), ("nf_regnet_b0", True),
                                        ("nfnet_f0", False)])
def test_folding_the_residual_scale_keeps_the_blocks_output(name, folds):
    """α · skip gain into a Scaled-WS conv3's gain; not past an end-of-block SE gate."""
    torch.manual_seed(0)
    block = create_model(name, 4).stages[1][0].eval()
    with torch.no_grad():
        block.skip_gain.fill_(0.5)
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        before = block(x)
        assert block.fold_residual_scale_() is folds
        after = block(x)
    assert (block.alpha, block.skip_gain.item()) == ((1.0, 1.0) if folds else (0.2, 0.5))
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["nfnet_f0", "nfnet_f1_plus", "nf_resnet50", "nf_regnet_b0",
                                  "nf_regnet_b3", "nfnet_s0", "nfnet_s0_dense", "nfnet_s1",
                                  "nf_resnet_s26",
                                  "nfnet_tiny", "resnet50_bn", "nfnet_s0_bn", "nfnet_tiny_bn"])
def test_counts_from_the_config_equal_the_built_models(name):
    """`normfree list` counts without building models; every kind of block, stem and head."""
    with torch.device("meta"):
        model = create_model(name, num_classes=7)
    params, macs = count(get_config(name), num_classes=7, image_size=64,
                         batch_norm=name in BN_TWINS)
    assert params == count_params(model) and macs == count_macs(model, image_size=64)
