"""The benchmark's measuring pieces on small sizes (the benchmark itself is run by `rmt bench`)."""

import torch

from rmt.bench import explicit_ms_per_query, generate_ms, models, timed


def test_timed_returns_the_median(monkeypatch):
    import rmt.bench as bench

    clock = iter([0.0, 1.0, 10.0, 10.5, 20.0, 29.0])  # three runs: 1 s, 0.5 s, 9 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    calls = []
    assert timed(lambda: calls.append(1), reps=3, warmup=2) == 1.0
    assert len(calls) == 5


def test_generation_state_is_constant_for_rmt_and_grows_for_the_transformer():
    rmt, gpt = models()
    rmt.eval(), gpt.eval()
    _, rmt_small = generate_ms(rmt, 16, n=2)
    _, rmt_large = generate_ms(rmt, 160, n=2)
    _, gpt_small = generate_ms(gpt, 16, n=2)
    _, gpt_large = generate_ms(gpt, 160, n=2)
    assert rmt_small == rmt_large
    assert gpt_large == 10 * gpt_small


def test_explicit_read_cost_is_measured_per_query():
    assert explicit_ms_per_query(100, reps=1) > 0
