"""The Recurrent Memory Transformer and its parts, one module each:

    config.py      RMTConfig: global fields and one section per part
    rmt.py         RMT: the spine (embed -> prelude -> router -> memory -> core -> coda), Cache, loss_fn
    ssm.py         the selective-SSM token mixer and the residual block every layer is made of
    scan.py        the selective scan: sequential reference, chunked (training), one step (decoding)
    kernels.py     optional GPU kernels for the scan (mamba-ssm), imported lazily
    memory/        product-key memory, the explicit bank, the reader that builds queries and reads
    thinking.py    the thinking core (the state update) and its exit rules
    router.py      the router over {memory, think, both}
    encoders.py    the interface of the encoders a modality brings (a visual task's image encoder)
    presets.py     model sizes from tiny to 70B
"""

from .config import ConfigError, RMTConfig
from .rmt import PREFILL_CHUNK, RMT, BankSource, Cache, GenerationResult, Output, loss_fn, migrate_state_dict
from .thinking import ExitRule, FixedIterations, LatentChange, PredictionKL

__all__ = ["RMT", "RMTConfig", "ConfigError", "BankSource", "PREFILL_CHUNK", "Cache", "GenerationResult", "Output", "loss_fn",
           "migrate_state_dict", "ExitRule", "FixedIterations", "LatentChange", "PredictionKL"]
