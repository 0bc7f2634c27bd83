"""Session-wide test settings: W&B offline and contained, one torch thread (2-core machines thrash with more)."""

import os
import tempfile

import torch

_WANDB_HOME = tempfile.mkdtemp(prefix="memcallback-wandb-")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("WANDB_DATA_DIR", os.path.join(_WANDB_HOME, "data"))
os.environ.setdefault("WANDB_CACHE_DIR", os.path.join(_WANDB_HOME, "cache"))
os.environ.setdefault("WANDB_CONFIG_DIR", os.path.join(_WANDB_HOME, "config"))
torch.set_num_threads(1)
