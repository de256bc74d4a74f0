"""Hugging Face adapter: same logits as the native model, save -> Auto load -> generate round trip, export."""

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from rmt.checkpoint import save_model  # noqa: E402
from rmt.cli import main  # noqa: E402
from rmt.model.config import RMTConfig  # noqa: E402
from rmt.integrations.hf import (  # noqa: E402
    RMTForCausalLM, RMTHFConfig, export_checkpoint, from_native, load_rmt_tokenizer)
from rmt.model import RMT  # noqa: E402
from rmt.tokenizer import ByteTokenizer  # noqa: E402

TINY = dict(d_model=32, n_prelude=1, n_coda=1, ssm={"head_dim": 16}, product_keys={"n_keys": 8, "topk": 4, "d_key": 16},
            bank={"d_key": 16}, core={"iters": 2})


@pytest.fixture(scope="module")
def native() -> RMT:
    torch.manual_seed(0)
    return RMT(RMTConfig.from_dict(TINY)).eval()


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
    with pytest.raises(ValueError, match=r"model\.product_keys\.d_key"):
        RMTHFConfig(**{**TINY, "product_keys": {**TINY["product_keys"], "d_key": 15}})


def test_rmt_export_hf_converts_a_run(native, tmp_path):
    save_model(native, tmp_path / "run" / "checkpoint", ByteTokenizer())
    assert main(["export", "--hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    idx = torch.randint(0, 256, (1, 7))
    assert torch.equal(loaded(idx).logits, native(idx).logits)
    assert loaded.config.eos_token_id == ByteTokenizer.eos_id
    assert isinstance(load_rmt_tokenizer(tmp_path / "hf"), ByteTokenizer)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):  # (the CLI reports it in one line)
        export_checkpoint(tmp_path, tmp_path / "hf2")


# --------------------------------------------------------------------------- a folder that loads without rmt imports
# Issue 16: `rmt export --hf` folders load the way transformers users load custom models, in a fresh Python.

ROUND_TRIP_TEXTS = ["Q: 2 + 2 = ?\nA: 4\n", "héllo wörld, 漢字 🙂", "  spaces  . , ! ?  ", "<pad> is text too",
                    "\n\n\tTabs\r\n", "Question: Janet’s ducks lay 16 eggs.\nAnswer:"]
PROMPT = "Q: What is 3 + 4?\nA:"

FRESH_PYTHON = r'''
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer

folders, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
# The tokenizers first, in the plain form (no trust_remote_code): they must not need rmt at all.
toks = {name: AutoTokenizer.from_pretrained(folder) for name, folder in folders.items()}
tok_modules = sorted(m for m in sys.modules if m == "rmt" or m.startswith("rmt."))
report = {}
for name, folder in folders.items():
    tok = toks[name]
    ids = [tok(t)["input_ids"] for t in texts]
    decoded = [tok.decode(i, skip_special_tokens=True) for i in ids]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    prompt = tok(sys.argv[3], return_tensors="pt").input_ids
    n = prompt.shape[1]
    free = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, n:].tolist()
    stopped = model.generate(prompt, max_new_tokens=12, do_sample=False)[0, n:].tolist()  # eos from the folder
    eos = model.generation_config.eos_token_id
    answer = tok.decode(stopped[:stopped.index(eos)] if eos in stopped else stopped, skip_special_tokens=True)
    tok2 = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    report[name] = {"tokenizer_class": type(tok).__name__, "modules_after_tokenizer": tok_modules,
                    "model_module": type(model).__module__, "ids": ids, "decoded": decoded,
                    "prompt": prompt[0].tolist(), "free": free, "answer": answer, "eos": eos,
                    "ids_trusted": [tok2(t)["input_ids"] for t in texts]}
print("\nREPORT " + json.dumps(report))
'''


def _bpe_tokenizer():
    from rmt.tokenizer import BPETokenizer

    corpus = ["Q: What is 3 + 4?\nA: 7\n", "The quick brown fox jumps over the lazy dog.\n", "héllo wörld\n"] * 20
    return BPETokenizer.train(corpus, vocab_size=300)


def test_exported_folder_loads_in_a_fresh_python_like_any_custom_model(native, tmp_path, capsys):
    import json
    import os
    import subprocess
    import sys

    bpe = _bpe_tokenizer()
    torch.manual_seed(1)
    bpe_model = RMT(RMTConfig.from_dict({**TINY, "vocab_size": bpe.vocab_size, "pad_id": bpe.pad_id})).eval()
    runs = {"byte": (native, ByteTokenizer()), "bpe": (bpe_model, bpe)}
    folders, expected = {}, {}
    for name, (model, tok) in runs.items():
        save_model(model, tmp_path / name / "checkpoint", tok)
        assert main(["export", "--hf", str(tmp_path / name), str(tmp_path / f"{name}-hf")]) == 0
        folders[name] = str(tmp_path / f"{name}-hf")
        capsys.readouterr()
        assert main(["generate", "--checkpoint", str(tmp_path / name), "--prompt", PROMPT, "--json",
                     "--max-new-tokens", "12"]) == 0
        answer = json.loads(capsys.readouterr().out)["answer"]
        free = model.generate(torch.tensor([tok.encode(PROMPT)]), 12).tokens[0].tolist()
        expected[name] = {"answer": answer, "free": free, "tok": tok}
    saved = json.loads((tmp_path / "byte-hf" / "config.json").read_text())
    assert saved["auto_map"] == {"AutoConfig": "configuration_rmt.RMTHFConfig",
                                 "AutoModelForCausalLM": "modeling_rmt.RMTForCausalLM"}
    assert json.loads((tmp_path / "bpe-hf" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"

    # A fresh interpreter: its own module cache and no Hub; nothing of rmt is imported by the script itself.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", FRESH_PYTHON, json.dumps(folders), json.dumps(ROUND_TRIP_TEXTS),
                           PROMPT], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (transformers 5 first asks whether to run config.json's custom code; without a terminal the answer is no,
    # and the tokenizer loads anyway. That question is printed on stdout, hence the marker.)
    report = json.loads(proc.stdout.split("\nREPORT ", 1)[1])
    for name, got in report.items():
        want, tok = expected[name], expected[name]["tok"]
        assert got["tokenizer_class"] in ("PreTrainedTokenizerFast", "TokenizersBackend"), name
        assert got["modules_after_tokenizer"] == [], got["modules_after_tokenizer"]
        assert got["model_module"] == "rmt.integrations.hf"  # through the shim, i.e. the installed package
        assert got["ids"] == [tok.encode(t) for t in ROUND_TRIP_TEXTS], name  # the ids rmt itself gives
        assert got["ids_trusted"] == got["ids"], name
        assert got["decoded"] == [tok.decode(tok.encode(t)) for t in ROUND_TRIP_TEXTS], name
        if name == "byte":  # every text round-trips, "<pad>" included (it is five bytes, as in rmt)
            assert got["decoded"] == ROUND_TRIP_TEXTS
        else:  # BPE, like rmt's own, reads "<pad>" in text as the pad token; all else round-trips
            assert [d for d, t in zip(got["decoded"], ROUND_TRIP_TEXTS) if "<pad>" not in t] == \
                [t for t in ROUND_TRIP_TEXTS if "<pad>" not in t]
        assert got["prompt"] == tok.encode(PROMPT)
        assert got["eos"] == tok.eos_id
        assert got["free"] == want["free"], name  # transformers' greedy generate == RMT.generate, token by token
        assert got["answer"] == want["answer"], name  # ... and == `rmt generate`'s answer (stopped at "\n")


def test_save_pretrained_writes_the_shims_auto_map_names(native, tmp_path):
    import json

    from rmt.integrations.hf import AUTO_MAP, SHIMS

    from_native(native).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == AUTO_MAP
    for ref in AUTO_MAP.values():
        module, cls = ref.split(".")
        text = (tmp_path / f"{module}.py").read_text()
        assert text == SHIMS[f"{module}.py"] and f"from rmt.integrations.hf import {cls}" in text
    assert not (tmp_path / "hf.py").exists()  # no copy of the adapter's module is frozen into the folder


def test_byte_backend_tokenizer_matches_rmt_on_any_bytes():
    import random

    from rmt.integrations.hf import byte_backend_tokenizer

    hf, rmt_tok = byte_backend_tokenizer(), ByteTokenizer()
    assert hf.get_vocab_size() == rmt_tok.vocab_size and hf.token_to_id("<pad>") == rmt_tok.pad_id
    rng = random.Random(0)
    for _ in range(200):  # arbitrary byte strings, invalid UTF-8 included: decoding must agree with rmt's
        ids = [rng.randrange(256) for _ in range(rng.randrange(1, 12))]
        assert hf.decode(ids) == rmt_tok.decode(ids)
        text = rmt_tok.decode(ids)
        assert hf.encode(text, add_special_tokens=False).ids == rmt_tok.encode(text)
