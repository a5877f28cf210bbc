"""Image-caption fine-tuning layouts: ``retrieval``, ``captioning``, ``multilingual``.

retrieval (Karpathy COCO / Flickr30K JSON lists): train ``[{"image", "caption": str,
"image_id"}]`` -- captions of one image grouped into one record -- and test/val
``[{"image", "caption": [str, ...]}]``. Records: ``image, width, height, texts,
image_id`` (the annotation's, else the image's position in the pack).

captioning: train ``{"image", "caption", "image_id"}`` (one record per entry) and eval
``{"image"}``, the id parsed from the file name's last digits as the reference does.

multilingual (Multi30K / xFlickr&CO): JSON lines ``{"id", "img_path", "sentences": [...]}``
in the language of ``--lang`` or of a ``LANG=PATH`` annotation argument, and JSON lists
``{"image", "caption": {lang: [...]}}``; all texts about one image, from every file,
merge into one record's ``texts``.
"""
from __future__ import annotations

import os
from typing import Any

from .common import FormatReader, Group, GroupedEntries, image_id_from_name


class _GroupedReader(GroupedEntries, FormatReader):
    """Entries grouped by image path, in order of first appearance."""

    image_fields_in = ("image",)
    caption_fields_in = ("caption",)

    def _key(self, raw: dict):
        for k in self.image_fields_in:
            v = raw.get(k)
            if isinstance(v, str) and v.strip():
                return os.path.normpath(v.strip())
        return None

    def _image_field(self, raw: dict) -> str:
        return next((k for k in self.image_fields_in if raw.get(k) is not None), self.image_fields_in[0])

    def _ordinal(self, group: Group) -> int:
        if getattr(self, "_ordinals", None) is None:
            self._ordinals = {id(g): n for n, (_, _, g) in enumerate(self._groups())}
        return self._ordinals[id(group)]

    def convert(self, file: str, index: int, raw: Any) -> dict:
        if not isinstance(raw, Group):
            raw = self.as_dict(file, index, raw)
            field = self.image_fields_in[0]
            raise self.error(file, index, field, f"missing image path '{field}'")
        texts: dict[str, list[str]] = {}
        for f, i, item in raw.items:
            lang = self.file_langs.get(f)
            value, field = self._caption(f, i, item)
            for k, v in self.texts(f, i, field, value, lang=lang).items():
                texts.setdefault(k, []).extend(v)
        first = raw.first
        image = self.image_from_path(file, index, self._image_field(first),
                                     first[self._image_field(first)])
        image_id = next((it.get(k) for _, _, it in raw.items for k in ("image_id", "id")
                         if it.get(k) is not None), None)
        record = {**self.image_fields(image), "texts": texts,
                  "image_id": image_id if image_id is not None else self._ordinal(raw),
                  "source": self.source(file, index)}
        return record

    def _caption(self, file, index, raw: dict):
        for k in self.caption_fields_in:
            if k in raw:
                return raw[k], k
        return None, self.caption_fields_in[0]


class RetrievalReader(_GroupedReader):
    name = "retrieval"
    options = ()


class MultilingualReader(_GroupedReader):
    name = "multilingual"
    options = ("file_langs",)
    image_fields_in = ("img_path", "image")
    caption_fields_in = ("sentences", "caption")


class CaptioningReader(FormatReader):
    name = "captioning"
    options = ()

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        rel = self.require(file, index, raw, "image")
        texts = None
        if "caption" in raw:
            texts = self.texts(file, index, "caption", raw["caption"])
        image_id = raw.get("image_id")
        if image_id is None:
            image_id = image_id_from_name(rel)
            if image_id is None:
                raise self.error(file, index, "image",
                                 f"no 'image_id' and no digits in the file name {rel!r} to take it from")
        image = self.image_from_path(file, index, "image", rel)
        record = {**self.image_fields(image), "image_id": image_id}
        if texts is not None:
            record["texts"] = texts
        record["source"] = self.source(file, index)
        return record
