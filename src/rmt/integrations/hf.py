"""Hugging Face transformers adapter: `RMTHFConfig` + `RMTForCausalLM`, loadable by the Auto classes.

    rmt export --hf runs/demo runs/demo/hf                                  # then, in any Python with rmt installed:
    model = AutoModelForCausalLM.from_pretrained("runs/demo/hf", trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained("runs/demo/hf")
    out = model.generate(tok("Q: 2 + 3 = ?  A:", return_tensors="pt").input_ids, max_new_tokens=20, do_sample=False)

A folder written by `save_pretrained` (and so by `rmt export --hf`) carries what transformers needs to find the
classes without `import rmt.integrations.hf`: `config.json` has an `auto_map` (AutoConfig,
AutoModelForCausalLM) naming two shim files next to it, `configuration_rmt.py` and `modeling_rmt.py`, each a
one-line import from this module. `trust_remote_code=True` runs exactly that import, so the folder loads wherever
`rmt` is installed and always with the installed code (no stale copy of the model is frozen into the folder).
Importing this module also registers model_type "rmt" with AutoConfig/AutoModelForCausalLM, so after the import
`from_pretrained` works without `trust_remote_code`.

`RMTForCausalLM` wraps the native `rmt.model.RMT` (as `.rmt`) without changing it, so its logits are the native
model's logits, bit for bit. Weights are stored as `rmt.<native name>` in `model.safetensors`.

Generation and "past_key_values". A transformer's past is a key/value cache that grows with the context, and
transformers' generation code treats it that way (it creates a `DynamicCache`, asks it for its sequence length,
slices inputs by `cache_position`). RMT has no such thing: its whole past is the constant-size recurrent
`rmt.model.Cache` (each SSM layer's state and conv window, the thinking core's per-iteration states). So the
adapter does not pretend to have a KV cache. It opts out of transformers' cache creation
(`_supports_default_dynamic_cache` -> False, `_is_stateful` = True) and carries the native `Cache` under its own
name, `rmt_cache`, through `prepare_inputs_for_generation` and `_update_model_kwargs_for_generation`: the first
call runs `RMT.prefill` over the prompt, every later call feeds only the newest token to `RMT.step`. That is the
same prefill/step path as `RMT.generate`, hence greedy `generate()` returns exactly `RMT.generate`'s tokens, and
no step ever re-reads the prefix. Those two hooks and the flag exist (with these meanings) across transformers
4.4x and 5.x, which is why this route was chosen over subclassing a version-specific `Cache` API.

Limits: no padding (an SSM state cannot skip pad tokens, so an `attention_mask` with zeros is refused: batch
equal-length prompts or generate one at a time), no beam search (the cache is not reorderable), no
`inputs_embeds`. Sampling, top-k/p, stopping criteria and streamers work, as they only touch the logits.

Tokenizers. `export_checkpoint` writes the RMT tokenizer twice: as a transformers tokenizer
(`tokenizer.json` + `tokenizer_config.json`, class `PreTrainedTokenizerFast`, which `AutoTokenizer` loads) and
in rmt's own format in `DIR/rmt_tokenizer/` (`load_rmt_tokenizer(DIR)` reads it back). Both give the ids rmt
gives: for BPE the `tokenizers` file is rmt's own; the byte tokenizer becomes a byte-level BPE without merges
whose id for each byte is the byte itself, plus "<pad>" = 256, which is never matched in text (rmt encodes the
text "<pad>" as its five bytes). Neither adds BOS/EOS tokens: "\n" (`generation_config.eos_token_id`) ends a
sample, as in rmt. With transformers 5, `AutoTokenizer.from_pretrained(DIR)` first reads `config.json` and,
seeing custom code there, asks whether to run it (in a script without a terminal it declines at once); the
tokenizer loads either way, and `trust_remote_code=True` skips the question.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rmt.checkpoint import find_checkpoint
from rmt.integrations import require

if TYPE_CHECKING:
    import tokenizers

transformers = require("transformers", "hf", "The Hugging Face adapter (rmt.integrations.hf)")

from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.utils import ModelOutput  # noqa: E402

from rmt.checkpoint import load_model  # noqa: E402
from rmt.model.config import RMTConfig, is_flat, migrate_flat  # noqa: E402
from rmt.model import RMT, Cache  # noqa: E402
from rmt.tokenizer import BPE_FILE, PAD_TOKEN, BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer  # noqa: E402

MODEL_TYPE = "rmt"
TOKENIZER_SUBDIR = "rmt_tokenizer"
# What `trust_remote_code=True` imports: file.Class, the files written next to config.json by `write_shims`.
AUTO_MAP = {"AutoConfig": "configuration_rmt.RMTHFConfig", "AutoModelForCausalLM": "modeling_rmt.RMTForCausalLM"}
_SHIM = '''"""RMT's transformers {what} class, imported from the installed `rmt` package (pip install 'rmt[hf]').

