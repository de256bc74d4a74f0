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
