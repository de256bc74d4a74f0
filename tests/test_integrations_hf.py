"""Hugging Face adapter: same logits as the native model, save -> Auto load -> generate round trip, export."""

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from rmt.checkpoint import save_model  # noqa: E402
from rmt.cli import main  # noqa: E402
from rmt.config import RMTConfig  # noqa: E402
from rmt.integrations.hf import RMTForCausalLM, RMTHFConfig, from_native, load_rmt_tokenizer  # noqa: E402
from rmt.model import RMT  # noqa: E402
from rmt.tokenizer import ByteTokenizer  # noqa: E402

TINY = dict(d_model=32, n_prelude=1, n_coda=1, mem_n_keys=8, mem_topk=4, mem_d_key=16, explicit_d_key=16,
            ssm_head_dim=16, think_iters=2)


@pytest.fixture(scope="module")
def native() -> RMT:
    torch.manual_seed(0)
    return RMT(RMTConfig(**TINY)).eval()


def test_logits_equal_the_native_model(native):
    hf = from_native(native)
    idx = torch.randint(0, 256, (2, 13))
    assert torch.equal(hf(idx).logits, native(idx).logits)
    assert torch.equal(hf(idx, logits_to_keep=1).logits[:, 0], native(idx).logits[:, -1])


def test_save_load_generate_round_trip(native, tmp_path):
    hf = from_native(native, ByteTokenizer())
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "rmt"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, RMTForCausalLM)
    idx = torch.randint(0, 256, (3, 9))
    assert torch.equal(loaded(idx).logits, native(idx).logits)
    # Greedy generate through transformers equals RMT.generate (prefill + step on the native cache).
    out = loaded.generate(idx, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=256)
    ref = native.generate(idx, 12)
    assert torch.equal(out[:, 9:], ref.tokens)


def test_generate_reads_the_prompt_once_and_steps_one_token_at_a_time(native, monkeypatch):
    hf = from_native(native)
    calls = {"forward": 0, "prefill": [], "step": 0}
    real_forward, real_prefill, real_step = RMT.forward, RMT.prefill, RMT.step

    def forward(self, *a, **k):
        calls["forward"] += 1
        return real_forward(self, *a, **k)

    def prefill(self, idx, *a, **k):
        calls["prefill"].append(idx.shape[1])
        return real_prefill(self, idx, *a, **k)

    def step(self, token, *a, **k):
        assert token.dim() == 1  # one token per row, never the prefix
        calls["step"] += 1
        return real_step(self, token, *a, **k)

    monkeypatch.setattr(RMT, "forward", forward)
    monkeypatch.setattr(RMT, "prefill", prefill)
    monkeypatch.setattr(RMT, "step", step)
    idx = torch.randint(0, 256, (1, 20))
    hf.generate(idx, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=256)
    assert calls == {"forward": 0, "prefill": [20], "step": 5}


def test_padding_is_refused_with_a_clear_error(native):
    hf = from_native(native)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        hf(torch.zeros(2, 5, dtype=torch.long), attention_mask=mask)


def test_bad_config_value_names_the_field():
    with pytest.raises(ValueError, match="mem_d_key"):
        RMTHFConfig(**{**TINY, "mem_d_key": 15})


def test_rmt_export_hf_converts_a_run(native, tmp_path):
    save_model(native, tmp_path / "run" / "checkpoint", ByteTokenizer())
    assert main(["export", "--hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    idx = torch.randint(0, 256, (1, 7))
    assert torch.equal(loaded(idx).logits, native(idx).logits)
    assert loaded.config.eos_token_id == ByteTokenizer.eos_id
    assert isinstance(load_rmt_tokenizer(tmp_path / "hf"), ByteTokenizer)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        main(["export", "--hf", str(tmp_path), str(tmp_path / "hf2")])
