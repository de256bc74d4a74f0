"""Training: curriculum stages (`curriculum.py`), batches from task mixes (`batches.py`), the loop (`trainer.py`)."""

from rmt.training.curriculum import Stage
from rmt.training.trainer import Trainer

__all__ = ["Stage", "Trainer"]
