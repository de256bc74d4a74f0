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
