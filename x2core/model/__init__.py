"""The model wing: vision and fusion encoders, attention, video pooling, losses, boxes,
the model config, the factory, the width adapter and model directories."""
from x2core.model.x2vlm import X2VLM

__all__ = ["X2VLM"]
