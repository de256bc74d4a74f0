"""Tests for rmt.model.memory: product-key memory and the explicit linear-attention memory bank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rmt.model.memory import ExplicitMemoryBank, ExplicitMemoryRead, MemoryLookup, ProductKeyMemory
from rmt.model.memory.bag_sum import weighted_bag_sum
from tests.oracles import linear_attention_reference, product_key_bruteforce


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- product-key memory


@pytest.mark.parametrize(
    ("n_keys", "heads", "d_key", "topk", "n_queries"),
    [(16, 1, 16, 8, 300), (16, 3, 16, 8, 300), (16, 4, 64, 8, 300), (128, 4, 64, 16, 64)],
)
def test_lookup_matches_bruteforce(
    n_keys: int, heads: int, d_key: int, topk: int, n_queries: int
) -> None:
    mem = ProductKeyMemory(d_model=32, n_keys=n_keys, heads=heads, d_key=d_key, topk=topk)
    q = F.layer_norm(torch.randn(n_queries, heads, d_key), (d_key,))
    with torch.no_grad():
        scores, idx = mem.lookup(q)
        ref_scores, ref_idx = product_key_bruteforce(mem, q)
    assert scores.shape == idx.shape == (n_queries, heads, topk)
    assert idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < mem.num_slots
    # Same slots (as sets: order among the top-k is irrelevant) ...
    assert torch.equal(idx.sort(dim=-1).values, ref_idx.sort(dim=-1).values)
    # ... same scores, which come out sorted descending.
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert bool((scores[..., :-1] >= scores[..., 1:]).all())


def test_lookup_scores_are_full_key_dot_products() -> None:
    mem = ProductKeyMemory(d_model=32, n_keys=16, heads=2, d_key=16, topk=8)
    q = torch.randn(50, 2, 16)
    scores, idx = mem.lookup(q)
    i, j = idx // 16, idx % 16
    for h in range(2):
        full = torch.cat([mem.keys[h, 0][i[:, h]], mem.keys[h, 1][j[:, h]]], dim=-1)  # (50, k, d)
        expect = torch.einsum("md,mkd->mk", q[:, h], full)
        torch.testing.assert_close(scores[:, h], expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d_value", [None, 24])
def test_forward_shape_and_record(d_value: int | None) -> None:
    mem = ProductKeyMemory(d_model=32, n_keys=16, heads=2, d_key=16, topk=8, d_value=d_value)
    x = torch.randn(3, 7, 32)
    assert mem.last_lookup is None
    y = mem(x)
    assert y.shape == (3, 7, 32)
    assert mem.last_lookup is None  # only recorded on request
    mem.record = True
    mem(x)
    rec = mem.last_lookup
    assert isinstance(rec, MemoryLookup)
    assert rec.indices.shape == rec.weights.shape == (3, 7, 2, 8)
    assert not rec.weights.requires_grad
    torch.testing.assert_close(rec.weights.sum(-1), torch.ones(3, 7, 2))
    assert mem.num_slots == 256


def test_gradients_reach_keys_values_and_query() -> None:
    mem = ProductKeyMemory(d_model=32, n_keys=16, heads=2, d_key=16, topk=8, d_value=24)
    x = torch.randn(2, 5, 32, requires_grad=True)
    mem(x).square().sum().backward()
    for name, p in [
        ("keys", mem.keys),
        ("values", mem.values.weight),
        ("query_proj", mem.query_proj.weight),
        ("value_proj", mem.value_proj.weight),
        ("input", x),
    ]:
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    # Only the slots that were read get a value gradient.
    touched = (mem.values.weight.grad.abs().sum(-1) > 0).sum()
    assert 0 < int(touched) <= 2 * 5 * 2 * 8


@pytest.mark.parametrize("sparse", [False, True])
def test_value_table_gradient_matches_stock_embedding_bag(sparse: bool) -> None:
    table = torch.randn(40, 6, requires_grad=True)
    idx = torch.randint(0, 40, (9, 5))
    w = torch.rand(9, 5, requires_grad=True)
    g = torch.randn(9, 6)
    out = weighted_bag_sum(idx, table, w, sparse)
    gt, gw = torch.autograd.grad(out, (table, w), g)
    table_ref = table.detach().clone().requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    out_ref = F.embedding_bag(idx, table_ref, per_sample_weights=w_ref, mode="sum")
    gt_ref, gw_ref = torch.autograd.grad(out_ref, (table_ref, w_ref), g)
    torch.testing.assert_close(out, out_ref)
    assert gt.is_sparse == sparse
    torch.testing.assert_close(gt.to_dense() if sparse else gt, gt_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_sparse_option_trains_with_sparse_adam() -> None:
    mem = ProductKeyMemory(d_model=16, n_keys=8, heads=2, d_key=8, topk=4, sparse=True)
    mem(torch.randn(2, 3, 16)).sum().backward()
    assert mem.values.weight.grad.is_sparse
    before = mem.values.weight.detach().clone()
    torch.optim.SparseAdam(mem.value_parameters(), lr=1e-2).step()
    assert not torch.equal(before, mem.values.weight.detach())


def test_value_parameters_are_exactly_the_value_table() -> None:
    mem = ProductKeyMemory(d_model=32, n_keys=16, heads=2, d_key=16, topk=8, d_value=24)
    vp = mem.value_parameters()
    assert len(vp) == 1 and vp[0] is mem.values.weight
    assert vp[0].shape == (256, 24)
    others = [p for p in mem.parameters() if all(p is not v for v in vp)]
    assert len(others) + len(vp) == len(list(mem.parameters()))


def test_eval_batch_of_one_matches_batched_training_forward() -> None:
    # LayerNorm (not BatchNorm) on the query: a token's lookup must not depend on its batch.
    mem = ProductKeyMemory(d_model=32, n_keys=16, heads=2, d_key=16, topk=8)
    x = torch.randn(4, 6, 32)
    y_train = mem.train()(x)
    y_one = mem.eval()(x[2:3])
    torch.testing.assert_close(y_one, y_train[2:3], rtol=1e-5, atol=1e-6)


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError):
        ProductKeyMemory(d_model=8, n_keys=4, topk=5)
    with pytest.raises(ValueError):
        ProductKeyMemory(d_model=8, d_key=7)


# --------------------------------------------------------------------------- explicit memory bank


def _entries(b: int = 2, m: int = 11, dk: int = 8, dv: int = 5, **kw) -> tuple[torch.Tensor, ...]:
    return torch.randn(b, m, dk, **kw), torch.randn(b, m, dv, **kw)


def test_bank_read_matches_reference() -> None:
    bank = ExplicitMemoryBank(8, 5)
    k, v = _entries()
    q = torch.randn(2, 7, 8)
    bank.write(k, v)
    out = bank.read(q)
    assert out.shape == (2, 7, 5)
    torch.testing.assert_close(out, linear_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)


def test_two_writes_equal_one_concatenated_write() -> None:
    k, v = _entries(m=20)
    q = torch.randn(2, 4, 8)
    split = ExplicitMemoryBank(8, 5)
    split.write(k[:, :7], v[:, :7])
    split.write(k[:, 7:], v[:, 7:])
    whole = ExplicitMemoryBank(8, 5)
    whole.write(k, v)
    torch.testing.assert_close(split.read(q), whole.read(q), rtol=1e-5, atol=1e-5)
    assert split.num_entries.tolist() == [20, 20]


def test_masked_entries_are_ignored() -> None:
    k, v = _entries(m=10)
    q = torch.randn(2, 3, 8)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, 6:] = True
    v_poisoned = v.masked_fill(~mask.unsqueeze(-1), float("nan"))  # masked rows must not leak
    bank = ExplicitMemoryBank(8, 5)
    bank.write(k, v_poisoned, mask)
    out = bank.read(q)
    assert torch.isfinite(out).all()
    assert bank.num_entries.tolist() == [4, 4]
    torch.testing.assert_close(out, linear_attention_reference(q, k, v, mask), rtol=1e-5, atol=1e-5)
    ref0 = linear_attention_reference(q[:1], k[:1, :4], v[:1, :4])
    torch.testing.assert_close(out[:1], ref0, rtol=1e-5, atol=1e-5)


def test_empty_bank_reads_zeros() -> None:
    bank = ExplicitMemoryBank(8, 5)
    q = torch.randn(2, 3, 8)
    assert torch.equal(bank.read(q), torch.zeros(2, 3, 5))
    assert bank.state_bytes() == 0
    k, v = _entries()
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1] = False  # element 1 gets nothing
    bank.write(k, v, mask)
    out = bank.read(q)
    assert torch.equal(out[1], torch.zeros(3, 5))
    assert out[0].abs().sum() > 0
    bank.clear()
    assert torch.equal(bank.read(q), torch.zeros(2, 3, 5))
    assert bank.num_entries.numel() == 0


def test_state_size_independent_of_entry_count() -> None:
    small, large = ExplicitMemoryBank(8, 5), ExplicitMemoryBank(8, 5)
    small.write(*_entries(m=10))
    for _ in range(10):
        large.write(*_entries(m=1000))
    assert large.num_entries.tolist() == [10_000, 10_000]
    assert small.state_bytes() == large.state_bytes() > 0
    q = torch.randn(2, 3, 8)
    assert small.read(q).shape == large.read(q).shape == (2, 3, 5)


def test_gradients_flow_to_written_keys_and_values() -> None:
    k, v = _entries(m=6, dtype=torch.float64, requires_grad=True)
    k2, v2 = _entries(m=3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)

    def read(q, k, v, k2, v2):
        bank = ExplicitMemoryBank(8, 5)
        bank.write(k, v)
        bank.write(k2, v2)
        return bank.read(q)

    read(q, k, v, k2, v2).sum().backward()
    for t in (q, k, v, k2, v2):
        assert t.grad is not None and t.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(read, (q, k, v, k2, v2))


def test_explicit_memory_read_module() -> None:
    read = ExplicitMemoryRead(d_model=16, d_key=8, d_value=12)
    assert sum(1 for _ in read.parameters()) == 4
    bank = read.new_bank()
    entries = torch.randn(2, 9, 16)
    keys, values = read.encode_entries(entries)
    assert keys.shape == (2, 9, 8) and values.shape == (2, 9, 12)
    bank.write(keys, values)
    x = torch.randn(2, 5, 16)
    y = read(x, bank)
    assert y.shape == (2, 5, 16)
    y.square().sum().backward()
    for name, p in read.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The bank itself owns no parameters; the default value width is d_model.
    assert ExplicitMemoryRead(d_model=16).d_value == 16
