"""First-party plugin: the named models ``x2vlm-tiny``, ``x2vlm-base`` and ``x2vlm-large``,
and the official X²-VLM checkpoints as pretrained weights.

Each model is an architecture (overrides on the ModelConfig defaults, which are X²-VLM
base) plus the tags of its weights. Nothing is downloaded: a tag's location is a name
under ``$X2VLM_WEIGHTS_DIR``, the folder where ``x2vlm convert`` wrote the official
checkpoint as a model directory, e.g. for ``x2vlm-base.4m``::

    x2vlm convert --from x2vlm x2vlm_base_4m.th --out $X2VLM_WEIGHTS_DIR/x2vlm-base-4m \\
        --tokenizer /models/bert-base-uncased

Registration only (no torch): ``x2core.model.registry`` is torch-free.
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl
from x2core.model.registry import Architecture, PretrainedWeights

TINY = {
    "vision": {"image_size": 64, "patch_size": 16, "width": 64, "depth": 2, "num_heads": 2,
               "drop_path_rate": 0.0},
    "text": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 64},
    "fusion": {"num_layers": 2, "num_heads": 2, "intermediate_size": 128},
    "embed_dim": 32,
}
LARGE = {
    "vision": {"width": 1024, "depth": 24, "num_heads": 16},
    # bert-large-uncased-12l: BERT-large width with 12 layers (facts §1.1)
    "text": {"hidden_size": 1024, "num_layers": 12, "num_heads": 16, "intermediate_size": 4096},
    "fusion": {"num_heads": 16, "intermediate_size": 4096},
}

# Every official checkpoint was pretrained at 224 px (configs/pretrain/*.yaml: image_res 224)
# with the evaluation transform the ``preprocess`` defaults describe: squash resize,
# bicubic, CLIP mean/std (facts §6). Only the size is spelled out; the rest are defaults.
PRETRAIN_224 = {"image_size": 224}

_DATA = {"4m": "4M images (COCO, VG, SBU, CC3M) with their regions",
         "1b": "1B image-text pairs (LAION) plus the 4M data and their regions"}
_TOKENIZER = {"base": "bert-base-uncased", "large": "bert-large-uncased"}


def official(size: str, data: str) -> PretrainedWeights:
    """The official ``x2vlm_{size}_{data}.th`` converted to ``$X2VLM_WEIGHTS_DIR/x2vlm-{size}-{data}``."""
    location = f"x2vlm-{size}-{data}"
    return PretrainedWeights(
        data, location, PRETRAIN_224,
        description=f"X2-VLM {size}, pretrained on {_DATA[data]}",
        source=(f"the official X2-VLM checkpoint x2vlm_{size}_{data}.th "
                f"(configs/pretrain/x2vlm_{size}_{data}.yaml); convert it with: x2vlm convert "
                f"--from x2vlm x2vlm_{size}_{data}.th --out $X2VLM_WEIGHTS_DIR/{location} "
                f"--tokenizer /models/{_TOKENIZER[size]}"))


@hookimpl
def x2vlm_register_models(register):
    register("x2vlm-tiny", Architecture(TINY),
             description="Tiny sizes for tests, the demo and CPU debugging")
    register("x2vlm-base", Architecture({}),
             description="BEiT-v2 B/16 + 12-layer text encoder + 6-layer fusion (X2-VLM base)",
             reference="configs/pretrain/x2vlm_base_4m.yaml",
             pretrained=[official("base", "4m"), official("base", "1b")])
    register("x2vlm-large", Architecture(LARGE),
             description="BEiT-v2 L/16 + BERT-large-12l + 6-layer fusion (X2-VLM large, 593M)",
             reference="configs/pretrain/x2vlm_large_4m.yaml",
             pretrained=[official("large", "4m"), official("large", "1b")])
