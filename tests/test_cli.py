"""The train command: JSON output, exit codes and bad input."""

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from neurodeploy.cli import main

from conftest import TINY


def tiny_args(tmp_path, corpus_file):
    args = ["train", "--corpus", str(corpus_file), "--out",
            str(tmp_path / "run"), "--no-progress", "--json"]
    for assignment in TINY:
        args += ["--set", assignment]
    return args


def test_train_json_summary(tmp_path, corpus_file):
    result = CliRunner().invoke(
        main, tiny_args(tmp_path, corpus_file))
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["checkpoint"] == str(tmp_path / "run" / "checkpoint.pt")
    assert summary["steps"] == 4
    assert summary["val_bpc"] > 0


def test_train_arch_and_steps_options(tmp_path, corpus_file):
    args = tiny_args(tmp_path, corpus_file) + ["--arch", "ann", "--steps", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["arch"] == "ann"
    assert summary["steps"] == 2


@pytest.mark.parametrize("extra,message", [
    (["--set", "d_model=-8"], "invalid d_model=-8"),
    (["--set", "colour=blue"], "unknown spec field 'colour'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--resume"], "no checkpoint"),
    (["--set", "token_encoding='one_hot'"], "token_encoding=one_hot needs"),
])
def test_bad_input_exits_2(tmp_path, corpus_file, extra, message):
    result = CliRunner().invoke(
        main, tiny_args(tmp_path, corpus_file) + extra)
    assert result.exit_code == 2
    assert message in result.stderr
    assert message in json.loads(result.stdout)["error"]


def test_missing_corpus_exits_2(tmp_path):
    result = CliRunner().invoke(
        main, ["train", "--corpus", str(tmp_path / "none.txt"), "--out",
               str(tmp_path)])
    assert result.exit_code == 2
    assert "corpus not found" in result.stderr


def test_cli_script_equals_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "cli.py", "train", "--help"], capture_output=True,
        text=True, cwd=__file__.rsplit("/tests/", 1)[0], timeout=120)
    assert result.returncode == 0
    assert "--resume" in result.stdout


@pytest.mark.parametrize("stop_at, message", [
    (3, r"interrupted after step 3; the checkpoint .*checkpoint\.pt is from "
        r"step 2 \(1 steps earlier\): rerun the same command with --resume"),
    (1, r"interrupted after step 1, before the first checkpoint \(one every "
        r"2 steps\); nothing to resume, so rerun without --resume"),
], ids=["after_checkpoint", "before_checkpoint"])
def test_ctrl_c_names_checkpoint_step(tmp_path, corpus_file, monkeypatch,
                                      stop_at, message):
    from neurodeploy import train as trainer
    real_step = trainer._Run.step

    def step_or_ctrl_c(self, step):
        if step == stop_at:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(trainer._Run, "step", step_or_ctrl_c)
    result = CliRunner().invoke(main, tiny_args(tmp_path, corpus_file))
    assert result.exit_code == 130
    assert re.search(message, result.stderr), result.stderr


def test_resume_finished_run_trains_nothing(tmp_path, corpus_file, caplog):
    args = tiny_args(tmp_path, corpus_file)
    assert CliRunner().invoke(main, args).exit_code == 0
    plain = [arg for arg in args if arg != "--json"] + ["--resume"]
    with caplog.at_level("INFO", logger="neurodeploy.train"):
        result = CliRunner().invoke(main, plain)
    assert result.exit_code == 0, result.stderr
    assert "throughput: no step trained" in result.stdout
    assert "nothing to train" in caplog.text
