"""Checkpoints saved before the package was restructured (flat config, old weight names) still load, with the
same logits up to float rounding; the one removed option is refused with a message that says what to do.

The logits are compared with a 1e-5 tolerance, not bit for bit: the fixtures were written on another machine, and
CPU kernels pick different summation orders on different hosts (measured: up to 4.5e-7 apart). A weight that
migrates to the wrong place moves the logits by far more than that (the test below checks it does)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmt.checkpoint import CheckpointError, load_model
from rmt.model import ConfigError, RMTConfig
from rmt.model.config import migrate_flat
from rmt.tasks.image_encoder import ImageBank

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v0"


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_tolerance_catches_a_misplaced_weight():
    """Swapping two same-shaped weights, as a wrong name mapping would, moves the logits far past 1e-5."""
    model, _ = load_model(FIXTURES / "text")
    model.eval()
    expected = load_file(str(FIXTURES / "text" / "expected.safetensors"))
    params = dict(model.named_parameters())
    a, b = params["prelude.0.mixer.out_proj.weight"], params["prelude.0.mlp.down.weight"]  # both (32, 64)
    with torch.no_grad():
        a_copy = a.clone()
        a.copy_(b)
        b.copy_(a_copy)
        with pytest.raises(AssertionError):
            close(model(expected["idx"], memory=False).logits, expected["logits_no_memory"])


@pytest.mark.parametrize("name", ["text", "visual"])
def test_old_checkpoint_loads_with_identical_logits(name):
    model, tok = load_model(FIXTURES / name)
    model.eval()
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    idx = expected["idx"]
    with torch.no_grad():
        bank = ImageBank(expected["images"]).build(model)[0] if name == "visual" else None
        close(model(idx, explicit_bank=bank).logits, expected["logits"])
        close(model(idx, memory=False).logits, expected["logits_no_memory"])
        close(model(idx, think_iters=0, explicit_bank=bank).logits, expected["logits_k0"])
    assert tok is not None and tok.decode(tok.encode("Q: 3 + 4? A:")) == "Q: 3 + 4? A:"


def test_flat_config_migrates_to_the_sections():
    flat = json.loads((FIXTURES / "visual" / "config.json").read_text())
    cfg = RMTConfig.from_dict(flat)
    assert (cfg.product_keys.n_keys, cfg.bank.read, cfg.bank.sink) == (flat["mem_n_keys"], "softmax", True)
    assert (cfg.reader.query_ema, cfg.reader.query_state, cfg.reader.core_reads) == (16, False, True)
    assert cfg.encoders == {"image": {"type": "image-patches", "image_size": 20, "patch": 5, "channels": 8,
                                      "stem": "conv", "conv_layers": 2, "recon": 1.0}}
    assert cfg.core.iters == flat["think_iters"]
    assert RMTConfig.from_dict(cfg.to_dict()) == cfg  # and the nested form round-trips


def test_a_removed_option_that_was_on_is_refused_and_one_that_was_off_is_dropped(tmp_path):
    flat = json.loads((FIXTURES / "visual" / "config.json").read_text())
    assert "core_read_distance" not in migrate_flat({**flat, "core_read_distance": False})
    with pytest.raises(ConfigError, match="core_read_distance = True is no longer supported: it was measured"):
        RMTConfig.from_dict({**flat, "core_read_distance": True})
    d = tmp_path / "old"
    shutil.copytree(FIXTURES / "visual", d)
    (d / "config.json").write_text(json.dumps({**flat, "core_read_distance": True}))
    with pytest.raises(CheckpointError, match=r"config\.json.*core_read_distance.*commit 6491e24"):
        load_model(d)


def test_a_typo_in_a_section_names_the_section_and_its_keys():
    with pytest.raises(ConfigError, match=r"unknown model\.core key\(s\) \['itres'\]; known keys: \['mixer', 'n_layers', 'iters'"):
        RMTConfig.from_dict({"core": {"itres": 3}})
    with pytest.raises(ConfigError, match=r"model\.core: expected a table"):
        RMTConfig.from_dict({"core": 3})
