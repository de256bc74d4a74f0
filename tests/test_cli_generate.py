"""Issue 20: `rmt generate` takes any bytes as a prompt, refuses an empty one in one line, reads a long prompt in
chunks with progress (the same logits as one pass), and exits 2 on bad arguments like every other command."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from rmt.checkpoint import load_model, save_model
from rmt.cli import main
from rmt.model import RMT
from rmt.model.thinking import LatentChange
from rmt.tokenizer import ByteTokenizer
from tests.test_model import tiny_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = RMT(tiny_config(reader={"query_conv": 3, "query_ema": 4}))
    with torch.no_grad():  # a token-dependent router, so that some chunks think and others skip the core
        m.router.proj.weight.normal_(0, 2.0)
    return m.eval()


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    save_model(RMT(tiny_config()), tmp_path / "ckpt", ByteTokenizer())
    return tmp_path / "ckpt"


# ----------------------------------------------------------------------------------------------- chunked prefill
@pytest.mark.parametrize("kwargs", [{}, {"think_iters": 0}, {"memory": False}, {"router": "think"},
                                    {"router": "memory"}, {"exit_rule": LatentChange(eps=0.5)}])
@pytest.mark.parametrize("chunk", [1, 5, 8, 16])
def test_prefill_in_chunks_matches_one_pass(model, kwargs, chunk):
    idx = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(1))
    logits, iters, cache = model.prefill(idx, **kwargs)
    c, read = None, []
    for i in range(0, idx.shape[1], chunk):
        part_logits, part_iters, c = model.prefill(idx[:, i:i + chunk], cache=c, **kwargs)
        read.append(part_iters)
        # every chunk's last logits are those of the full forward at that position
        full = model(idx[:, :i + chunk], **kwargs).logits[:, -1]
        torch.testing.assert_close(part_logits, full, atol=1e-5, rtol=1e-5)
    # the same answer up to fp32 rounding (the scans' and matmuls' summation order depends on the shapes)
    torch.testing.assert_close(part_logits, logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.cat(read, dim=1), iters)  # the same routing: the same tokens thought
    assert c.length == cache.length == idx.shape[1]
    for a, b in zip(c.tensors(), cache.tensors()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # and decoding continues the same way from either cache
    step_kwargs = {k: v for k, v in kwargs.items() if k != "think_iters"}
    nxt = logits.argmax(-1)
    torch.testing.assert_close(model.step(nxt, c, **step_kwargs)[0], model.step(nxt, cache, **step_kwargs)[0],
                               atol=1e-5, rtol=1e-5)


def test_prefill_with_an_explicit_bank_in_the_cache(model):
    bank = model.new_memory_bank()
    model.write_memory(bank, model.encode_text(torch.randint(0, 256, (5, 7))).unsqueeze(0).expand(2, -1, -1))
    idx = torch.randint(0, 256, (2, 20))
    logits, _, _ = model.prefill(idx, explicit_bank=bank)
    _, _, c = model.prefill(idx[:, :8], explicit_bank=bank)
    chunked, _, _ = model.prefill(idx[:, 8:], cache=c)  # the bank comes with the cache
    torch.testing.assert_close(chunked, logits, atol=1e-5, rtol=1e-5)


def test_generate_reads_a_long_prompt_in_chunks_of_bounded_size(model, monkeypatch):
    idx = torch.randint(0, 256, (1, 50))
    whole = model.generate(idx, 6, prefill_chunk=None)
    seen, progress = [], []
    prefill = model.prefill

    def spy(part, **kw):
        seen.append(part.shape[1])
        return prefill(part, **kw)

    monkeypatch.setattr(model, "prefill", spy)
    chunked = model.generate(idx, 6, prefill_chunk=16, on_prefill=lambda done, total: progress.append((done, total)))
    assert seen == [16, 16, 16, 2]  # never more than one chunk's activations at a time
    assert progress == [(16, 50), (32, 50), (48, 50), (50, 50)]
    assert torch.equal(chunked.tokens, whole.tokens)
    assert torch.equal(chunked.prompt_think_iters, whole.prompt_think_iters)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(idx[:, :0], 3)


def test_a_long_prompt_shows_progress(checkpoint, capsys):
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "Q: " + "x" * 60 + " A:",
                 "--prefill-chunk", "16", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "reading --prompt" in err and "100%" in err and "/66" in err
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "short", "--prefill-chunk", "16",
                 "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err == ""  # a prompt of one chunk shows nothing


# ----------------------------------------------------------------------------------------------- prompts and errors
def test_empty_prompt_is_refused_in_one_line(checkpoint, capsys):
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", ""]) == 2
    assert capsys.readouterr().err == "rmt generate: error: --prompt: expected at least one byte, got an empty prompt\n"
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "a", "--prompt", ""]) == 2
    assert "--prompt 2: expected at least one byte" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--max-new-tokens", "0"], "--max-new-tokens: expected >= 1, got 0"),
    (["--think-iters", "-1"], "--think-iters: expected >= 0, got -1"),
    (["--prefill-chunk", "0"], "--prefill-chunk: expected >= 1, got 0"),
])
def test_bad_arguments_exit_2_like_train(checkpoint, capsys, argv, needle):
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "x", *argv]) == 2
    assert capsys.readouterr().err == f"rmt generate: error: {needle}\n"


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err == f"rmt generate: error: {tmp_path / 'nope'}: no such run or checkpoint folder\n"


class _Stdin:
    """A stand-in for sys.stdin with the raw bytes under .buffer, as a real one has."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


def test_a_prompt_that_is_not_utf8_is_read_as_its_bytes(checkpoint, capsysbinary, monkeypatch):
    raw = b"hi \xff"
    model, tok = load_model(checkpoint)
    ids = model.eval().generate(torch.tensor([list(raw)]), 3, eos_id=tok.eos_id).tokens[0].tolist()
    answer = tok.decode(ids).split("\n", 1)[0].encode()  # what the model answers to exactly these 4 bytes
    # from the command line: the OS passes bytes, Python hands them over as surrogate escapes
    proc = subprocess.run([sys.executable, "-m", "rmt.cli", "generate", "--checkpoint", str(checkpoint),
                           "--max-new-tokens", "3", b"--prompt", raw], capture_output=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == raw + answer + b"\n"
    # from stdin, where blank lines are skipped
    monkeypatch.setattr(sys, "stdin", _Stdin(raw + b"\n\n" + raw + b"\r\n"))
    assert main(["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "3"]) == 0
    assert capsysbinary.readouterr().out == (raw + answer + b"\n") * 2
    # --json keeps the byte as an escape
    arg = raw.decode("utf-8", "surrogateescape")
    assert main(["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "3", "--prompt", arg, "--json"]) == 0
    assert json.loads(capsysbinary.readouterr().out)["prompt"] == arg


def test_no_prompt_on_stdin_is_one_line(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", _Stdin(b"\n  \n"))
    assert main(["generate", "--checkpoint", str(checkpoint)]) == 2
    assert capsys.readouterr().err == ("rmt generate: error: no prompt: expected --prompt TEXT or non-blank lines "
                                       "on stdin, found none\n")


def test_byte_tokenizer_round_trips_any_bytes():
    tok = ByteTokenizer()
    data = bytes(range(256))
    assert tok.encode(data.decode("utf-8", "surrogateescape")) == list(data)
    assert tok.encode("héllo") == list("héllo".encode())
