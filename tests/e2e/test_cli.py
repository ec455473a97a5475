import json
import logging
from dataclasses import fields

import pytest

import normfree.cli
from normfree.cli import main
from normfree.errors import ConfigError, DataError
from normfree.training.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from normfree.training.config import TrainConfig


def test_train_debug_and_eval_in_process(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "debug", "--out-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # the run's messages (the `normfree` logger) on stdout, for the command alone
    assert printed.startswith("normfree train: nfnet_tiny on synthetic") and "test top-1" in printed
    assert "\nepoch   2/2  loss " in printed and not logging.getLogger("normfree").handlers
    result = json.loads((out / "results.json").read_text())
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json",
                 str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["top1"] == pytest.approx(result["test_top1"])
    # weights from another layout of the variant (same shapes) are refused, not mis-evaluated
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["layout"]["stem_strides"] == [2, 1]
    state["layout"]["stem_strides"] = [1, 1]
    save_checkpoint(out / "checkpoint.pt", Checkpoint.from_dict(state))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt")]) == 2
    assert "stem_strides [1, 1] (this version: [2, 1])" in capsys.readouterr().err


def test_unknown_flag_and_bad_value_are_named(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--learning-rate", "0.1"])
    assert "--learning-rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--lr", "fast"])
    assert "--lr" in capsys.readouterr().err
    for flag, value, rule in [("--epochs", "0", "at least 1"), ("--lr", "-0.1", "positive"),
                              ("--random-erasing", "1.5", "probability"),
                              ("--dropout", "1", "[0, 1)"), ("--weight-decay", "-1e-5", "0 or")]:
        assert main(["train", f"{flag}={value}"]) == 2  # refused before anything is touched
        err = capsys.readouterr().err
        assert f"{flag} must be" in err and rule in err and "Traceback" not in err, flag


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def user_error(args):
        raise ConfigError("--thing must be one of a, b")

    def bug(args):
        raise ValueError("an internal inconsistency")
    monkeypatch.setattr(normfree.cli, "cmd_list", user_error)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "normfree list: error: --thing must be one of a, b\n"
    monkeypatch.setattr(normfree.cli, "cmd_list", bug)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["list"])


def test_errors_naming_settings_by_field_show_the_flags(monkeypatch, capsys):
    def data_error(args):
        raise DataError("val_size 9 cannot be held out of my_val_size/: pass val_size N",
                        fields=("val_size",))
    monkeypatch.setattr(normfree.cli, "cmd_list", data_error)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == ("normfree list: error: --val-size 9 cannot be held out "
                                       "of my_val_size/: pass --val-size N\n")


def test_train_help_documents_every_flag_with_the_default_presets_value(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert text.count("(fmnist: ") == len(fields(TrainConfig))
    assert "--time-budget STR" in text and "(fmnist: 15m)" in text  # the preset's value
    assert "--epochs INT (fmnist: set by --time-budget)" in text  # not TrainConfig's 16
    assert "AGC λ; 0 turns AGC off (fmnist: 0.04)" in text
    assert "(fmnist: 5e-05)" in text and "(fmnist: none)" in text


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install -y dataset-fashion-mnist" in err and "Traceback" not in err


def test_list_prints_models_with_params(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nfnet_f0" in out and "71,489,284" in out and "12.38" in out


def test_predict_export_and_bench_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test install")
    from PIL import Image
    run = tmp_path / "run"
    assert main(["train", "--preset", "debug", "--out-dir", str(run), "--no-progress"]) == 0
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 24), (200, 30, 30)).save(image)
    capsys.readouterr()
    assert main(["predict", "--weights", str(run / "model.safetensors"), str(image), "--top",
                 "3", "--json", str(tmp_path / "p.json")]) == 0
    predictions = json.loads((tmp_path / "p.json").read_text())[str(image)]
    assert len(predictions) == 3 and {p["class"] for p in predictions} <= set("0123456789")
    assert sum(p["probability"] for p in predictions) <= 1.0 + 1e-6
    assert main(["export", "--weights", str(run / "model.safetensors"), "--onnx",
                 str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0 and "onnxruntime" in capsys.readouterr().out
    assert main(["bench", "--model", "nfnet_tiny", "--batch-size", "4", "--repeats", "2",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert all(record[k][0] > 0 for k in ("train_img_s", "infer_img_s", "infer_folded_img_s"))
    assert 0 < record["agc_fraction_of_step"] < 1 and record["train_gflops"] > 0


def test_bench_against_the_timm_peer(capsys):
    pytest.importorskip("timm", reason="timm is a test dependency")
    assert main(["bench", "--model", "nf_resnet26", "--image-size", "32", "--batch-size", "2",
                 "--repeats", "2", "--peer", "timm", "--ceiling", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["peer"] == "nf_resnet26" and record["peer_train_img_s"][0] > 0
    assert record["train_ratio"] > 0 and record["agc_speedup_vs_timm"] > 0
    assert record["train_ratio_vs_peer_fused_sgd"] > 0
    assert record["gemm_gflops"] > 0 and 0 < record["train_fraction_of_conv_ceiling"]
    assert main(["bench", "--model", "nf_resnet26", "--image-size", "32", "--batch-size", "2",
                 "--repeats", "2", "--peer", "timm", "--precision", "bf16", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)  # bf16 against timm's plain fp32 inference
    assert record["dtype"] == "bf16" and record["infer_ratio_vs_peer_eager_fp32"] > 0


def test_eval_needs_exactly_one_source(tmp_path, capsys):
    assert main(["eval"]) == 2
    assert "either --checkpoint" in capsys.readouterr().err
    assert main(["eval", "--weights", str(tmp_path / "missing.safetensors"), "--data",
                 str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_memory_reports_peak_rss(capsys):
    assert main(["bench", "--memory", "--model", "nfnet_tiny", "--image-size", "32",
                 "--batch-size", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["peak_rss_mb"] >= record["rss_mb_before_steps"] > 50


def test_list_shows_timms_models_and_the_released_weights(capsys):
    from normfree.cli import main
    main(["list"])
    listed = capsys.readouterr().out
    assert "eca_nfnet_l0" in listed and "24,143,924" in listed and "timm_nf_regnet_b1" in listed
    main(["list", "--pretrained"])
    released = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
                if line.split() and line.split()[-1].startswith("hf-hub:")}
    assert released["eca_nfnet_l0"][1:] == ["82.60", "24,143,924", "288", "-",
                                            "hf-hub:timm/eca_nfnet_l0.ra2_in1k"]
    assert released["nfnet_f0"][-2:] == ["imagenet-f0", "hf-hub:timm/dm_nfnet_f0.dm_in1k"]
    assert released["nfnet_f6"][-2] == "imagenet-f6"
    assert len(released) == 14  # F0-F6, L0, ECA L0-L2, NF-ResNet-50, NF-RegNet-B1, test_nfnet
