"""Where the shared, read-only datasets live.

The data is never copied into the repository: tasks read it in place. By default it sits in a `shared/data`
folder next to the repository root (``<repo>/../shared/data``); the environment variable ``RMT_DATA_DIR``
points somewhere else (another checkout, a cluster mount, a test fixture).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "RMT_DATA_DIR"

# src/rmt/tasks/paths.py -> parents[3] is the repository root.
_REPO_ROOT = Path(__file__).resolve().parents[3]


def data_dir() -> Path:
    """The folder holding the shared datasets: ``$RMT_DATA_DIR`` if set, else ``<repo root>/../shared/data``.

    Read at call time (not import time) so a changed environment variable takes effect for configs built later.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return _REPO_ROOT.parent / "shared" / "data"
