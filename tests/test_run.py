"""`rmt train`: configs, checkpoints, exact resume after SIGKILL, errors that name the problem."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmt.checkpoint import load_model
from rmt.cli import main
from rmt.model.config import ConfigError
from rmt.training.run import RunConfig

CONFIG = """
seed = 3
checkpoint_every = 5
log_every = 5
[model]
d_model = 32
ssm_head_dim = 16
ssm_chunk = 16
mem_n_keys = 8
mem_heads = 2
mem_topk = 4
mem_d_key = 16
explicit_d_key = 16
n_prelude = 1
n_coda = 1
think_iters = 2
[tasks.arithmetic]
n_train = 2000
n_validation = 10
n_test = 20
[tasks.facts-synthetic]
n_entities = 40
n_validation = 10
[[stages]]
name = "facts"
steps = 8
tasks = { "facts-synthetic" = 1.0 }
batch_size = 8
frozen = ["router"]
[[stages]]
name = "math"
steps = 40
tasks = { "arithmetic" = 0.5, "facts-synthetic" = 0.5 }
batch_size = 8
think_iters_max = 2
"""


@pytest.fixture
def config_file(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(CONFIG)
    return p


def _rmt(*args, check=True):
    return subprocess.run([sys.executable, "-m", "rmt.cli", *args], capture_output=True, text=True, check=check)


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))


# Runs `rmt train` in a child process that SIGKILLs itself in the middle of writing one checkpoint (its weights
# written, its training state not yet): a kill at a known point, so the test does not race the run's speed.
_KILL_MID_CHECKPOINT = """
import os, signal, sys
import rmt.training.run as run

write_state = run.save_training_state

def dying_write(state, directory):
    if state["global_step"] == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    write_state(state, directory)

