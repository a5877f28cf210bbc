"""First-party plugin ``builtin_adapters``: checkpoint converters and parameter-efficient adapters.

Registered through ``x2vlm_register_adapters`` exactly as a third-party plugin would.
Each factory imports its module on first use, so loading this plugin costs nothing.

==================  =================================================================
name                factory
==================  =================================================================
lora                ``(model, spec: LoraSpec, freeze="all") -> adapted layer names``
reference-x2vlm     ``(checkpoint, **kw) -> (X2VLM, ConversionReport)`` (official X²-VLM)
reference-xvlm      same for X-VLM files (Swin vision encoders are refused)
hf-bert-init        ``(bert_dir, model="x2vlm-base", **overrides) -> X2VLM`` (X²-VLM init rule)
model-dir           ``(directory, **overrides) -> X2VLM`` (our save_pretrained format)
xlmr-swap           ``(source, xlmr, **kw) -> (X2VLM, SwapReport)`` (the CCLM XLM-R swap)
==================  =================================================================
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl


def lora(model, spec, freeze="all"):
    from .lora import apply_lora
    return apply_lora(model, spec, freeze)


def reference_x2vlm(checkpoint, **kwargs):
    from .reference import convert_reference_checkpoint
    return convert_reference_checkpoint(checkpoint, source="x2vlm", **kwargs)


def reference_xvlm(checkpoint, **kwargs):
    from .reference import convert_reference_checkpoint
    return convert_reference_checkpoint(checkpoint, source="xvlm", **kwargs)


def hf_bert_init(bert_dir, model="x2vlm-base", **overrides):
    from .hf_init import model_from_hf_bert
    return model_from_hf_bert(bert_dir, model, **overrides)


def model_dir(directory, **overrides):
    from .model_dir import from_pretrained
    return from_pretrained(directory, **overrides)


def xlmr_swap(source, xlmr, **kwargs):
    from .xlmr_swap import swap_text_encoder
    return swap_text_encoder(source, xlmr, **kwargs)


@hookimpl
def x2vlm_register_adapters(register):
    register("lora", lora, description="LoRA (peft) on chosen vision/text/fusion linear layers, "
                                       "with freezing policies", kind="parameter-efficient")
    register("reference-x2vlm", reference_x2vlm,
             description="official X²-VLM checkpoint (BEiT-v2 + BERT-18 / XLM-R + cross encoder) "
                         "-> X2VLM", kind="converter")
    register("reference-xvlm", reference_xvlm,
             description="official X-VLM checkpoint -> X2VLM (Swin vision encoders refused)",
             kind="converter")
    register("hf-bert-init", hf_bert_init,
             description="X2VLM from a local HF BERT directory: BERT top layers copied into the "
                         "fusion layers (X²-VLM init rule)", kind="converter")
    register("model-dir", model_dir, description="our model directory (config.json + "
                                                 "model.safetensors)", kind="converter")
    register("xlmr-swap", xlmr_swap,
             description="English X2VLM -> multilingual: keep vision + fusion, XLM-R text "
                         "encoder, width adapter and new MLM head (CCLM recipe)", kind="converter")
