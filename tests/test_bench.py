"""The benchmark's measuring pieces on small sizes (the benchmark itself is run by `rmt bench`)."""

import torch

from rmt.harness.bench import explicit_ms_per_query, generate_costs, generate_ms, held_bytes, models, timed


def test_timed_returns_the_median(monkeypatch):
    import rmt.harness.bench as bench

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


def test_held_bytes_counts_the_storage_a_view_pins():
    base = torch.zeros(1000)
    assert held_bytes([base[:10]]) == 4000  # a 10-element view keeps all 1000 floats alive
    assert held_bytes([base[:10], base[10:20]]) == 4000  # one storage, counted once
    assert held_bytes([base[:10].clone()]) == 40


def test_rmt_decoding_state_holds_no_prompt_activations():
    # The state must be constant in the memory it keeps alive, not just in numel: a cache made of views into
    # the prefill's (T, ...) activations would grow with the context while nbytes() stayed the same.
    rmt, _ = models()
    rmt.eval()
    for ctx in (16, 160):
        _, _, cache = rmt.prefill(torch.randint(0, 256, (1, ctx)))
        assert held_bytes(cache.tensors()) == cache.nbytes()


def test_generate_costs_times_every_context_each_round():
    rmt, _ = models()
    rmt.eval()
    costs = generate_costs(rmt, [8, 24], n=2, rounds=3)
    assert sorted(costs) == [8, 24]
    for c in costs.values():
        assert len(c["ms_rounds"]) == 3 and c["ms"] == sorted(c["ms_rounds"])[1]
        # The untrained router's think gate is constant above its threshold: every token runs all K iterations.
        assert c["think_iters"] == rmt.config.core.iters
    assert costs[8]["state_bytes"] == costs[24]["state_bytes"]
