"""Bridges from `rmt` to other ecosystems, each behind an optional extra (R7, R9 in DESIGN.md).

    rmt.integrations.hf          Hugging Face transformers: config + causal-LM classes, Auto registration,
                                 `rmt export --hf`                                     (pip install rmt[hf])
    rmt.integrations.harness     lm-evaluation-harness: `--model rmt`, local offline tasks,
                                 `rmt eval --harness`                                  (pip install rmt[eval])
    rmt.integrations.faiss_bank  an explicit memory bank behind a FAISS index, top-k reads,
                                 `rmt memory build`                                    (pip install rmt[faiss])

`import rmt` never imports these modules, and importing one of them never imports its library until it is
used, so the core package and CLI work without any extra. What the three modules share lives here: the
check that names the extra to install, and finding the checkpoint inside a run folder.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingExtraError telling the user to `pip install 'rmt[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not installed ({e}). "
            f"Install it with: pip install 'rmt[{extra}]'  (or: pip install -e '.[{extra}]' in a checkout)"
        ) from None
