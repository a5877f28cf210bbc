"""The model wing: vision and fusion encoders, attention, video pooling, losses, boxes,
the model config, the factory, the width adapter and model directories."""

__all__ = ["X2VLM"]


def __getattr__(name):
    # Lazy, so that plugin modules registering named models (x2core.model.registry)
    # import without torch: the registries are built on every CLI start.
    if name == "X2VLM":
        from x2core.model.x2vlm import X2VLM
        return X2VLM
    raise AttributeError(f"module 'x2core.model' has no attribute {name!r}")
