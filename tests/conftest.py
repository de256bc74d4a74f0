"""The suite runs single-threaded. Its models are tiny, so extra threads only add synchronisation, and on a
busy machine oversubscribed threads slowed some tests ten-fold (168 s vs 13 s measured). Subprocesses the tests
start (torchrun, the CLI) inherit the setting through OMP_NUM_THREADS."""

import os

import torch

os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
