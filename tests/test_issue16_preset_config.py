"""Issue 16, item 4: a typo in a `[model]` key of a config that uses a preset is the same clean one-line error,
naming the file and the key, as without a preset (the shipped configs all use one)."""

import re
from pathlib import Path

import pytest

from rmt.cli import main
from rmt.model.config import ConfigError
from rmt.model.presets import PRESETS, preset
from rmt.training.run import RunConfig

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


def _typo_config(tmp_path: Path, with_preset: bool) -> Path:
    text = DEMO.read_text()
    assert '\npreset = "tiny"\n' in text
    text = text.replace('\npreset = "tiny"\n', '\npreset = "tiny"\nd_modl = 64\n' if with_preset else "\nd_modl = 64\n")
    path = tmp_path / ("demo.toml" if with_preset else "no_preset.toml")
    path.write_text(text)
    return path


@pytest.mark.parametrize("with_preset", [True, False])
def test_model_key_typo_names_file_and_key(tmp_path, with_preset):
    path = _typo_config(tmp_path, with_preset)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} \[model\]: unknown model key\(s\) "
                                          rf"\['d_modl'\]; known keys: "):
        RunConfig.from_toml(str(path), [])


def test_rmt_train_reports_the_preset_typo_in_one_line(tmp_path, capsys):
    path = _typo_config(tmp_path, with_preset=True)
    assert main(["train", "--config", str(path), "--max-steps", "1", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{path} [model]: unknown model key(s) ['d_modl']; known keys: [" in err and "'d_model'" in err


def test_preset_errors_are_config_errors():
    with pytest.raises(ConfigError, match=r"^unknown model key\(s\) \['d_modl', 'n_layrs'\]; known keys: "):
        preset("tiny", {"d_modl": 64, "n_layrs": 2})
    with pytest.raises(ConfigError, match="unknown preset 'tinyy'; known presets"):
        preset("tinyy")
    with pytest.raises(ConfigError, match=r"unknown preset \['tiny'\]"):  # a TOML list, not a name
        preset(["tiny"])
    with pytest.raises(ConfigError, match=r"model\.d_model"):  # a known key's bad value: the field's own check
        preset("tiny", {"d_model": "64"})
    with pytest.raises(ConfigError, match=r"unknown model\.core key\(s\) \['itres'\]"):  # a typo in a section
        preset("tiny", {"core": {"itres": 3}})
    assert preset("tiny", {"core": {"iters": 3}}).core.iters == 3 and preset("tiny").d_model == PRESETS["tiny"]["d_model"]
    assert preset("tiny", {"think_iters": 3}).core.iters == 3  # the flat form of older configs still works
