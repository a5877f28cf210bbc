"""A dataset-format plugin for ``x2vlm pack``: tab-separated captions (``captions-tsv``).

The file's first line names the columns; every other non-blank line is one image and
its caption::

    image<TAB>caption
    photos/0001.jpg<TAB>a dog runs on the beach

``--image-key`` / ``--caption-key`` choose other column names. The records are the
``image-text`` ones (``image``, ``width``, ``height``, ``texts``, ``source``), so
pretraining streams (``kind: image``) and the retrieval heads read them as they are.
"""
from x2core import hookimpl
from x2core.errors import InputError
from x2datasets.formats.common import FormatReader, count_entries


class CaptionsTsvReader(FormatReader):
    """``entries()`` (inherited) walks :meth:`read`; ``convert`` makes one record."""

    name = "captions-tsv"
    options = ("image_key", "caption_key")  # the pack options this format accepts

    def setup(self, image_key=None, caption_key=None):
        self.image_key = image_key or "image"
        self.caption_key = caption_key or "caption"

    def read(self, file):
        """``(line number, {column: value})`` for every data line (1-based, as errors print)."""
        with open(file, encoding="utf-8-sig") as fh:
            lines = ((n, line.rstrip("\r\n")) for n, line in enumerate(fh, 1) if line.strip())
            _, header = next(lines, (0, ""))
            columns = header.split("\t")
            for key in (self.image_key, self.caption_key):
                if key not in columns:  # the whole file is unusable: one error, no records
                    raise InputError(f"{file}: the header line has no column '{key}' "
                                     f"(it has: {', '.join(columns)})")
            for n, line in lines:
                yield n, dict(zip(columns, line.split("\t")))

    def total(self):
        """Records to pack, for the progress bar: the lines minus each file's header."""
        return sum(count_entries(f) - 1 for f in self.ann_files)

    def convert(self, file, index, raw):
        path = self.require(file, index, raw, self.image_key)
        texts = self.texts(file, index, self.caption_key, self.require(file, index, raw,
                                                                       self.caption_key))
        image = self.image_from_path(file, index, self.image_key, path)  # checked, maybe resized
        return {**self.image_fields(image), "texts": texts, "source": self.source(file, index)}


@hookimpl
def x2vlm_register_datasets(register):
    register("captions-tsv", CaptionsTsvReader, options=list(CaptionsTsvReader.options),
             description="tab-separated image<TAB>caption lines under a header (plugin guide "
                         "example)")
