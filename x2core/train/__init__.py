"""The one training loop (``x2core.train.pretrain.train``) and its parts."""
from x2core.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
