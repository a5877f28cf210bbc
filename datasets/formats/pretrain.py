"""Pretraining JSON lines: ``image-text`` and ``regions`` (the reference's
ImageTextJsonDataset / RegionTextJsonDataset layouts, facts §6).

image-text: ``{"caption" | "desc": str | [str] | {lang: str | [str]}, "binary": <base64>
| "image_rpath": <path>}`` -> ``image, width, height, texts``.

regions: ``{"elems": [{"caption": ..., "bb": [x, y, w, h], "attributes": str | [str]}],
"caption": optional whole-image caption, "binary" | "image_rpath"}`` -> ``image, width,
height, texts (whole image, when given), regions: [{bbox, texts, attributes}]``; boxes
are in pixels of the stored image (scaled when ``--max-side`` downsizes it).
"""
from __future__ import annotations

from typing import Any

from .common import FormatReader

CAPTION_KEYS = ("caption", "desc")
IMAGE_KEYS = ("binary", "image_rpath", "image")


class _ImageMixin:
    image_key: str | None = None

    def load_image(self, file, index, raw: dict):
        key = self.image_key or next((k for k in IMAGE_KEYS if raw.get(k) is not None), None)
        if key is None or raw.get(key) is None:
            raise self.error(file, index, key or "image_rpath",
                             "missing image: expected 'binary' (base64) or 'image_rpath'")
        if key == "binary":
            return self.image_from_base64(file, index, key, raw[key])
        return self.image_from_path(file, index, key, raw[key])


class ImageTextReader(_ImageMixin, FormatReader):
    name = "image-text"
    options = ("caption_key", "image_key")

    def setup(self, caption_key: str | None = None, image_key: str | None = None) -> None:
        self.caption_key = caption_key
        self.image_key = image_key

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        key = self.caption_key or next((k for k in CAPTION_KEYS if k in raw), None)
        if key is None or key not in raw:
            looked = f"'{self.caption_key}'" if self.caption_key else "'caption' or 'desc'"
            raise self.error(file, index, key or "caption", f"missing caption (looked for {looked})")
        texts = self.texts(file, index, key, raw[key])
        image = self.load_image(file, index, raw)
        record = {**self.image_fields(image), "texts": texts}
        if raw.get("image_id") is not None:
            record["image_id"] = raw["image_id"]
        record["source"] = self.source(file, index)
        return record


class RegionReader(_ImageMixin, FormatReader):
    name = "regions"
    options = ("image_key",)

    def setup(self, image_key: str | None = None) -> None:
        self.image_key = image_key

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        elems = raw.get("elems")
        if elems is None:
            elems = []
        if not isinstance(elems, list):
            raise self.error(file, index, "elems", "expected a list of regions")
        texts = None
        if raw.get("caption") is not None:
            texts = self.texts(file, index, "caption", raw["caption"])
        if not elems and texts is None:
            raise self.error(file, index, "elems", "no regions and no whole-image caption")
        # Texts first: cheap checks before decoding the image.
        parsed = []
        for i, elem in enumerate(elems):
            field = f"elems[{i}]"
            if not isinstance(elem, dict):
                raise self.error(file, index, field, "expected an object {caption, bb}")
            region_texts = self.texts(file, index, f"{field}.caption", elem.get("caption"))
            attributes = self.string_list(file, index, f"{field}.attributes", elem.get("attributes"))
            if elem.get("bb") is None:
                raise self.error(file, index, f"{field}.bb", "missing box")
            parsed.append((field, elem["bb"], region_texts, attributes))
        image = self.load_image(file, index, raw)
        regions = []
        for field, bb, region_texts, attributes in parsed:
            region = {"bbox": self.box(file, index, f"{field}.bb", bb, image), "texts": region_texts}
            if attributes:
                region["attributes"] = attributes
            regions.append(region)
        record = self.image_fields(image)
        if texts is not None:
            record["texts"] = texts
        record["regions"] = regions
        if raw.get("image_id") is not None:
            record["image_id"] = raw["image_id"]
        record["source"] = self.source(file, index)
        return record
