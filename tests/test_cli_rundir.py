"""Issue 20: a run folder belongs to one run. Re-running into it is refused (old run intact), --overwrite moves the
old run aside, a second writer is refused while the first is unaffected, a SIGKILLed run leaves no stale lock,
and an unusable output folder is one line with exit status 2.

Processes are paused and killed at known points (SIGSTOP / SIGKILL sent by the run to itself from inside its
checkpoint writer), never raced against the clock."""

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from rmt.cli import main
from rmt.errors import RunFolderError, RunLockedError
from rmt.rundir import LOCK_FILE, claim_folder, holder_pid
from tests.test_run import CONFIG

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# `rmt train` in a child process that sends itself SIG (STOP or KILL) when it is about to write the training
# state of the checkpoint at step AT: its weights for that step are written, `latest` still names the one before.
_SIGNAL_AT_CHECKPOINT = """
import os, signal, sys
import rmt.training.run as run

write_state = run.save_training_state

def write(state, directory):
    if state["global_step"] == int(os.environ["AT_STEP"]):
        os.kill(os.getpid(), getattr(signal, os.environ["SIG"]))
    write_state(state, directory)

run.save_training_state = write
from rmt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def config_file(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(CONFIG)
    return p


def _train(config_file, out, *extra) -> int:
    return main(["train", "--config", str(config_file), "--out", str(out), "--no-progress", *extra])


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file (and symlink target) under folder -> its SHA-256 (or link text)."""
    snap = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            snap[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_rerun_into_an_existing_run_is_refused_and_the_old_run_is_untouched(config_file, tmp_path, capsys):
    run = tmp_path / "R"
    assert _train(config_file, run, "--max-steps", "10") == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(config_file, run, "--max-steps", "5") == 2
    line = _error_line(capsys)
    assert line.startswith(f"rmt train: error: --out {run}: already holds another run")
    assert f"--resume {run}" in line and "--overwrite" in line and "new --out" in line
    assert _snapshot(run) == before  # byte for byte, the lock file included
    assert _steps(run) == [5, 8, 10]


def test_overwrite_moves_the_old_run_aside(config_file, tmp_path, capsys):
    run = tmp_path / "R"
    assert _train(config_file, run, "--max-steps", "10") == 0
    before = _snapshot(run)
    foreign = run / "notes.txt"  # not something `rmt train` writes: stays where it is
    foreign.write_text("mine")
    assert _train(config_file, run, "--max-steps", "5", "--overwrite") == 0
    aside = tmp_path / "R.old-1"
    assert _snapshot(aside) == {k: v for k, v in before.items() if k != LOCK_FILE}
    assert _steps(aside) == [5, 8, 10] and os.readlink(aside / "checkpoints" / "latest") == "step-0000010"
    assert _steps(run) == [5]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000005"]
    assert foreign.read_text() == "mine"
    # a second overwrite picks the next free name
    assert _train(config_file, run, "--max-steps", "5", "--overwrite") == 0
    assert _steps(tmp_path / "R.old-2") == [5] and _steps(aside) == [5, 8, 10]


def test_a_second_writer_is_refused_and_the_first_is_unaffected(config_file, tmp_path, capsys):
    solo, run = tmp_path / "solo", tmp_path / "C"
    assert _train(config_file, solo, "--max-steps", "10") == 0
    first = subprocess.Popen([sys.executable, "-c", _SIGNAL_AT_CHECKPOINT, "train", "--config", str(config_file),
                              "--out", str(run), "--max-steps", "10", "--no-progress"],
                             env={**ENV, "AT_STEP": "5", "SIG": "SIGSTOP"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it has stopped itself (or ended)
        assert os.WIFSTOPPED(status), "the first run ended before its step-5 checkpoint"
        assert holder_pid(run) == first.pid
        capsys.readouterr()
        # another run into the folder, with another seed, and a --resume of it: both refused, naming the holder
        assert _train(config_file, run, "--seed", "4") == 2
        line = _error_line(capsys)
        assert f"--out {run}: process {first.pid} is writing this run folder" in line
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        assert f"--resume {run}: process {first.pid} is writing this run folder" in _error_line(capsys)
    finally:
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert _steps(run) == _steps(solo) == [5, 8, 10]
    a = load_file(str(solo / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_lock_dies_with_a_sigkilled_run_and_resume_cleans_its_temporary_checkpoint(config_file, tmp_path):
    run = tmp_path / "K"
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_AT_CHECKPOINT, "train", "--config", str(config_file),
                             "--out", str(run), "--max-steps", "15", "--no-progress"],
                            env={**ENV, "AT_STEP": "10", "SIG": "SIGKILL"}, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert holder_pid(run) == proc.pid  # the dead run's pid is still written; its lock went with it
    assert os.readlink(run / "checkpoints" / "latest") == "step-0000008"
    assert (run / "checkpoints" / ".tmp-step-0000010").is_dir()  # the interrupted write
    assert main(["train", "--resume", str(run), "--max-steps", "15", "--no-progress"]) == 0
    assert os.readlink(run / "checkpoints" / "latest") == "step-0000015"
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert holder_pid(run) == os.getpid()  # the resumed run held it (this process)


def test_the_lock_is_an_os_lock_released_on_close(tmp_path):
    with claim_folder(tmp_path / "x") as held:
        with pytest.raises(RunLockedError) as e:
            claim_folder(tmp_path / "x")  # another open file description: refused, even in this process
        assert e.value.pid == os.getpid()
    claim_folder(tmp_path / "x").release()  # released: claimable again
    assert held.moved_to is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_torchrun_rank_0_is_refused_and_every_rank_stops(config_file, tmp_path):
    run = tmp_path / "T"
    with claim_folder(run):  # this test process holds the folder
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "rmt.cli", "train",
                               "--config", str(config_file), "--out", str(run), "--no-progress"],
                              env=ENV, capture_output=True, text=True, timeout=300)  # the timeout bounds a hang only
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"process {os.getpid()} is writing this run folder" in out
    assert "rank 1 stops" in out
    assert not (run / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------- bad output folders
def test_out_naming_a_file_or_a_path_under_a_file(config_file, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert _train(config_file, f) == 2
    assert _error_line(capsys) == f"rmt train: error: --out {f}: expected a folder, found a file"
    assert _train(config_file, f / "sub") == 2
    assert f"cannot create the folder: {f} is a file" in _error_line(capsys)
    assert f.read_text() == "x"


def test_read_only_output_folder(config_file, tmp_path, capsys, monkeypatch):
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert _train(config_file, tmp_path / "ro" / "run") == 2
    line = _error_line(capsys)
    out = tmp_path / "ro" / "run"
    assert line == f"rmt train: error: --out {out}: cannot create the folder (Read-only file system)"


def test_disk_full_during_a_checkpoint(config_file, tmp_path, capsys, monkeypatch):
    import rmt.checkpoint

    real, calls = rmt.checkpoint.save_file, []

    def full_after_two_checkpoints(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 4:  # weights + training state per checkpoint
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(rmt.checkpoint, "save_file", full_after_two_checkpoints)
    run = tmp_path / "F"
    assert _train(config_file, run) == 2
    assert _error_line(capsys) == (f"rmt train: error: {run}: cannot write checkpoint step-0000010: No space left on "
                                   "device; checkpoints/latest is still step-0000008")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000005", "step-0000008"]
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--max-steps", "12", "--no-progress"]) == 0


def test_metrics_write_error_names_the_folder(config_file, tmp_path, capsys, monkeypatch):
    import rmt.training.run

    real = rmt.training.run.json.dumps

    def dumps(obj, *a, **k):
        if isinstance(obj, dict) and "loss" in obj:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, *a, **k)

    monkeypatch.setattr(rmt.training.run.json, "dumps", dumps)
    assert _train(config_file, tmp_path / "M", "--max-steps", "5") == 2
    assert _error_line(capsys) == (f"rmt train: error: {tmp_path / 'M'}: cannot write metrics.jsonl: No space left "
                                   "on device")


def test_claim_folder_refuses_with_what_it_found(tmp_path):
    (tmp_path / "bench.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"already holds another run \(bench.json\)"):
        claim_folder(tmp_path, markers=("bench.json", "bench.png"))
    with claim_folder(tmp_path, markers=("bench.json",), overwrite=True) as folder:
        assert folder.moved_to == tmp_path.with_name(tmp_path.name + ".old-1")
        assert (folder.moved_to / "bench.json").read_text() == "{}"
