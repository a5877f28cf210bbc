"""First-party plugin ``builtin_adapters``: checkpoint converters and parameter-efficient adapters.

Registered through ``x2vlm_register_adapters`` exactly as a third-party plugin would.
Each factory imports its module on first use, so loading this plugin costs nothing.

==================  =================================================================
name                factory
==================  =================================================================
lora                ``(model, spec: LoraSpec, freeze="all") -> adapted layer names``
reference-x2vlm     ``(checkpoint, out=None, **kw) -> (X2VLM, ConversionReport)`` (official X²-VLM)
reference-xvlm      same for X-VLM files (Swin, CLIP-ViT, DeiT vision encoders refused)
hf-bert-init        ``(bert_dir, model="x2vlm-base", **overrides) -> X2VLM`` (X²-VLM init rule)
model-dir           ``(directory, **overrides) -> X2VLM`` (our save_pretrained format)
xlmr-swap           ``(source, xlmr, out=None, **kw) -> (X2VLM, SwapReport)`` (the CCLM XLM-R swap)
==================  =================================================================
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl


def lora(model, spec, freeze="all"):
    from .lora import apply_lora
    return apply_lora(model, spec, freeze)


def reference_x2vlm(checkpoint, *, out=None, **kwargs):
    from .reference import convert_to_directory
    return convert_to_directory(checkpoint, out, source="x2vlm", **kwargs)


def reference_xvlm(checkpoint, *, out=None, **kwargs):
    from .reference import convert_to_directory
    return convert_to_directory(checkpoint, out, source="xvlm", **kwargs)


def hf_bert_init(bert_dir, model="x2vlm-base", **overrides):
    from .hf_init import model_from_hf_bert
    return model_from_hf_bert(bert_dir, model, **overrides)


def model_dir(directory, **overrides):
    from x2core.model.directory import from_pretrained
    return from_pretrained(directory, **overrides)


def xlmr_swap(source, xlmr, *, out=None, **kwargs):
    from .xlmr_swap import save_swapped, swap_text_encoder
    model, report = swap_text_encoder(source, xlmr, **kwargs)
    if out is not None:
        save_swapped(model, report, out)
    return model, report


@hookimpl
def x2vlm_register_adapters(register):
    register("lora", lora, description="LoRA (peft) on chosen vision/text/fusion linear layers, "
                                       "with freezing policies", kind="parameter-efficient")
    register("reference-x2vlm", reference_x2vlm,
             description="official X²-VLM checkpoint (BEiT-v2 + BERT-18 / XLM-R + cross encoder) "
                         "-> X2VLM", kind="converter", converts_from="x2vlm")
    register("reference-xvlm", reference_xvlm,
             description="official X-VLM checkpoint -> X2VLM (Swin, CLIP-ViT and DeiT vision "
                         "encoders refused)",
             kind="converter", converts_from="xvlm")
    register("hf-bert-init", hf_bert_init,
             description="X2VLM from a local HF BERT directory: BERT top layers copied into the "
                         "fusion layers (X²-VLM init rule)", kind="converter")
    register("model-dir", model_dir, description="our model directory (config.json + "
                                                 "model.safetensors)", kind="converter")
    register("xlmr-swap", xlmr_swap,
             description="English X2VLM -> multilingual: keep vision + fusion, XLM-R text "
                         "encoder, width adapter and new MLM head (CCLM recipe)", kind="converter")
