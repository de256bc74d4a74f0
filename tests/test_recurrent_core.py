"""The token-carried GRU thinking core (`core.mixer = "gru"`): its hand-written backward, exact skipping, and
decoding that continues the parallel pass."""

import pytest
import torch

from rmt.model import RMT
from rmt.model.presets import preset
from rmt.model.thinking import RecurrentCore, _GatedGRUScan


def gru_model(**core) -> RMT:
    torch.manual_seed(0)
    cfg = preset("tiny", {"core": {"mixer": "gru", "n_layers": 2, "iters": 1, **core}, "vocab_size": 300,
                          "pad_id": 299, "product_keys": {"enabled": False}})
    return RMT(cfg)


@pytest.mark.parametrize("steps,active", [(1, [True] * 5), (2, [True, False, True, True, False])])
def test_scan_backward_matches_numerical_gradient(steps, active):
    torch.manual_seed(0)
    B, T, H = 2, 5, 3
    args = [torch.randn(B, T, 3 * H, dtype=torch.double, requires_grad=True),
            torch.rand(B, T, dtype=torch.double, requires_grad=True),
            torch.randn(B, H, dtype=torch.double, requires_grad=True),
            torch.randn(3 * H, H, dtype=torch.double, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: _GatedGRUScan.apply(*a, steps, active), args)


def test_gate_zero_leaves_the_state_unchanged():
    torch.manual_seed(0)
    core = RecurrentCore(16, 2, 24).eval()
    e = torch.randn(1, 6, 16)
    gate = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    s, used, states = core(e, gate, 1, keep_states=True)
    # the same tokens with the skipped ones removed reach the same final state, and skipped ones output zero
    kept = gate[0] > 0
    s2, _, states2 = core(e[:, kept], gate[:, kept], 1, keep_states=True)
    for a, b in zip(states, states2):
        torch.testing.assert_close(a, b)
    assert torch.all(s[0, ~kept] == 0)
    assert used.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]


def test_decoding_step_by_step_matches_the_parallel_pass():
    model = gru_model().eval()
    x = torch.randint(0, 299, (3, 14))
    with torch.no_grad():
        full = model(x).logits
        logits, _, cache = model.prefill(x[:, :6])
        torch.testing.assert_close(logits, full[:, 5], atol=1e-5, rtol=1e-4)
        for t in range(6, 14):
            logits, _, cache = model.step(x[:, t], cache)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-4)


def test_recurrence_off_never_calls_the_core(monkeypatch):
    model = gru_model().eval()
    monkeypatch.setattr(model.core, "forward", lambda *a, **k: pytest.fail("the core ran with think_iters=0"))
    model(torch.randint(0, 299, (2, 8)), think_iters=0)


def test_the_gru_core_refuses_what_it_does_not_do():
    from rmt.model.thinking import LatentChange

    model = gru_model().eval()
    with pytest.raises(ValueError, match="fixed K"):
        model(torch.randint(0, 299, (1, 4)), exit_rule=LatentChange())


def test_a_context_router_decodes_as_it_reads():
    # router.context routes on the reader's token bag, which the cache carries even with memory off
    torch.manual_seed(0)
    cfg = preset("tiny", {"core": {"mixer": "gru", "n_layers": 1, "iters": 1}, "n_prelude": 0, "vocab_size": 300,
                          "pad_id": 299, "product_keys": {"enabled": False}, "router": {"context": True},
                          "reader": {"query_ema": 8, "query_state": False}, "bank": {"read": "softmax"}})
    model = RMT(cfg).eval()
    with torch.no_grad():  # a router that actually depends on the context
        model.router.proj.weight.normal_(std=0.3)
    x = torch.randint(0, 299, (2, 12))
    for memory in (True, False):
        with torch.no_grad():
            full = model(x, memory=memory).logits
            logits, _, cache = model.prefill(x[:, :5], memory=memory)
            for t in range(5, 12):
                logits, _, cache = model.step(x[:, t], cache, memory=memory)
                torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-4)


def test_a_context_router_needs_the_token_bag():
    from rmt.model import ConfigError

    with pytest.raises(ConfigError, match="router.context"):
        preset("tiny", {"router": {"context": True}})
