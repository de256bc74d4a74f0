import json

import pytest
import torch

from rmt.checkpoint import CheckpointError, load_model, save_model
from rmt.model.config import ConfigError, RMTConfig
from rmt.model import RMT, loss_fn
from rmt.model.thinking import LatentChange, PredictionKL
from rmt.tokenizer import ByteTokenizer


def tiny_config(**kw) -> RMTConfig:
    base = dict(d_model=32, n_prelude=1, n_coda=1, ssm={"head_dim": 16, "chunk": 8},
                product_keys={"n_keys": 8, "heads": 2, "topk": 4, "d_key": 16}, bank={"d_key": 16}, core={"iters": 3})
    return RMTConfig.from_dict(base).replace(**kw)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = RMT(tiny_config())
    # Give the router a real, token-dependent choice so hard routing skips some tokens and not others.
    with torch.no_grad():
        m.router.proj.weight.normal_(0, 2.0)
    return m.eval()


def _tokens(b=2, t=19, seed=0):
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kwargs", [
    {}, {"think_iters": 0}, {"memory": False}, {"router": "think"}, {"router": "memory"}, {"router": "both"},
    {"exit_rule": LatentChange(eps=0.5)}, {"exit_rule": PredictionKL(eps=0.05)},
])
def test_token_by_token_decoding_matches_the_full_forward(model, kwargs):
    idx = _tokens()
    full = model(idx, **kwargs).logits
    step_kwargs = {k: v for k, v in kwargs.items() if k != "think_iters"}
    logits, _, cache = model.prefill(idx[:, :4], **kwargs)
    torch.testing.assert_close(logits, full[:, 3], atol=1e-4, rtol=1e-4)
    for t in range(4, idx.shape[1]):
        logits, _, cache = model.step(idx[:, t], cache, **step_kwargs)
        torch.testing.assert_close(logits, full[:, t], atol=1e-4, rtol=1e-4)


def test_hard_routing_really_skips_tokens(model):
    out = model(_tokens(b=4, t=32))
    skipped = ~out.routing.think_mask
    assert skipped.any() and (~skipped).any(), "the fixture's router should skip some tokens and not others"
    assert (out.think_iters[skipped] == 0).all()
    assert (out.think_iters[~skipped] == model.config.core.iters).all()


def test_exit_rule_stops_tokens_early(model):
    idx = _tokens(b=4, t=32)
    fixed = model(idx, router="think", think_iters=6).think_iters
    early = model(idx, router="think", think_iters=6, exit_rule=LatentChange(eps=0.5)).think_iters
    assert (fixed == 6).all()
    assert early.float().mean() < 6 and (early >= 1).all()
    kl = model(idx, router="think", think_iters=6, exit_rule=PredictionKL(eps=0.05)).think_iters
    assert kl.float().mean() < 6 and (kl >= 1).all()


