"""The one training loop (``x2core.train.loop.train``) and its parts."""
from .config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
