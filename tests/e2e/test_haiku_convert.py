"""`normfree convert` of a DeepMind Haiku file: the metadata it writes and weights equal to the
model the file was made from."""


import torch

from normfree import create_model, load_weights



def test_convert_haiku_to_safetensors(f0, f0_haiku_file, tmp_path):
    import json

    from safetensors import safe_open

    from normfree.cli import main
    assert main(["convert", str(f0_haiku_file), str(tmp_path / "f0.safetensors")]) == 0
    with safe_open(tmp_path / "f0.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "nfnet_f0" and meta["numerics"] == "deepmind"
    assert len(meta["source_sha256"]) == 64
    assert json.loads(meta["preprocessing"])["crop"] == 256
    model = load_weights(create_model("nfnet_f0"), tmp_path / "f0.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in f0.state_dict().items())
