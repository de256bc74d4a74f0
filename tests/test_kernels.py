"""The optional GPU fast paths (rmt.model.kernels) against the reference scans.

The CPU tests always run: the dispatcher must fall back to the reference on the CPU, bit for bit, and the
dt / A / group conventions it maps onto mamba-ssm must equal the sequential oracle. The GPU tests need CUDA
and mamba-ssm (``pip install 'rmt[gpu]'``; ``benchmarks/gpu_kernels_check.sh`` installs and runs them) and
are skipped with the reason otherwise.
"""

import os
import subprocess
import sys

import pytest
import torch

from rmt.model.kernels import kernels_mode, mamba_chunk_scan, scan_backend, ssd_scan
from rmt.model.scan import scan_chunked, scan_reference
from rmt.model.ssm import SelectiveSSM


def _inputs(b, t, h, p, n, groups=1, seed=0, device="cpu", with_state=True):
    """x (B,T,H,P), dt (B,T,H) >= 0 with some exact zeros (gated tokens), A (H,) < 0, B/C (B,T,G,N), state."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, p, generator=g)
    dt = torch.rand(b, t, h, generator=g) * 0.5
    dt = dt * (torch.rand(b, t, 1, generator=g) > 0.2)  # about one token in five skipped (dt = 0)
    A = -torch.linspace(1.0, 16.0, h)  # the mixer's initial decay rates
    Bm = torch.randn(b, t, groups, n, generator=g)
    Cm = torch.randn(b, t, groups, n, generator=g)
    s0 = torch.randn(b, h, p, n, generator=g) if with_state else None
    out = [x, dt, A, Bm, Cm, s0]
    return [None if v is None else v.to(device) for v in out]


# ---------------------------------------------------------------------------------------------- CPU


def test_dispatcher_falls_back_to_the_reference_on_the_cpu_bit_for_bit():
    x, dt, A, Bm, Cm, s0 = _inputs(2, 37, 4, 8, 16)
    for use in (None, True):  # auto, and forced on: the CPU never needs (or tries) a kernel
        name, reason = scan_backend(x, use)
        assert name == "reference" and "cpu" in reason
        y, s = ssd_scan(x, dt, A, Bm, Cm, s0, chunk=16, use_kernels=use)
        # What SelectiveSSM called before the dispatcher existed: same expressions, so exactly equal.
        y_old, s_old = scan_chunked(x * dt.unsqueeze(-1), dt * A, Bm.expand(-1, -1, 4, -1),
                                    Cm.expand(-1, -1, 4, -1), s0, chunk=16)
        assert torch.equal(y, y_old) and torch.equal(s, s_old)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_ssd_scan_conventions_match_the_sequential_oracle(groups):
    # dt multiplies x and scales A; head h reads B/C group h // (H / G) — the conventions of mamba-ssm.
    b, t, h, p, n = 2, 29, 4, 3, 5
    x, dt, A, Bm, Cm, s0 = _inputs(b, t, h, p, n, groups=groups, seed=1)
    y, s = ssd_scan(x, dt, A, Bm, Cm, s0, chunk=8)
    per_head = h // groups
    Bh = torch.stack([Bm[:, :, i // per_head] for i in range(h)], dim=2)
    Ch = torch.stack([Cm[:, :, i // per_head] for i in range(h)], dim=2)
    y_ref, s_ref = scan_reference(x * dt[..., None], dt * A, Bh, Ch, s0)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_ref, atol=1e-4, rtol=1e-4)


def test_switch_reads_the_environment_and_the_argument_wins(monkeypatch):
    monkeypatch.setenv("RMT_KERNELS", "off")
    assert kernels_mode() == "off" and kernels_mode(True) == "on"
    monkeypatch.setenv("RMT_KERNELS", "0")
    assert kernels_mode() == "off"
    monkeypatch.delenv("RMT_KERNELS")
    assert kernels_mode() == "auto" and kernels_mode(False) == "off"
    assert scan_backend(torch.zeros(1, 4, 1, 1), False) == ("reference", "kernels switched off")
    monkeypatch.setenv("RMT_KERNELS", "fast")
    with pytest.raises(ValueError, match="RMT_KERNELS"):
        kernels_mode()


def test_importing_rmt_does_not_import_the_optional_libraries():
    # Lazy imports: building and running a model on the CPU must not touch mamba_ssm or triton.
    code = ("import sys, torch; from rmt.model import RMT; from rmt.model.presets import preset; "
            "m = RMT(preset('tiny')); m(torch.randint(0, 256, (1, 8))); "
            "print(sorted(k for k in ('mamba_ssm', 'triton', 'fla') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "RMT_KERNELS": "auto"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------- GPU

_NO_CUDA = not torch.cuda.is_available()
gpu = pytest.mark.skipif(_NO_CUDA, reason="no CUDA device: the GPU fast paths can only be checked on a GPU")


def _need_mamba():
    if mamba_chunk_scan() is None:
        from rmt.model.kernels import _load_mamba

        pytest.skip(f"mamba-ssm fast path unavailable: {_load_mamba()[1]} (pip install 'rmt[gpu]')")


def _close(got: torch.Tensor, ref: torch.Tensor, what: str, rel: float = 1e-2) -> None:
    """Max error within rel of the reference's largest magnitude.

    Why 1e-2: Triton's tl.dot on fp32 inputs runs in TF32 on Ampere and later (10-bit mantissa, unit
    round-off 2^-11 ~ 5e-4) and sums over a chunk of up to 64 products, so errors of a few 1e-3 of the
    largest term are expected from the precision alone; a wrong convention (a missing dt, a transposed
    state, an off-by-one decay) gives errors of order 1.
    """
    err = (got.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    assert err <= rel * scale + 1e-6, f"{what}: max error {err:.3g} vs max |ref| {scale:.3g}"


@gpu
@pytest.mark.parametrize("t", [1, 63, 64, 300])
@pytest.mark.parametrize("with_state", [False, True])
def test_mamba_ssd_scan_matches_reference_values_and_gradients(t, with_state):
    _need_mamba()
    ins = _inputs(2, t, 4, 32, 16, seed=t, device="cuda", with_state=with_state)
    results = []
    for use in (True, False):
        assert scan_backend(ins[0], use)[0] == ("mamba_ssm" if use else "reference")
        leaves = [None if v is None else v.clone().requires_grad_(True) for v in ins]
        y, s = ssd_scan(*leaves, chunk=64, use_kernels=use)
        # A loss that reaches every output and the final state, with non-uniform weights.
        w = torch.randn(y.shape, device=y.device, generator=torch.Generator(device="cuda").manual_seed(0))
        ((y * w).sum() + s.square().sum()).backward()
        results.append((y.detach(), s.detach(), [None if v is None else v.grad for v in leaves]))
    (y_k, s_k, g_k), (y_r, s_r, g_r) = results
    _close(y_k, y_r, "y")
    _close(s_k, s_r, "final state")
    for name, gk, gr in zip(["x", "dt", "A", "B", "C", "state"], g_k, g_r):
        if gr is not None:
            _close(gk, gr, f"grad {name}")


@gpu
def test_selective_ssm_layer_is_the_same_with_and_without_kernels():
    _need_mamba()
    torch.manual_seed(0)
    layer = SelectiveSSM(128, head_dim=32, d_state=16, conv_width=1, chunk=64).cuda()
    u = torch.randn(2, 200, 128, device="cuda")
    gate = (torch.rand(2, 200, device="cuda") > 0.3).float()  # the thinking core's hard skips
    outs = []
    for use in ("on", "off"):
        os.environ["RMT_KERNELS"] = use
        try:
            layer.zero_grad(set_to_none=True)
            y, st = layer(u, gate=gate, return_state=True)
            y.square().mean().backward()
            outs.append((y.detach(), st.ssm, {k: p.grad.clone() for k, p in layer.named_parameters()}))
        finally:
            del os.environ["RMT_KERNELS"]
    (y_k, s_k, g_k), (y_r, s_r, g_r) = outs
    _close(y_k, y_r, "layer output")
    _close(s_k, s_r, "layer final state")
    for k in g_r:
        _close(g_k[k], g_r[k], f"grad {k}")
