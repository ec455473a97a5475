import pytest
import torch

from normfree import adaptive_clip_grad_, create_model, param_groups
from normfree.errors import ConfigError
from normfree.training.agc import classifier_name, clip_param_groups_


def param(value, grad):
    p = torch.nn.Parameter(torch.tensor(value))
    p.grad = torch.tensor(grad)
    return p


def test_linear_weight_rows_are_units():
    # row 0: ‖W‖ = 5, ‖G‖ = 1  → ratio 0.2 > 0.1: scaled to 0.1·5 = 0.5
    # row 1: ‖W‖ = 10, ‖G‖ = 0.5 → ratio 0.05: untouched
    p = param([[3.0, 4.0], [6.0, 8.0]], [[0.6, 0.8], [0.3, 0.4]])
    fraction = adaptive_clip_grad_([p], clip_factor=0.1)
    assert torch.allclose(p.grad, torch.tensor([[0.3, 0.4], [0.3, 0.4]]))
    assert fraction.item() == 0.5


def test_conv_output_channel_is_a_unit():
    w = torch.ones(2, 1, 2, 2)  # ‖W_o‖ = 2 for both channels
    g = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 0.01)])  # ‖G‖ 2, 0.02
    p = param(w.tolist(), g.tolist())
    adaptive_clip_grad_([p], clip_factor=0.1)
    assert torch.allclose(p.grad[0], torch.full((1, 2, 2), 0.1))  # norm 0.2 = 0.1 · 2
    assert torch.allclose(p.grad[1], g[1])


def test_bias_and_scalar_use_whole_tensor_norm():
    b = param([3.0, 4.0], [3.0, 4.0])  # ratio 1 > 0.5 → norm 2.5
    s = param(0.0, 1.0)  # ‖W‖ = 0 → max(0, ε) = 1e-3; scale to 0.5e-3
    adaptive_clip_grad_([b, s], clip_factor=0.5)
    assert torch.allclose(b.grad, torch.tensor([1.5, 2.0]))
    assert s.grad.item() == pytest.approx(0.5e-3)


def test_clip_boundary_is_strict():
    p = param([[4.0, 3.0]], [[0.4, 0.3]])  # ratio exactly 0.1: not clipped
    adaptive_clip_grad_([p], clip_factor=0.1)
    assert torch.equal(p.grad, torch.tensor([[0.4, 0.3]]))
    q = param([[4.0, 3.0]], [[0.41, 0.3]])
    adaptive_clip_grad_([q], clip_factor=0.1)
    assert torch.linalg.vector_norm(q.grad).item() == pytest.approx(0.5, rel=1e-6)


def test_tiny_gradient_norm_floor():
    p = param([[1e-4, 0.0]], [[1e-7, 0.0]])  # ‖G‖ = 1e-7 < 1e-6, ratio 1e-4 / ... > λ?
    # ‖W‖ clamps to 1e-3 → ratio 1e-4 < 0.01 → untouched
    adaptive_clip_grad_([p], clip_factor=0.01)
    assert p.grad[0, 0].item() == pytest.approx(1e-7)


def test_param_groups_exclude_classifier_from_agc_by_name():
    model = create_model("nfnet_tiny", num_classes=10)
    groups = param_groups(model, weight_decay=1e-4, clip_factor=0.02)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.head.fc.weight)]["clip_factor"] is None
    assert by_id[id(model.head.fc.weight)]["weight_decay"] == 1e-4
    assert by_id[id(model.head.fc.bias)]["clip_factor"] == 0.02  # the bias is clipped
    assert by_id[id(model.head.fc.bias)]["weight_decay"] == 0.0
    conv = model.stages[0][0].conv1
    assert by_id[id(conv.weight)]["weight_decay"] == 1e-4
    assert by_id[id(conv.gain)]["weight_decay"] == 0.0
    assert by_id[id(model.stages[0][0].skip_gain)]["weight_decay"] == 0.0
    se = model.stages[0][0].se.fc1.weight
    assert by_id[id(se)]["clip_factor"] == 0.02
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_model_without_classifier_is_an_error():
    with pytest.raises(ConfigError, match="no identifiable classifier"):
        classifier_name(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)))


def test_optimizer_groups_clip_and_leave_classifier_alone():
    torch.manual_seed(0)
    model = create_model("nfnet_tiny", num_classes=10)
    opt = torch.optim.SGD(param_groups(model, 0.0, clip_factor=1e-4), lr=0.1)
    model(torch.randn(4, 3, 16, 16)).pow(2).sum().mul(1e3).backward()
    head_grad = model.head.fc.weight.grad.clone()
    stem_grad = model.stem.conv1.weight.grad.clone()
    fraction = clip_param_groups_(opt)
    assert torch.equal(model.head.fc.weight.grad, head_grad)
    assert model.stem.conv1.weight.grad.norm() < stem_grad.norm()
    assert 0.0 < fraction.item() <= 1.0


def test_amp_path_clips_after_unscale():
    p = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = torch.optim.SGD([p], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    loss = (p * torch.tensor([[0.6, 0.8]])).sum() * 10  # true grad norm 10
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    assert torch.allclose(p.grad, torch.tensor([[6.0, 8.0]]))
    adaptive_clip_grad_([p], clip_factor=0.1)
    assert torch.allclose(p.grad, torch.tensor([[0.3, 0.4]]))


def test_accumulated_gradient_is_clipped_once():
    p = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    for _ in range(2):
        (p * torch.tensor([[0.6, 0.8]])).sum().backward()  # grads add up to norm 2
    adaptive_clip_grad_([p], clip_factor=0.1)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(0.5)


def test_mixed_tensors_match_a_unit_by_unit_loop():
    """Scalars, vectors, matrices and channels_last convs in any order, some tensors with no
    clipped unit (left untouched) and some with: the same as clipping unit by unit."""
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 4, 3, 3), (), (5,), (7, 3), (8, 2, 1, 1), (), (3,)]
    grad_scales = [0.5, 0.001, 1.0, 0.001, 0.2, 2.0, 0.001]
    params = []
    for shape, scale in zip(shapes, grad_scales):
        p = torch.nn.Parameter(torch.randn(shape, generator=g))
        p.grad = torch.randn(shape, generator=g) * scale
        if len(shape) == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
            p.grad = p.grad.contiguous(memory_format=torch.channels_last)
        params.append(p)
    expected, clipped, units = [], 0, 0
    for p in params:
        rows = [(p.detach(), p.grad)] if p.ndim <= 1 else zip(p.detach(), p.grad)
        out = []
        for w, grad in rows:
            w_norm, g_norm = max(w.norm().item(), 1e-3), max(grad.norm().item(), 1e-6)
            hit = g_norm / w_norm > 0.1
            out.append(grad * (0.1 * w_norm / g_norm) if hit else grad.clone())
            clipped, units = clipped + hit, units + 1
        expected.append(out[0] if p.ndim <= 1 else torch.stack(out))
    fraction = adaptive_clip_grad_(params, clip_factor=0.1)
    assert 0 < clipped < units and fraction.item() == pytest.approx(clipped / units)
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, e, rtol=1e-5, atol=1e-8)
