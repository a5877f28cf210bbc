"""A head plugin: the colour of the largest shape in an image (``largest-colour``).

A head is an ``nn.Module`` around the core model (``self.model``) that says which record
fields it needs, builds its dataset, computes its loss, and predicts and scores; see
:mod:`x2core.train.heads`. :class:`~x2core.train.heads.HeadBase` supplies strict options,
the field check and an ``evaluate`` built from ``predict`` + ``compute_metrics``.
It reads stores packed with ``x2vlm pack regions`` (captions such as "large red circle").
"""
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from x2core import hookimpl
from x2core.errors import InputError
from x2core.train.heads import HeadBase, HeadData, StoreDataset, collate, image_res, load_image

COLOURS = ("red", "green", "blue", "yellow", "white", "purple")


@dataclass
class LargestColourOptions:
    """``head_options`` of the head; an unknown key is a one-line ConfigError."""

    colours: list[str] = field(default_factory=lambda: list(COLOURS))
    train_augment: bool = False  # a random crop can cut the largest shape away


class LargestColourHead(HeadBase):
    name = "largest-colour"
    Options = LargestColourOptions
    # Checked on the first record of every store before training starts.
    train_fields = eval_fields = ("image", "regions.bbox", "regions.texts.en")

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.classifier = nn.Linear(model.vision_encoder.width, len(self.options.colours))

    def colour_of_largest(self, record, i) -> int:
        """Index in ``options.colours`` of the colour word of the largest region's caption."""
        big = max(record["regions"], key=lambda r: r["bbox"][2] * r["bbox"][3])
        words = big["texts"]["en"][0].split()
        found = [c for c in self.options.colours if c in words]
        if not found:
            raise InputError(f"head 'largest-colour': record {i}: the caption {' '.join(words)!r} "
                             f"names none of the colours {self.options.colours}")
        return self.options.colours.index(found[0])

    def build_dataset(self, store, *, train):
        res = image_res(self.model)
        augment = train and self.options.train_augment

        def item(record, i, rng):
            return {"image": load_image(record["image"], res, train=augment, rng=rng),
                    "label": self.colour_of_largest(record, i), "index": i}
        return HeadData(StoreDataset(store, item), collate)

    def logits(self, image):
        """``image (B, 3, R, R)`` -> ``(B, len(colours))`` from the vision CLS token."""
        embeds, _, _ = self.model.encode_image(image)
        return self.classifier(embeds[:, 0])

    def forward(self, batch):
        return {"loss": F.cross_entropy(self.logits(batch["image"]), batch["label"])}

    def predict(self, batch):
        best = self.logits(batch["image"]).argmax(1).tolist()
        colours = self.options.colours
        return [{"index": int(i), "colour": colours[b], "truth": colours[int(t)]}
                for i, b, t in zip(batch["index"], best, batch["label"])]

    def compute_metrics(self, predictions):
        right = sum(p["colour"] == p["truth"] for p in predictions)
        return {"acc": 100.0 * right / max(1, len(predictions))}


@hookimpl
def x2vlm_register_heads(register):
    register("largest-colour", LargestColourHead,
             description="colour of the largest shape, from the vision CLS (plugin guide example)")
