"""The IGLUE layouts: ``xvnli``, ``marvl``, ``xgqa``, ``wit`` (xFlickr&CO packs with
``multilingual``: its ``{id, img_path, sentences}`` lines are that format's).

xvnli: JSON lines ``{"Flikr30kID", "sentence1"?, "sentence2", "gold_label", "pairID"?}``;
the image is ``{Flikr30kID}.{--image-ext}`` under ``--images``. Records: ``image, width,
height, texts: {lang: [hypothesis]}, label`` (the reference's mapping: contradiction 0,
entailment 1, neutral 2), ``lang``, ``pair_id``.

marvl: JSON lines ``{"left_img", "right_img", "caption", "label": bool, "language"?,
"concept"?, "id"?}`` -> the ``nlvr2`` record shape (``images``, ``image_sizes``,
``texts``, ``label`` 0/1) plus ``lang``.

xgqa: GQA question files, a JSON object ``{question_id: {"imageId", "question",
"answer"?}}`` (one file per language), the image ``{imageId}.{--image-ext}``. Records: the
``vqa`` record shape (``question``, ``answers``, ``answer_weights``) plus ``lang``;
``--answer-list`` goes into the metadata.

wit: JSON lines ``{"image_url", "image_content": base64, "caption_reference_description",
"language"?}``; entries of one ``image_url`` merge into one ``retrieval`` record.

Every format keeps an English translation of the text when the entry has one under
``--translation-field`` (translate-test: the heads' ``text_field: translation``), as the
record field ``translation``. The language is the entry's ``language`` field, else ``--lang``.
"""
from __future__ import annotations

from typing import Any

from x2core.data.languages import normalize_lang
from x2core.errors import InputError

from .common import FormatReader, Group, GroupedEntries, load_json_file
from .tasks import Nlvr2Reader, VqaReader

# the reference's xvnli_dataset.label_mapper
XVNLI_LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}


class _IglueReader(FormatReader):
    """Language and translation handling shared by the IGLUE readers."""

    options = ("translation_field", "image_ext")

    def setup(self, translation_field: str | None = None, image_ext: str = "jpg") -> None:
        self.translation_field = translation_field
        self.image_ext = image_ext.lstrip(".")

    def entry_lang(self, file: str, index: int, raw: dict) -> str:
        value = raw.get("language")
        if value is None:
            return self.file_langs.get(file, self.lang)
        norm = normalize_lang(value)
        if norm is None:
            raise self.error(file, index, "language", f"{value!r} is not a language code")
        return norm

    def extras(self, file: str, index: int, raw: dict) -> dict:
        """``lang`` and, when asked for and present, ``translation``."""
        out = {"lang": self.entry_lang(file, index, raw)}
        if self.translation_field:
            value = raw.get(self.translation_field)
            if value is not None:
                if not isinstance(value, str) or not value.strip():
                    raise self.error(file, index, self.translation_field,
                                     "expected the translation as a non-empty string")
                out["translation"] = value.strip()
        return out

    def image_by_id(self, file: str, index: int, field: str, raw: dict):
        image_id = raw.get(field)
        if not isinstance(image_id, (str, int)) or isinstance(image_id, bool) or str(image_id) == "":
            raise self.error(file, index, field, f"missing image id '{field}'")
        return self.image_from_path(file, index, field, f"{image_id}.{self.image_ext}")


class XvnliReader(_IglueReader):
    name = "xvnli"

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        hypothesis = self.require(file, index, raw, "sentence2")
        gold = raw.get("gold_label")
        if gold not in XVNLI_LABELS:
            raise self.error(file, index, "gold_label",
                             f"expected one of {', '.join(XVNLI_LABELS)}, got {gold!r}")
        extras = self.extras(file, index, raw)
        image = self.image_by_id(file, index, "Flikr30kID", raw)
        record = {**self.image_fields(image), "texts": {extras["lang"]: [hypothesis.strip()]},
                  "label": XVNLI_LABELS[gold], **extras}
        if raw.get("pairID") is not None:
            record["pair_id"] = raw["pairID"]
        record["source"] = self.source(file, index)
        return record


class MarvlReader(_IglueReader, Nlvr2Reader):
    name = "marvl"

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        extras = self.extras(file, index, raw)
        for side in ("left_img", "right_img"):
            self.require(file, index, raw, side)
        caption = self.require(file, index, raw, "caption")
        # the NLVR2 reader checks the label and reads both images
        record = Nlvr2Reader.convert(self, file, index, {
            "images": [raw["left_img"], raw["right_img"]], "label": raw.get("label"),
            "sentence": {extras["lang"]: caption}})
        record.update(extras)
        for key in ("id", "concept"):
            if raw.get(key) is not None:
                record[key] = raw[key]
        return record


class XgqaReader(_IglueReader, VqaReader):
    name = "xgqa"
    options = _IglueReader.options + VqaReader.options

    def setup(self, translation_field: str | None = None, image_ext: str = "jpg",
              answer_list: str | None = None) -> None:
        _IglueReader.setup(self, translation_field, image_ext)
        VqaReader.setup(self, answer_list)

    def read(self, file: str):
        """The GQA layout: one JSON object keyed by question id (entries in file order)."""
        data = load_json_file(file, "xGQA question file")
        if not isinstance(data, dict):
            raise InputError(f"{file}: expected the GQA layout, a JSON object "
                             f"{{question_id: {{imageId, question, answer}}}}")
        self._units[file] = "question"
        return iter(enumerate([{"question_id": k, **v} if isinstance(v, dict) else v
                               for k, v in data.items()]))

    def unit(self, file: str) -> str:
        return "question"

    def total(self) -> int:
        return sum(len(load_json_file(f, "xGQA question file")) for f in self.ann_files)

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        extras = self.extras(file, index, raw)
        image_id = raw.get("imageId")
        if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
            raise self.error(file, index, "imageId", "missing image id 'imageId'")
        record = VqaReader.convert(self, file, index, {
            "question_id": raw["question_id"], "question": raw.get("question"),
            "answer": raw.get("answer"), "image": f"{image_id}.{self.image_ext}",
            "dataset": "gqa"})
        record.update(extras)
        return record


class WitReader(GroupedEntries, _IglueReader):
    name = "wit"
    options = ("translation_field",)

    def setup(self, translation_field: str | None = None) -> None:
        _IglueReader.setup(self, translation_field)

    def _key(self, raw: dict):
        url = raw.get("image_url")
        return url if isinstance(url, str) and url.strip() else None

    def convert(self, file: str, index: int, raw: Any) -> dict:
        if not isinstance(raw, Group):
            raw = self.as_dict(file, index, raw)
            raise self.error(file, index, "image_url", "missing field 'image_url'")
        texts: dict[str, list[str]] = {}
        for f, i, item in raw.items:
            caption = self.require(f, i, item, "caption_reference_description")
            texts.setdefault(self.entry_lang(f, i, item), []).append(caption.strip())
        image = self.image_from_base64(file, index, "image_content", raw.first.get("image_content"))
        extras = self.extras(file, index, raw.first)
        return {**self.image_fields(image), "texts": texts, "image_id": raw.key, **extras,
                "source": self.source(file, index)}