Written by rmt next to config.json, whose auto_map names this file, so that
{loader}.from_pretrained(folder, trust_remote_code=True) finds the class without an explicit rmt import,
always as the installed rmt defines it.
"""

from rmt.integrations.hf import {names}

__all__ = {all}
'''
# transformers checks the top-level imports of these files for installed packages (here: `rmt`), so a Python
# without rmt gets "requires the following packages ...: rmt", not an obscure failure.
SHIMS = {
    "configuration_rmt.py": _SHIM.format(what="config", loader="AutoConfig", names="RMTHFConfig",
                                         all='["RMTHFConfig"]'),
    "modeling_rmt.py": _SHIM.format(what="model", loader="AutoModelForCausalLM", names="RMTForCausalLM, RMTHFConfig",
                                    all='["RMTForCausalLM", "RMTHFConfig"]'),
}
_RMT_FIELDS = [f.name for f in dataclasses.fields(RMTConfig)]


class RMTHFConfig(PretrainedConfig):
    """Every `RMTConfig` field as an attribute of a transformers config (model_type "rmt"); a section is a dict.

    Unknown fields are left to `PretrainedConfig` (which keeps generation defaults such as eos_token_id);
    the RMT fields are checked by `RMTConfig.validate` when the config is built, so a bad value fails here,
    naming the field, not deep inside the model. `auto_map` defaults to `AUTO_MAP`, and `save_pretrained`
    writes the shim files it names, so every saved folder loads with `trust_remote_code=True`.
    """

    model_type = MODEL_TYPE

    def __init__(self, **kwargs: Any) -> None:
        # A folder exported before the config was nested has the flat keys (mem_n_keys, think_iters, ...).
        legacy = {k: kwargs.pop(k) for k in list(kwargs) if is_flat({k: kwargs[k]})}
        for section, values in migrate_flat(legacy).items():
            kwargs[section] = {**kwargs.get(section, {}), **values} if isinstance(values, dict) else values
        # ("vision": the image encoder's section before it became encoders.image; from_dict migrates it)
        given = {name: kwargs.pop(name) for name in (*_RMT_FIELDS, "vision") if name in kwargs}
        rmt_fields = RMTConfig.from_dict(given).to_dict()  # validates: raises ConfigError naming the field
        for name, value in rmt_fields.items():
            setattr(self, name, value)
        kwargs.setdefault("pad_token_id", rmt_fields["pad_id"])
        # The LM head reuses the embedding matrix inside RMT itself; there is no separate output matrix to tie.
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """config.json, plus the shim files its auto_map names (`write_shims`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_shims(save_directory)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """A no-op. transformers calls it after loading a class through `trust_remote_code`, and a class so
        marked copies its whole defining module (this file) into every folder it is saved to, rewriting auto_map
        to point at the copy. RMT's folders carry the shims instead, which import the installed package."""

    def to_rmt_config(self) -> RMTConfig:
        return RMTConfig.from_dict({name: getattr(self, name) for name in _RMT_FIELDS})

    @classmethod
    def from_rmt_config(cls, config: RMTConfig, **kwargs: Any) -> "RMTHFConfig":
        return cls(**config.to_dict(), **kwargs)


@dataclass
class RMTCausalLMOutput(ModelOutput):
    """loss: scalar (when labels are given); logits: (B, T', V) with T' = T or logits_to_keep;
    rmt_cache: the native constant-size `Cache` after the last input token (when use_cache)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    rmt_cache: Cache | None = None


class RMTForCausalLM(PreTrainedModel, GenerationMixin):
    """The native `RMT` behind the transformers causal-LM interface (see the module docstring)."""

    config_class = RMTHFConfig
    base_model_prefix = "rmt"
    main_input_name = "input_ids"
    _is_stateful = True  # generation state is a recurrence, not a KV cache: no assisted decoding, no cropping
    _no_split_modules: list[str] = []

    def __init__(self, config: RMTHFConfig) -> None:
        super().__init__(config)
        self.rmt = RMT(config.to_rmt_config())
        self.post_init()

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """A no-op, for the reason given at `RMTHFConfig.register_for_auto_class`."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # transformers must not build a KV cache for us
        return False

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Native initialisation happens in RMT's constructor and loading overwrites every persistent tensor;
        only the non-persistent buffers need rebuilding (see `_restore_buffers`)."""
        _restore_buffers(module)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "RMTForCausalLM":
        """transformers builds the model without running its constructor's buffer code for real (meta device /
        skipped init) and non-persistent buffers are not in the file, so rebuild them after loading."""
        model = super().from_pretrained(*args, **kwargs)
        model.apply(_restore_buffers)
        return model

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.rmt.embed

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.rmt.embed = value

    def get_output_embeddings(self) -> None:
        return None  # the head is the embedding matrix itself (no separate module)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, rmt_cache: Cache | None = None,
                labels: Tensor | None = None, use_cache: bool | None = None, logits_to_keep: int = 0,
                return_dict: bool | None = None, **kwargs: Any) -> RMTCausalLMOutput | tuple:
        """input_ids (B, T) -> logits (B, T, V) (the last `logits_to_keep` positions when it is > 0).

        rmt_cache: continue from this native Cache (the tokens in input_ids follow the ones it has read).
        use_cache: also return the Cache after the last token. labels (B, T): shifted inside, -100 = ignore.
        Extra keyword arguments transformers passes (position_ids, cache_position, a DynamicCache from an older
        version, ...) have no meaning for a recurrent model and are ignored.
        """
        if input_ids is None:
            raise ValueError("RMTForCausalLM needs input_ids (inputs_embeds is not supported)")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("RMTForCausalLM cannot skip padding (a recurrent state reads every token): pass "
                             "equal-length sequences without padding, or one sequence at a time")
        use_cache = bool(use_cache) if use_cache is not None else False
        cache: Cache | None = None
        if rmt_cache is not None:
            # Decoding: each new token goes through the O(1) step; nothing already read is read again.
            steps, cache = [], rmt_cache
            for t in range(input_ids.shape[1]):
                logits_t, _, cache = self.rmt.step(input_ids[:, t], cache)
                steps.append(logits_t)
            logits = torch.stack(steps, dim=1)
        elif use_cache and logits_to_keep == 1 and labels is None:
            # First generation call: one parallel prefill gives the cache and the only logits generate reads.
            last, _, cache = self.rmt.prefill(input_ids)
            logits = last.unsqueeze(1)
        else:
            logits = self.rmt(input_ids).logits
            if use_cache:  # full logits *and* a cache: the parallel forward keeps no state, so prefill as well
                _, _, cache = self.rmt.prefill(input_ids)
        if logits_to_keep and logits.shape[1] > logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError(f"labels cover {labels.shape[1]} positions but logits {logits.shape[1]}")
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        out = RMTCausalLMOutput(loss=loss, logits=logits, rmt_cache=cache if use_cache else None)
        if return_dict is False:
            return out.to_tuple()
        return out

    # ------------------------------------------------------------------------------------------------ generate
    def prepare_inputs_for_generation(self, input_ids: Tensor, rmt_cache: Cache | None = None,
                                      attention_mask: Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        """With a cache, only the newest token is new to the model; without one, the whole prompt is."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("RMTForCausalLM.generate does not support inputs_embeds")
        if rmt_cache is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "rmt_cache": rmt_cache, "attention_mask": attention_mask,
                "use_cache": kwargs.get("use_cache", True) is not False, "logits_to_keep": 1}

    def _update_model_kwargs_for_generation(self, outputs: ModelOutput, model_kwargs: dict[str, Any],
                                            is_encoder_decoder: bool = False, num_new_tokens: int = 1,
                                            **kwargs: Any) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens, **kwargs)
        model_kwargs["rmt_cache"] = outputs.get("rmt_cache")
        return model_kwargs

    def _reorder_cache(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("RMTForCausalLM does not support beam search (its recurrent cache is not reordered)")


def _restore_buffers(module: torch.nn.Module) -> None:
    """Rebuild the product-key memory's candidate-pair tables (a pure function of topk, kept out of checkpoints)
    on the module's device; any other module is left alone."""
    from rmt.model.memory import ProductKeyMemory

    if isinstance(module, ProductKeyMemory):
        k = module.topk
        pairs = [(a, b) for a in range(k) for b in range(k) if (a + 1) * (b + 1) <= k]
        device = module.keys.device
        module._pairs_a = torch.tensor([a for a, _ in pairs], device=device)
        module._pairs_b = torch.tensor([b for _, b in pairs], device=device)


AutoConfig.register(MODEL_TYPE, RMTHFConfig, exist_ok=True)
AutoModelForCausalLM.register(RMTHFConfig, RMTForCausalLM, exist_ok=True)


# ---------------------------------------------------------------------------------------------------- conversion
def from_native(model: RMT, tokenizer: Tokenizer | None = None) -> RMTForCausalLM:
    """Wrap a native RMT (its weights are copied, not shared) as an RMTForCausalLM."""
    extra = {}
    if tokenizer is not None:
        extra = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    hf = RMTForCausalLM(RMTHFConfig.from_rmt_config(model.config, **extra))
    hf.rmt.load_state_dict(model.state_dict())
    return hf.eval()


def write_shims(directory: str | Path) -> None:
    """Write `configuration_rmt.py` and `modeling_rmt.py` (see `SHIMS`) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in SHIMS.items():
        (directory / name).write_text(text, encoding="utf-8")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of the `tokenizers` ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_backend_tokenizer() -> tokenizers.Tokenizer:
    """rmt's `ByteTokenizer` as a `tokenizers.Tokenizer`: a byte-level BPE without merges whose id for byte b is
    b, plus "<pad>" = 256 as a special token that text never matches (`encode_special_tokens`), so the text
    "<pad>" is five bytes, as in rmt; invalid UTF-8 decodes to U+FFFD, as in rmt. (tokenizer.json does not keep
    that flag; transformers sets it from tokenizer_config.json's `split_special_tokens`.)"""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: b for b, char in _bytes_to_unicode().items()}
    vocab[PAD_TOKEN] = ByteTokenizer.pad_id
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(PAD_TOKEN, special=True, normalized=False)])
    tokenizer.encode_special_tokens = True
    return tokenizer


