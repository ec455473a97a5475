"""Weights by Hugging Face Hub id, offline: a hub cache laid out by the test in the standard
layout, read through huggingface_hub with HF_HUB_OFFLINE=1 (nothing touches the network)."""

import json
import os
import subprocess
import sys

import pytest
import safetensors.torch

timm = pytest.importorskip("timm")
pytest.importorskip("huggingface_hub")

REPO = "timm/test_nfnet.r160_in1k"


def lay_out_hub_cache(root, repo_id, files):
    """`files` (name → bytes) as the snapshot of `main` in a standard hub cache at `root`."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    model = timm.create_model("test_nfnet").eval()
    weights = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})
    config = {"architecture": "test_nfnet", "num_classes": 1000, "pretrained_cfg": {
        "input_size": [3, 160, 160], "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    lay_out_hub_cache(root, REPO, {"model.safetensors": weights,
                                   "config.json": json.dumps(config).encode()})
    return root


def offline(code, cache, cwd):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_load_pretrained_and_create_model_by_hub_id_offline(hub_cache, tmp_path):
    code = f"""
import json, torch, normfree
p = normfree.load_pretrained("hf-hub:{REPO}", device="cpu")
m = normfree.create_model("test_nfnet", pretrained=True, num_classes=10)
x = torch.randn(1, 3, 160, 160)
print(json.dumps({{"name": p.name, "numerics": p.numerics, "classes": len(p.classes),
                  "first": p.classes[0], "pre": p.preprocessing, "logits": list(p.model(x).shape),
                  "finetune": list(m(x).shape)}}))
"""
    result = offline(code, hub_cache, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert (out["name"], out["numerics"], out["classes"]) == ("test_nfnet", "timm", 1000)
    assert out["first"] == "tench"
    assert (out["pre"]["crop"], out["pre"]["resize"], out["pre"]["mean"]) == (160, 168,
                                                                              [0.5] * 3)
    assert out["logits"] == [1, 1000] and out["finetune"] == [1, 10]


def test_cli_predict_takes_a_hub_id(hub_cache, tmp_path):
    from PIL import Image
    Image.new("RGB", (200, 180), (120, 40, 200)).save(tmp_path / "a.png")
    code = ("import sys; from normfree.cli import main; sys.exit(main(['predict', '--weights', "
            f"'hf-hub:{REPO}', 'a.png', '--top', '2']))")
    result = offline(code, hub_cache, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("a.png") and result.stdout.count("%") == 2


def test_uncached_hub_id_offline_is_a_clear_error_and_writes_nothing(hub_cache, tmp_path):
    before = files_under(hub_cache)
    code = ("import sys; from normfree.cli import main; sys.exit(main(['predict', '--weights', "
            "'hf-hub:timm/eca_nfnet_l0.ra2_in1k', 'a.png']))")
    result = offline(code, hub_cache, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "timm/eca_nfnet_l0.ra2_in1k" in result.stderr
    assert "model.safetensors" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert files_under(hub_cache) == before and not list(tmp_path.iterdir())
