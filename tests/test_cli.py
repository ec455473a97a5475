import json

import pytest

from normfree.cli import main


def test_train_debug_and_eval_in_process(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "debug", "--out-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test top-1" in printed
    result = json.loads((out / "results.json").read_text())
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json",
                 str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["top1"] == pytest.approx(result["test_top1"])


def test_unknown_flag_and_bad_value_are_named(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--learning-rate", "0.1"])
    assert "--learning-rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--lr", "fast"])
    assert "--lr" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install -y dataset-fashion-mnist" in err and "Traceback" not in err


def test_list_prints_models_with_params(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nfnet_f0" in out and "71,489,284" in out and "12.38" in out
