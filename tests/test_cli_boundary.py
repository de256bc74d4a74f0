"""Issue 20: one CLI boundary (rmt.cli.main) turns the project's errors and OS errors on the paths a command was
given into one line, `rmt <command>: error: <message>`, exit status 2; a bug keeps its traceback. Every command
that writes an output folder refuses one holding an earlier result (--overwrite moves it aside) and locks it."""

import errno
import os
import subprocess
import sys

import pytest
import torch

import rmt.training.commands
from rmt.checkpoint import save_model
from rmt.cli import BROKEN_PIPE, main
from rmt.model.config import RMTConfig
from rmt.errors import UsageError
from rmt.model import RMT
from rmt.rundir import claim_folder
from rmt.tokenizer import ByteTokenizer

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = dict(d_model=32, n_prelude=1, n_coda=1, ssm={"head_dim": 16, "chunk": 8},
            product_keys={"n_keys": 8, "heads": 2, "topk": 4, "d_key": 16}, bank={"d_key": 16}, core={"iters": 2})


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------------------------- the boundary
def test_a_project_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def bad(args):
        raise UsageError("--thing: expected a number, got 'x'")

    monkeypatch.setattr(rmt.training.commands, "_presets", bad)
    assert main(["presets"]) == 2
    assert _one_line(capsys) == "rmt presets: error: --thing: expected a number, got 'x'"


def test_system_exit_with_a_message_is_exit_2_too(monkeypatch, capsys):
    def bad(args):
        raise SystemExit("rmt presets: error: something was off")

    monkeypatch.setattr(rmt.training.commands, "_presets", bad)
    assert main(["presets"]) == 2
    assert _one_line(capsys) == "rmt presets: error: something was off"


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def buggy(args):
        return {}["missing"]

    monkeypatch.setattr(rmt.training.commands, "_presets", buggy)
    with pytest.raises(KeyError):
        main(["presets"])

    def os_bug(args):  # an OS error on a path the command was not given is a bug as well
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "elsewhere"))

    monkeypatch.setattr(rmt.training.commands, "_plot", os_bug)
    with pytest.raises(FileNotFoundError):
        main(["plot", str(tmp_path / "run")])


def test_an_os_error_on_a_named_path_is_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(RMT(RMTConfig.from_dict(TINY)), tmp_path / "ckpt", ByteTokenizer())
    out = tmp_path / "results"
    out.write_text("a file where the results folder should go")
    assert main(["eval", "--task", "arithmetic", "--checkpoint", str(tmp_path / "ckpt"), "--limit", "1",
                 "--max-gen-toks", "2", "--out", str(out)]) == 2
    assert _one_line(capsys) == f"rmt eval: error: {out}: File exists"


def test_a_closed_stdout_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "rmt.cli", "presets"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command can write a byte: its first write meets a closed pipe
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == BROKEN_PIPE, err.decode()
    assert err == b""


