"""Image-caption files as published: Karpathy's splits and the COCO captions.

karpathy: ``dataset_coco.json`` / ``dataset_flickr30k.json`` ``{"images": [{"filepath"?,
"filename", "split": train|restval|val|test, "sentences": [{"raw", "tokens"}], "cocoid" |
"imgid"}], "dataset"}``; ``--split`` picks the images (``train+restval`` is the
reference's training set). One record per image: ``image, width, height, texts,
image_id, split``.

coco-captions: ``captions_train2014.json`` / ``captions_val2014.json`` ``{"images": [{"id",
"file_name"}], "annotations": [{"image_id", "id", "caption"}]}``; one record per image
with all its captions. Images under ``--images`` as ``file_name`` or
``train2014/file_name`` (the folder named in a 2014 file name).

Errors name the file and the position in its ``images`` list (``file[i]``).
"""
from __future__ import annotations

import os
import re
from typing import Any

from .common import FormatReader
from .layouts import find_under, load_whole, parse_splits

KARPATHY_SPLITS = ("train", "restval", "val", "test")


class _ObjectFileReader(FormatReader):
    """A reader of one JSON object per file whose records are a list inside it."""

    list_key = "images"

    def unit(self, file: str) -> str:
        return "entry"

    def items(self, file: str) -> list:
        data = load_whole(file)
        items = data.get(self.list_key) if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise self.error(file, 0, self.list_key, f"expected a '{self.list_key}' list")
        return items

    def entries(self):
        for file in self.ann_files:
            for index, raw in enumerate(self.items(file)):
                if self.keep(raw):
                    yield file, index, raw

    def keep(self, raw: Any) -> bool:
        return True

    def captions_for(self, file: str, index: int, field: str, key: Any, list_key: str,
                     id_key: str) -> list[str]:
        """The checked ``caption`` of every ``list_key`` item whose ``id_key`` is ``key``
        (COCO's ``annotations``, MSRVTT's ``sentences``); ``field`` names the record's id."""
        cache = self.__dict__.setdefault("_caption_index", {})
        if file not in cache:
            items = load_whole(file).get(list_key)
            if not isinstance(items, list):
                raise self.error(file, index, list_key, f"expected a '{list_key}' list")
            groups: dict = {}
            for item in items:
                if isinstance(item, dict):
                    groups.setdefault(item.get(id_key), []).append(item.get("caption"))
            cache[file] = groups
        captions = cache[file].get(key)
        if not captions:
            raise self.error(file, index, field, f"{key} has no caption in '{list_key}'")
        texts: list[str] = []
        for i, c in enumerate(captions):
            texts += self.texts(file, index, f"{list_key}({id_key}={key})[{i}].caption",
                                c)[self.lang]
        return texts

    def total(self) -> int:
        return sum(1 for _ in self.entries())


class KarpathyReader(_ObjectFileReader):
    name = "karpathy"
    options = ("split",)

    def setup(self, split: str | None = None) -> None:
        self.splits = parse_splits(split, KARPATHY_SPLITS, "Karpathy")

    def keep(self, raw: Any) -> bool:
        # a malformed entry is kept, so convert() reports it
        return (self.splits is None or not isinstance(raw, dict)
                or raw.get("split") in self.splits or not isinstance(raw.get("split"), str))

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        split = self.require(file, index, raw, "split")
        if split not in KARPATHY_SPLITS:
            raise self.error(file, index, "split", f"expected one of {', '.join(KARPATHY_SPLITS)}, "
                                                   f"got {split!r}")
        name = self.require(file, index, raw, "filename")
        sentences = raw.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise self.error(file, index, "sentences", "expected a non-empty list of {raw, tokens}")
        texts = []
        for i, s in enumerate(sentences):
            value = s.get("raw") if isinstance(s, dict) else None
            texts += self.texts(file, index, f"sentences[{i}].raw", value)[self.lang]
        image_id = raw.get("cocoid", raw.get("imgid"))
        if image_id is None:
            raise self.error(file, index, "cocoid", "missing 'cocoid' / 'imgid'")
        rel = os.path.join(raw.get("filepath") or "", name)
        # Flickr30K entries have no filepath; its archive unpacks into flickr30k-images/.
        rel = find_under(self, file, index, "filename", [rel, os.path.join("flickr30k-images", rel)])
        image = self.image_from_path(file, index, "filename", rel)
        return {**self.image_fields(image), "texts": {self.lang: texts}, "image_id": image_id,
                "split": split, "source": self.source(file, index)}


class CocoCaptionsReader(_ObjectFileReader):
    name = "coco-captions"
    options = ()

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        image_id = self.require(file, index, raw, "id", (int, str))
        name = self.require(file, index, raw, "file_name")
        texts = self.captions_for(file, index, "id", image_id, "annotations", "image_id")
        m = re.match(r"COCO_([a-z]+\d+)_", os.path.basename(name))
        candidates = [name] + ([os.path.join(m[1], name)] if m else [])
        rel = find_under(self, file, index, "file_name", candidates)
        image = self.image_from_path(file, index, "file_name", rel)
        return {**self.image_fields(image), "texts": {self.lang: texts}, "image_id": image_id,
                "source": self.source(file, index)}
