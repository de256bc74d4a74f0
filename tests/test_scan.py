import pytest
import torch

from rmt.model.scan import scan_chunked, scan_reference, scan_step


def _inputs(b, t, h, p, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, p, generator=g)
    a = -torch.rand(b, t, h, generator=g) * 2  # log-decays, some strong
    Bm = torch.randn(b, t, h, n, generator=g)
    Cm = torch.randn(b, t, h, n, generator=g)
    s0 = torch.randn(b, h, p, n, generator=g)
    return x, a, Bm, Cm, s0


@pytest.mark.parametrize("t", [1, 5, 16, 17, 50, 64, 129])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_scan_equals_sequential_reference(t, with_state):
    x, a, Bm, Cm, s0 = _inputs(2, t, 3, 4, 5)
    state = s0 if with_state else None
    y_ref, s_ref = scan_reference(x, a, Bm, Cm, state)
    y, s = scan_chunked(x, a, Bm, Cm, state, chunk=16)  # most lengths are not multiples of 16
    assert y.shape == y_ref.shape and s.shape == s_ref.shape
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_ref, atol=1e-4, rtol=1e-4)


def test_chunked_scan_can_be_continued_from_its_final_state():
    x, a, Bm, Cm, _ = _inputs(1, 40, 2, 3, 4, seed=1)
    y_full, s_full = scan_chunked(x, a, Bm, Cm, chunk=8)
    y1, s1 = scan_chunked(x[:, :23], a[:, :23], Bm[:, :23], Cm[:, :23], chunk=8)
    y2, s2 = scan_chunked(x[:, 23:], a[:, 23:], Bm[:, 23:], Cm[:, 23:], s1, chunk=8)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s2, s_full, atol=1e-4, rtol=1e-4)


def test_zero_log_decay_and_zero_input_leave_the_state_unchanged():
    # The thinking core relies on this to skip a token exactly (its gate scales dt to zero).
    _, _, Bm, Cm, s0 = _inputs(2, 1, 3, 4, 5)
    y, s = scan_step(torch.zeros(2, 3, 4), torch.zeros(2, 3), Bm[:, 0], Cm[:, 0], s0)
    torch.testing.assert_close(s, s0)


def test_chunked_scan_gradients_match_reference():
    x, a, Bm, Cm, _ = _inputs(1, 21, 2, 3, 4, seed=2)
    grads = []
    for fn in (scan_reference, lambda *args: scan_chunked(*args, chunk=8)):
        xs = [v.clone().requires_grad_(True) for v in (x, a, Bm, Cm)]
        y, s = fn(*xs)
        (y.square().sum() + s.sum()).backward()
        grads.append([v.grad for v in xs])
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref, atol=1e-3, rtol=1e-3)
