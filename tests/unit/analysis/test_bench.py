"""bench's pieces in-process: the train step it times takes a compiled forward, and compiled
inference freezes the weights without changing the process's inductor config."""

import torch

from normfree import create_model


def test_bench_train_step_accepts_a_compiled_forward():
    from normfree.analysis.bench import make_train_step
    model = create_model("nfnet_tiny", 4)
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    before = model.head.fc.bias.detach().clone()
    # a compiled module has no truth value: the step must not test it with `or`
    step, _ = make_train_step(model, images, labels, forward=torch.compile(model,
                                                                           backend="eager"))
    step()
    assert not torch.equal(model.head.fc.bias, before)


def test_compiled_inference_freezes_the_weights_without_changing_inductors_config():
    import torch._inductor.config as inductor

    from normfree.analysis.bench import make_infer
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    infer = make_infer(model, torch.randn(2, 3, 8, 8), precision="fp32", compile_model=True)
    first = infer()
    assert inductor.freezing is False
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    assert torch.equal(infer(), first)  # the weights were compiled in as constants
