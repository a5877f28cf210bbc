"""A named-model plugin: ``x2vlm-small`` and the weights a team trained for it.

A named model is an architecture, overrides on the ModelConfig defaults (X2-VLM base),
which ``Architecture(overrides)`` turns into the factory. Its weights are records: a
``tag``; a ``location`` (a local path, absolute or under ``$X2VLM_WEIGHTS_DIR``; nothing
is ever downloaded) holding a model directory, a run directory or a checkpoint; the
``preprocessing`` they expect; a description; and where they come from.
``create_model("x2vlm-small", pretrained="captions-v1")`` builds the model and loads them.
"""
from x2core import hookimpl
from x2core.model.registry import Architecture, PretrainedWeights

SMALL = {
    "vision": {"image_size": 64, "width": 96, "depth": 4, "num_heads": 3, "drop_path_rate": 0.0},
    "text": {"hidden_size": 96, "num_layers": 2, "num_heads": 3, "intermediate_size": 384,
             "max_position_embeddings": 64},
    "fusion": {"num_layers": 2, "num_heads": 3, "intermediate_size": 384},
    "embed_dim": 64,
}


@hookimpl
def x2vlm_register_models(register):
    register("x2vlm-small", Architecture(SMALL),
             description="4-block ViT + 2-layer text + 2-layer fusion, 64 px (plugin guide "
                         "example)",
             pretrained=[PretrainedWeights(
                 "captions-v1", "x2vlm-small-captions-v1",
                 preprocessing={"image_size": 64, "interpolation": "bilinear"},
                 description="pretrained on our captions, first run",
                 source="x2vlm export runs/small-v1 $X2VLM_WEIGHTS_DIR/x2vlm-small-captions-v1")])