def write_hf_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """`tok` as a transformers tokenizer in `directory` (tokenizer.json + tokenizer_config.json) that
    `AutoTokenizer.from_pretrained` loads as a `PreTrainedTokenizerFast` giving the ids `tok` gives."""
    from tokenizers import Tokenizer as BackendTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(tok, ByteTokenizer):
        backend, split_special = byte_backend_tokenizer(), True
    elif isinstance(tok, BPETokenizer):
        # rmt's BPE is a `tokenizers` file already (and, like rmt, it matches "<pad>" in text).
        with tempfile.TemporaryDirectory() as tmp:
            tok.save(tmp)
            backend, split_special = BackendTokenizer.from_file(str(Path(tmp) / BPE_FILE)), False
    else:
        raise ValueError(f"export: no transformers form for the tokenizer {tok!r} (expected byte or BPE)")
    backend.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD_TOKEN,
        "split_special_tokens": split_special,
        "clean_up_tokenization_spaces": False,  # would join " ." into "." and break the round trip
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def export_checkpoint(run: str | Path, out: str | Path) -> Path:
    """Convert an rmt checkpoint (a run folder or the checkpoint folder itself) into a transformers folder:
    config.json (model_type "rmt", auto_map), configuration_rmt.py + modeling_rmt.py (the shims auto_map
    names), model.safetensors, generation_config.json, the transformers tokenizer (tokenizer.json +
    tokenizer_config.json) and rmt's own tokenizer in rmt_tokenizer/. A checkpoint saved without a tokenizer
    uses the byte tokenizer, as every rmt command does."""
    ckpt = find_checkpoint(run)
    out = Path(out)
    if out.resolve() == ckpt.resolve():
        raise ValueError(f"{out}: the export folder must differ from the checkpoint folder (both have config.json)")
    model, tok = load_model(ckpt)
    tok = tok or ByteTokenizer()
    hf = from_native(model, tok)
    hf.save_pretrained(out, safe_serialization=True)
    write_hf_tokenizer(tok, out)
    tok.save(out / TOKENIZER_SUBDIR)
    return out


def load_rmt_tokenizer(directory: str | Path) -> Tokenizer:
    """The rmt tokenizer saved next to an exported model (DIR/rmt_tokenizer/)."""
    d = Path(directory) / TOKENIZER_SUBDIR
    if not (d / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{d}: no rmt tokenizer here (was the folder written by `rmt export --hf`?)")
    return load_tokenizer(d)
