"""The pretraining step traces to one torch.compile graph.

A graph break costs twice on a GPU: the compiled pieces cannot be fused across it, and
the data-dependent branch behind most breaks is a host sync that leaves the GPU idle
every step. These tests pin the property with ``torch._dynamo.explain`` (tracing only,
no code generation, so they are quick on CPU) and check that the traced step computes
the eager losses and gradients.
"""
from __future__ import annotations

import pytest
import torch

import x2core
from x2core.train.bench import synthetic_batch
from x2core.model.losses import bbox_losses, mlm_loss

CPU = torch.device("cpu")


def tiny(**overrides):
    torch.manual_seed(0)
    return x2core.create_model("x2vlm-tiny", **overrides).train()


def video_batch(model, batch_size=3, frames=2):
    batch = synthetic_batch(model, batch_size, CPU, regions=False)
    size = model.config.vision.image_size
    batch["video"] = torch.randn(batch_size, frames, 3, size, size)
    del batch["image"]
    return batch


def _breaks(model, batch):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda b: model(b)["loss"])(batch)
    return explained.graph_break_count, [r.reason.splitlines()[0] for r in explained.break_reasons]


@pytest.mark.parametrize("kind", ["image", "region", "video"])
def test_pretraining_step_has_no_graph_break(kind):
    model = tiny()
    if kind == "video":
        batch = video_batch(model)
    else:
        batch = synthetic_batch(model, 4, CPU, regions=kind == "region")
    count, reasons = _breaks(model, batch)
    assert count == 0, reasons


def test_traced_step_computes_the_eager_losses_and_gradients():
    model = tiny()
    batch = synthetic_batch(model, 4, CPU, regions=True)
    torch.manual_seed(1)  # the hard-negative sampler draws from the global generator
    eager = model(batch)
    eager["loss"].backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    traced = compiled(batch)
    traced["loss"].backward()
    for key in ("itc", "itm", "mlm", "bbox", "giou", "loss"):
        torch.testing.assert_close(traced[key], eager[key], rtol=1e-5, atol=1e-6, msg=key)
    assert set(eager_grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in eager_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad,
                                   rtol=1e-4, atol=1e-6, msg=name)


def test_itm_rows_without_a_negative_are_ignored_not_dropped():
    """One image group for the whole batch: no row has a negative, so ITM is the
    positives' cross-entropy alone (the static-shape form must not count the dummy rows)."""
    model = tiny().eval()  # no dropout: the two fusion passes must agree
    batch = synthetic_batch(model, 3, CPU, regions=False)
    batch["idx"] = torch.zeros(3, dtype=torch.long)  # every caption describes the same image
    image_embeds, image_atts, _ = model.encode_image(batch["image"])
    text_embeds = model.encode_text(batch["text_ids"], batch["text_atts"])
    image_feat, text_feat = model.image_features(image_embeds), model.text_features(text_embeds)
    loss = model.itm_loss(image_embeds, image_atts, image_feat, text_embeds, batch["text_atts"],
                          text_feat, model.temperature(), batch["idx"])
    positives = model.itm_logits(image_embeds, image_atts, text_embeds, batch["text_atts"])
    expected = torch.nn.functional.cross_entropy(positives.float(), torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(loss, expected)


def test_mlm_loss_without_a_branch_is_the_mean_over_masked_tokens_and_zero_when_none():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    labels = torch.tensor([[1, -100, 4], [-100, -100, 6]])
    picked = logits[labels != -100]
    expected = torch.nn.functional.cross_entropy(picked, labels[labels != -100])
    torch.testing.assert_close(mlm_loss(logits, labels), expected)
    none = mlm_loss(logits, torch.full((2, 3), -100))
    assert none.item() == 0.0
    none.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_a_degenerate_box_zeroes_the_batch_giou_without_nan_gradients():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, -0.1, 0.1]])  # negative width
    l1, giou = bbox_losses(pred, target)
    assert giou.item() == 0.0
    (l1 + giou).backward()
    assert torch.isfinite(pred.grad).all()


def test_itc_keeps_large_image_ids_distinct_under_bf16_autocast():
    """COCO-size ids (> 256) must not round together in bf16: four distinct ids give the
    same loss as one positive per row (idx=None)."""
    from x2core.model.losses import itc_loss

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    temp = torch.tensor(0.07)
    ids = torch.tensor([100001, 100002, 100003, 100004])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with_ids = itc_loss(img, txt, temp, ids)
        without = itc_loss(img, txt, temp, None)
    torch.testing.assert_close(with_ids.float(), without.float(), rtol=1e-2, atol=1e-2)
