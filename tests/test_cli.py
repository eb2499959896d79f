"""The train command: JSON output, exit codes and bad input."""

import json
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
