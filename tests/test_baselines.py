import pytest
import torch

from rmt.baselines.gpt import GPT, GPTConfig
from rmt.model.config import ConfigError


def test_gpt_cached_decoding_matches_full_forward():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=2, d_model=32, max_len=64)).eval()
    idx = torch.randint(0, 256, (2, 15))
    full, _ = m(idx)
    logits, cache = m(idx[:, :5])
    torch.testing.assert_close(logits, full[:, :5], atol=1e-5, rtol=1e-5)
    sizes = []
    for t in range(5, 15):
        logits, cache = m(idx[:, t:t + 1], cache, t)
        torch.testing.assert_close(logits[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
        sizes.append(GPT.cache_bytes(cache))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # the KV cache grows with the context
    assert m.generate(idx[:, :5], 4).shape == (2, 4)


def test_gpt_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="n_head"):
        GPTConfig(d_model=30, n_head=4)
    with pytest.raises(ConfigError, match="n_layer"):
        GPTConfig(n_layer=0)


def test_gru_cached_decoding_matches_full_forward_and_matching_counts_parameters():
    from rmt.baselines.gru import GRUConfig, GRULM, matching_gru

    torch.manual_seed(0)
    m = GRULM(GRUConfig(vocab_size=300, pad_id=299, n_layer=2, d_model=32)).eval()
    idx = torch.randint(0, 299, (2, 12))
    full, _ = m(idx)
    logits, state = m(idx[:, :4])
    for t in range(4, 12):
        logits, state = m(idx[:, t:t + 1], state)
        torch.testing.assert_close(logits[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    assert m.generate(idx[:, :4], 3).shape == (2, 3)
    cfg = matching_gru(1_500_000, vocab_size=2048, pad_id=0)
    assert abs(GRULM(cfg).num_params() - 1_500_000) / 1_500_000 < 0.05
    with pytest.raises(ConfigError, match="d_model"):
        GRUConfig(d_model=0)


def test_gpt_matching_counts_the_vocabulary():
    from rmt.baselines.cot import matching_config

    cfg = matching_config(1_500_000, max_len=512, vocab_size=2048, pad_id=0)
    assert cfg.vocab_size == 2048 and abs(GPT(cfg).num_params() - 1_500_000) / 1_500_000 <= 0.10


@pytest.mark.parametrize("kind", ["gpt", "gru"])
def test_logits_at_gives_the_scored_positions_logits_and_the_same_loss(kind):
    """Training asks for logits only where there are targets; they are the full forward's at those positions,
    so the loss (mean over scored positions) and its gradient are the same."""
    import torch.nn.functional as F

    from rmt.baselines.gru import GRUConfig, GRULM

    torch.manual_seed(0)
    m = (GPT(GPTConfig(vocab_size=300, pad_id=299, n_layer=2, n_head=2, d_model=32, max_len=64)) if kind == "gpt"
         else GRULM(GRUConfig(vocab_size=300, pad_id=299, n_layer=2, d_model=32)))
    idx = torch.randint(0, 299, (3, 14))
    y = torch.full((3, 14), -100)
    y[0, 9:] = idx[0, 9:]
    y[2, 4:7] = idx[2, 4:7]  # row 1 has no target at all
    scored = y != -100
    full, _ = m(idx)
    some, _ = m(idx, logits_at=scored)
    assert some.shape == (int(scored.sum()), 300)
    torch.testing.assert_close(some, full[scored], atol=1e-5, rtol=1e-5)
    loss_full = F.cross_entropy(full.flatten(0, 1), y.flatten(), ignore_index=-100)
    loss_some = F.cross_entropy(some, y[scored])
    torch.testing.assert_close(loss_some, loss_full, atol=1e-6, rtol=1e-6)
    g_some = torch.autograd.grad(loss_some, m.embed.weight)[0]
    g_full = torch.autograd.grad(F.cross_entropy(m(idx)[0].flatten(0, 1), y.flatten(), ignore_index=-100),
                                 m.embed.weight)[0]
    torch.testing.assert_close(g_some, g_full, atol=1e-6, rtol=1e-5)