# ----------------------------------------------------------------------------------------------- config files
@pytest.mark.parametrize("content,needle", [
    (b"", "the file is empty; expected a [model] table and at least one [[stages]] table"),
    (b"# only a comment\n", "the file is empty"),
    (b"seed = 1\n[model]\npreset = \"tiny\"\n", "stages: expected at least one [[stages]] table, found none"),
    (b"seed = 1\n\xf0\x28\x8c\x28 = 2\n", "expected a TOML text file, found a byte that is not UTF-8 (0xf0 at byte 9)"),
    (b"seed = 1\nlog_every = 0\n[[stages]]\nname = 'a'\nsteps = 1\ntasks = { arithmetic = 1.0 }\n",
     "log_every: expected an integer >= 1, got 0"),
])
def test_config_file_errors_name_the_file(tmp_path, capsys, content, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(content)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert _one_line(capsys).startswith(f"rmt train: error: {cfg}: {needle}")
    assert not (tmp_path / "run").exists()  # nothing was written


# ----------------------------------------------------------------------------------------------- output folders
def test_demo_bench_reproduce_refuse_a_folder_with_an_earlier_result(tmp_path, capsys):
    for command, name in (("demo", "report.json"), ("bench", "bench.json"), ("reproduce", "report.json")):
        out = tmp_path / command
        out.mkdir()
        (out / name).write_text("{}")
        assert main([command, "--out", str(out), "--no-progress"] if command != "bench" else
                    [command, "--out", str(out)]) == 2, command
        line = _one_line(capsys)
        assert line.startswith(f"rmt {command}: error: --out {out}: already holds another run ({name})"), line
        assert "--overwrite" in line
        assert (out / name).read_text() == "{}"


def test_reproduce_refuses_another_plans_folder(tmp_path, capsys):
    (tmp_path / "plan.json").write_text('{"another": "plan"}\n')
    assert main(["reproduce", "--out", str(tmp_path), "--quick", "--no-progress"]) == 2
    assert "holds results of a different plan" in _one_line(capsys)


def test_export_and_memory_build_claim_their_folders(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(RMT(RMTConfig.from_dict(TINY)), tmp_path / "ckpt", ByteTokenizer())
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")  # an earlier export
    assert main(["export", "--hf", str(tmp_path / "ckpt"), str(hf)]) == 2
    assert _one_line(capsys).startswith(f"rmt export: error: --hf RUN {hf}: already holds another run (config.json)")
    facts = tmp_path / "facts.txt"
    facts.write_text("a fact\n")
    with claim_folder(tmp_path / "bank"):  # another writer holds the bank folder
        assert main(["memory", "build", "--facts", str(facts), "--checkpoint", str(tmp_path / "ckpt"),
                     "--out", str(tmp_path / "bank")]) == 2
    assert f"process {os.getpid()} is writing this run folder" in _one_line(capsys)


# ----------------------------------------------------------------------------------------------- data files
def test_binary_and_empty_data_files_name_the_file(tmp_path, capsys):
    binary, empty = tmp_path / "preds.jsonl", tmp_path / "empty.jsonl"
    binary.write_bytes(b'{"prediction": "1"}\n\xf0\x9f\x98\n')
    empty.write_bytes(b"")
    assert main(["score", "gsm8k", "--predictions", str(binary), "--data", str(empty)]) == 2
    assert _one_line(capsys).startswith(f"rmt score: error: {binary}, line 2: not valid UTF-8")
    assert main(["score", "gsm8k", "--predictions", str(empty), "--data", str(empty)]) == 2
    assert _one_line(capsys).startswith(f"rmt score: error: {empty}: no records (the file is empty or blank)")
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"")
    assert main(["data", "show", "text", "--path", str(text)]) == 2
    assert _one_line(capsys) == f"rmt data show: error: {text}: the file is empty; expected a plain UTF-8 text file"
    folder = tmp_path / "facts"
    folder.mkdir()
    (folder / "country-codes.csv").write_bytes(b"Name,Capital\n\xff\xfe\n")
    assert main(["data", "show", "facts-real", "--path", str(folder)]) == 2
    assert _one_line(capsys).startswith(f"rmt data show: error: {folder / 'country-codes.csv'}: not valid UTF-8")


def test_training_on_an_empty_train_file_is_refused_by_name(tmp_path, capsys):
    data = tmp_path / "gsm8k"
    data.mkdir()
    (data / "train.jsonl").write_bytes(b"")
    (data / "test.jsonl").write_bytes(b"")
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[model]\npreset = "tiny"\n[tasks.gsm8k]\npath = "{data}"\n'
                   '[[stages]]\nname = "a"\nsteps = 1\ntasks = { gsm8k = 1.0 }\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert _one_line(capsys).startswith(f"rmt train: error: tasks.gsm8k: {data / 'train.jsonl'}: no records")
    assert not (tmp_path / "run").exists()
