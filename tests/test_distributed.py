"""Two processes with torchrun (gloo, CPU) train to the same weights as one process with the whole batch."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_run import CONFIG

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, *args: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "rmt.cli", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _short_config(tmp_path: Path, steps: int) -> Path:
    p = tmp_path / "ddp.toml"
    p.write_text(CONFIG.replace("steps = 8", "steps = 3").replace("steps = 40", f"steps = {steps}"))
    return p


def _one_process(cfg: Path, out: Path) -> None:
    one = subprocess.run([sys.executable, "-m", "rmt.cli", "train", "--config", str(cfg), "--out", str(out),
                          "--no-progress"], env=ENV, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr


def test_two_process_ddp_matches_one_process(tmp_path):
    cfg = _short_config(tmp_path, steps=3)
    _one_process(cfg, tmp_path / "one")
    proc = _torchrun(2, "train", "--config", str(cfg), "--out", str(tmp_path / "two"), "--no-progress")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    a = load_file(str(tmp_path / "one" / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "latest" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(d.name))
    return kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_dying_rank_stops_the_run_instead_of_hanging(tmp_path):
    cfg = _short_config(tmp_path, steps=100000)
    run = tmp_path / "run"
    proc = _torchrun(2, "train", "--config", str(cfg), "--out", str(run), "--no-progress")
    # Wait for an event, not for a time: the first metrics row means both ranks are in the training loop, with
    # collectives in flight. The deadline only bounds a hang, it is not a speed requirement.
    deadline = time.monotonic() + 600
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) == 2, "torchrun did not get two workers into the training loop"
    os.kill(workers[1], signal.SIGKILL)
    try:
        proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the surviving rank hung after the other one died")
    assert proc.returncode != 0


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))


def test_two_process_fsdp2_matches_one_process_and_resumes(tmp_path):
    """FSDP2 (`fully_shard`, gloo on the CPU): same weights as one process; a capped run resumed under FSDP2
    continues to the same end."""
    cfg = _short_config(tmp_path, steps=3)
    fsdp_cfg = tmp_path / "fsdp.toml"
    fsdp_cfg.write_text('parallel = "fsdp"\n' + cfg.read_text())
    _one_process(cfg, tmp_path / "one")
    proc = _torchrun(2, "train", "--config", str(fsdp_cfg), "--out", str(tmp_path / "fsdp"), "--no-progress")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "fsdp")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)

    resumed = tmp_path / "resumed"
    proc = _torchrun(2, "train", "--config", str(fsdp_cfg), "--out", str(resumed), "--max-steps", "4",
                     "--no-progress")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    proc = _torchrun(2, "train", "--resume", str(resumed), "--no-progress")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    c = _weights(resumed)
    for k in a:
        torch.testing.assert_close(c[k], a[k], atol=1e-5, rtol=0, msg=k)