def test_gradients_reach_memory_core_and_router():
    torch.manual_seed(0)
    m = RMT(tiny_config()).train()
    idx = _tokens(b=3, t=20)
    out = m(idx, think_iters=2, bptt=2)
    loss, _ = loss_fn(out, idx, compute_weight=0.01)
    loss.backward()
    named = dict(m.named_parameters())
    for name in ["reader.product_keys.keys", "reader.product_keys.values.weight", "reader.product_keys.query_proj.weight", "router.proj.weight",
                 "core.adapter.weight", "core.update_gate.weight", "core.layers.0.mixer.in_proj.weight"]:
        g = named[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_truncated_backprop_only_reaches_the_last_iterations():
    torch.manual_seed(0)
    m = RMT(tiny_config()).train()
    idx = _tokens(b=2, t=12)
    grads = {}
    for bptt in (1, 4):
        m.zero_grad()
        m(idx, think_iters=4, bptt=bptt).logits.square().mean().backward()
        grads[bptt] = m.core.adapter.weight.grad.clone()
    assert grads[1].abs().sum() > 0  # the last iteration still trains the shared weights
    assert not torch.allclose(grads[1], grads[4])  # but not through the earlier iterations


def _forbid(monkeypatch, what: str, *targets: tuple[object, str]) -> None:
    def boom(*a, **k):
        raise AssertionError(f"{what} was called")
    for obj, name in targets:
        monkeypatch.setattr(obj, name, boom)


def test_recurrence_off_never_calls_the_core(model, monkeypatch):
    _forbid(monkeypatch, "thinking core", (model.core, "forward"), (model.core, "_iterate"))
    idx = _tokens()
    model(idx, think_iters=0)
    model.generate(idx, 5, think_iters=0)
    model(idx, router="memory")  # forced to memory: no token thinks


def test_memory_off_never_reads_memory(model, monkeypatch):
    _forbid(monkeypatch, "memory", (model.reader.product_keys, "forward"), (model.reader.bank, "forward"))
    idx = _tokens()
    bank = model.new_memory_bank()
    model(idx, memory=False, explicit_bank=bank)
    model.generate(idx, 5, memory=False, explicit_bank=bank)


def test_memory_on_changes_the_output(model):
    idx = _tokens()
    assert not torch.allclose(model(idx).logits, model(idx, memory=False).logits)


def test_explicit_memory_bank_is_read(model):
    idx = _tokens()
    bank = model.new_memory_bank()
    entries = model.encode_text(_tokens(b=5, t=7, seed=3)).unsqueeze(0).expand(2, -1, -1)
    model.write_memory(bank, entries)
    with_bank = model(idx, explicit_bank=bank).logits
    assert not torch.allclose(with_bank, model(idx).logits)
    # decoding with the bank in the cache gives the same logits
    logits, _, cache = model.prefill(idx[:, :5], explicit_bank=bank)
    for t in range(5, 9):
        logits, _, cache = model.step(idx[:, t], cache)
        torch.testing.assert_close(logits, with_bank[:, t], atol=1e-4, rtol=1e-4)


def test_generation_cache_size_does_not_grow_with_context(model):
    idx = _tokens(b=1, t=3)
    _, _, cache = model.prefill(idx)
    sizes = {}
    tok = torch.tensor([65])
    for t in range(1, 1001):
        _, _, cache = model.step(tok, cache)
        if t in (10, 1000):
            sizes[t] = (cache.nbytes(), [tuple(x.shape) for x in cache.tensors()])
    assert cache.length == 1003
    assert sizes[10] == sizes[1000]


def test_generate_stops_at_eos_and_pads_finished_rows(model):
    idx = _tokens(b=2, t=5)
    free = model.generate(idx, 12).tokens
    eos = int(free[0, 2])  # row 0 produces this token third: make it the end-of-answer marker
    res = model.generate(idx, 12, eos_id=eos)
    row0 = res.tokens[0].tolist()
    first = row0.index(eos)
    assert first <= 2 and all(t == model.config.pad_id for t in row0[first + 1:])
    assert torch.equal(res.tokens[:, :first + 1], free[:, :first + 1])
    assert res.think_iters.shape[0] == 2 and (res.think_iters[0, first:] == 0).all()


def test_save_load_gives_identical_logits(model, tmp_path):
    save_model(model, tmp_path / "ckpt", ByteTokenizer())
    loaded, tok = load_model(tmp_path / "ckpt")
    loaded.eval()
    idx = _tokens()
    assert torch.equal(model(idx).logits, loaded(idx).logits)
    assert isinstance(tok, ByteTokenizer)


def test_truncated_checkpoint_is_reported(model, tmp_path):
    d = save_model(model, tmp_path / "ckpt")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(d)


def test_checkpoint_from_another_config_is_reported(model, tmp_path):
    d = save_model(model, tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["d_model"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(d)


@pytest.mark.parametrize("change,field", [
    ({"d_model": 0}, "model.d_model"), ({"d_model": "wide"}, "model.d_model"),
    ({"core": {"init": "ones"}}, "model.core.init"), ({"router": {"threshold": 1.5}}, "model.router.threshold"),
    ({"product_keys": {"topk": 1000}}, "model.product_keys.topk"), ({"core": {"iters": -1}}, "model.core.iters"),
    ({"ssm": {"head_dim": 48}}, "model.ssm.head_dim"), ({"product_keys": {"enabled": 1}}, "model.product_keys.enabled"),
])
def test_invalid_config_names_the_field(change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(**change)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="d_modle"):
        RMTConfig.from_dict({"d_modle": 64})


def test_config_round_trips_through_json_and_toml(tmp_path):
    cfg = tiny_config(core={"init": "random"}, router={"threshold": 0.3})
    assert RMTConfig.from_toml(cfg.to_toml()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert RMTConfig.from_json(tmp_path / "c.json") == cfg


def test_bpe_tokenizer_is_saved_beside_the_checkpoint_and_reloaded(model, tmp_path):
    from rmt.tokenizer import BPETokenizer

    bpe = BPETokenizer.train(["Vorla Minet lives in Paris.", "Q: Where does Vorla Minet live? A: Paris"] * 20,
                             vocab_size=300)
    save_model(model, tmp_path / "ckpt", bpe)
    _, tok = load_model(tmp_path / "ckpt")
    text = "Vorla lives in Paris — naïve 🙂"
    assert isinstance(tok, BPETokenizer) and tok.decode(tok.encode(text)) == text