run.save_training_state = dying_write
from rmt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_to_identical_weights(config_file, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _rmt("train", "--config", str(config_file), "--out", str(full), "--no-progress")

    proc = subprocess.run([sys.executable, "-c", _KILL_MID_CHECKPOINT, "train", "--config", str(config_file),
                           "--out", str(killed), "--no-progress"], env={**os.environ, "KILL_AT_STEP": "20"},
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the half-written step-20 checkpoint never became `latest`
    assert os.readlink(killed / "checkpoints" / "latest") == "step-0000015"

    _rmt("train", "--resume", str(killed), "--no-progress")
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert os.readlink(killed / "checkpoints" / "latest") == "step-0000048"


def test_max_steps_then_resume_and_metrics(config_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--out", str(out), "--max-steps", "6", "--no-progress"]) == 0
    assert os.readlink(out / "checkpoints" / "latest") == "step-0000006"
    state = json.loads((out / "checkpoints" / "latest" / "training_state.json").read_text())
    assert (state["stage_index"], state["stage_step"], state["global_step"]) == (0, 6, 6)
    seconds_at_6 = state["train_seconds"]
    assert seconds_at_6 > 0
    assert main(["train", "--resume", str(out), "--max-steps", "12", "--no-progress"]) == 0
    state = json.loads((out / "checkpoints" / "latest" / "training_state.json").read_text())
    assert (state["stage_index"], state["stage_step"], state["global_step"]) == (1, 4, 12)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # every log_every steps, at each stage's end and where --max-steps stopped the run
    assert [r["step"] for r in rows] == [5, 6, 8, 10, 12]
    # the optimizer-step clock continues across the resume instead of restarting at zero
    assert rows[2]["elapsed_s"] > seconds_at_6
    assert all({"loss", "lr", "tokens_per_s", "think_iters", "router_think"} <= set(r) for r in rows)
    # old checkpoints are pruned to keep_checkpoints (3 by default)
    assert len(list((out / "checkpoints").glob("step-*"))) <= 3
    assert main(["plot", str(out)]) == 0
    assert (out / "training.png").stat().st_size > 1000


def test_validation_loss_is_logged_with_training_seconds(config_file, tmp_path):
    config_file.write_text("eval_every = 4\neval_rows = 16\n" + CONFIG)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--out", str(out), "--max-steps", "8", "--no-progress"]) == 0
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert all(r["val_loss"] > 0 and r["val_task"] == "arithmetic" for r in evals)
    assert 0 < evals[0]["elapsed_s"] < evals[1]["elapsed_s"]


def test_corrupt_checkpoint_is_reported_and_nothing_is_lost(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--config", str(config_file), "--out", str(out), "--max-steps", "10", "--no-progress"])
    older = out / "checkpoints" / "step-0000005"
    latest = out / "checkpoints" / "latest" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:1000])
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert (older / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()


def test_checkpoint_from_another_config_is_refused(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--config", str(config_file), "--out", str(out), "--max-steps", "5", "--no-progress"])
    cfg = json.loads((out / "run_config.json").read_text())
    cfg["model"]["core"]["iters"] = 3
    (out / "run_config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    assert "another model config" in capsys.readouterr().err


@pytest.mark.parametrize("edit,needle", [
    (("seed = 3", "seed = 3\nsede = 4"), "sede"),
    (("d_model = 32", "d_modl = 32"), "d_modl"),
    (("steps = 8", "steps = 0"), "steps"),
    (("steps = 8", "steps = \"eight\""), "steps"),
    (('"facts-synthetic" = 1.0 }\nbatch_size = 8\nfrozen', '"fact-synthetic" = 1.0 }\nbatch_size = 8\nfrozen'),
     "fact-synthetic"),
    (("batch_size = 8\nfrozen", "batchsize = 8\nfrozen"), "batchsize"),
])
def test_config_typos_name_the_key(config_file, edit, needle):
    config_file.write_text(CONFIG.replace(*edit, 1))
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_toml(config_file)


def test_set_overrides(config_file):
    cfg = RunConfig.from_toml(config_file, ["model.d_model=64", "stages.1.steps=7", "seed=9"])
    assert cfg.model.d_model == 64 and cfg.stages[1].steps == 7 and cfg.seed == 9
    with pytest.raises(ConfigError, match="no item"):
        RunConfig.from_toml(config_file, ["stages.5.steps=7"])


def test_shipped_configs_are_valid():
    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("**/*.toml"))
    assert configs
    for path in configs:
        RunConfig.from_toml(path)


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "small", "base", "1b", "8b", "70b"):
        assert f"| {name} |" in out


def test_tensorboard_events_when_installed(config_file, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--out", str(out), "--max-steps", "5", "--no-progress"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_shipped_configs_build_their_tasks():
    """Every task a shipped config names can be built with its settings (seed only where a task has one).
    Tasks read from ../shared/data are checked only where that folder exists."""
    from rmt.training.run import task_settings
    from rmt.tasks import data_dir, get_task

    file_tasks = {"facts-real", "gsm8k", "triviaqa", "text"}

    for path in sorted(Path(__file__).parent.parent.joinpath("configs").glob("**/*.toml")):
        cfg = RunConfig.from_toml(path)
        for name in sorted({t for s in cfg.stages for t in s.tasks}):
            if name == "arithmetic":
                continue  # 100k+ problems: built in the demo and the other tests
            if name in file_tasks and not data_dir().is_dir():
                continue
            assert get_task(name, **task_settings(cfg, name)).split("train"), (path, name)


@pytest.mark.parametrize("edit,needle", [
    (("[tasks.arithmetic]", "[tasks.arithmetc]"), "arithmetc"),
    (('frozen = ["router"]', 'frozen = ["ruoter"]'), "ruoter"),
    (("seed = 3", 'seed = "x"'), "seed"),
])
def test_more_config_mistakes_are_caught_up_front(config_file, edit, needle):
    config_file.write_text(CONFIG.replace(*edit, 1))
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_toml(config_file)


def test_resume_refuses_flags_it_would_ignore(config_file, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--seed", "4"]) == 2
    assert "drop --seed" in capsys.readouterr().err


def test_a_bpe_run_learns_its_tokenizer_sizes_the_model_and_resumes_with_it(tmp_path):
    """[tokenizer] kind = "bpe": learned from the run's training texts, saved in every checkpoint, its vocabulary
    the model's; a resumed run reads it back (never retrains it) and ends with the weights of an unbroken run."""
    config = tmp_path / "bpe.toml"
    config.write_text(CONFIG.replace("[model]", '[tokenizer]\nkind = "bpe"\nvocab_size = 400\n[model]'))
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["train", "--config", str(config), "--out", str(full), "--no-progress"]) == 0
    model, tok = load_model(full / "checkpoints" / "latest")
    assert type(tok).__name__ == "BPETokenizer" and model.config.vocab_size == tok.vocab_size <= 400
    assert model.config.pad_id == tok.pad_id and len(tok.encode(" 12 apples")) < len(" 12 apples")
    assert json.loads((full / "run_config.json").read_text())["model"]["vocab_size"] == tok.vocab_size
    assert main(["train", "--config", str(config), "--out", str(split), "--max-steps", "12", "--no-progress"]) == 0
    assert main(["train", "--resume", str(split), "--no-progress"]) == 0
    a, b = _weights(full), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the answer generator reads the run's own tokenizer from the checkpoint
    assert main(["generate", "--checkpoint", str(full), "--prompt", "Q: 1 + 2? A:", "--max-new-tokens", "3"]) == 0


@pytest.mark.parametrize("table,match", [('kind = "words"', "tokenizer.kind"), ("vocab_size = 10", "tokenizer.vocab_size"),
                                         ("size = 3", r"unknown key\(s\) \['size'\]")])
def test_a_bad_tokenizer_table_names_the_file_and_field(config_file, table, match):
    config_file.write_text(CONFIG.replace("[model]", f"[tokenizer]\n{table}\n[model]"))
    with pytest.raises(ConfigError, match=rf"{config_file} \[tokenizer\]: .*{match}"):
        RunConfig.from_toml(config_file)
