"""First-party plugin: the dataset formats ``x2vlm pack`` reads (facts §6 layouts).

Each format is a reader factory ``factory(ann_files, images_root, *, max_side, lang,
**options)`` (see :mod:`x2core.data.packing`). The format modules import PIL lazily, so
registering them costs nothing until a pack runs.
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl

from .formats.pretrain import ImageTextReader, RegionReader
from .formats.retrieval import CaptioningReader, MultilingualReader, RetrievalReader
from .formats.tasks import Nlvr2Reader, RefcocoReader, VqaReader
from .formats.video import VideoQaReader, VideoTextReader

# name -> (reader class, description); also used by `x2vlm pack --help`.
FORMATS = {
    "image-text": (ImageTextReader, "pretraining JSON lines: caption|desc (str, list or "
                                    "{lang: text}) + base64 'binary' or 'image_rpath'"),
    "regions": (RegionReader, "pretraining JSON lines: elems [{caption, bb [x,y,w,h], "
                              "attributes}] + optional whole-image caption"),
    "retrieval": (RetrievalReader, "Karpathy COCO / Flickr30K JSON lists (train: one caption "
                                   "per entry, grouped by image; test: caption lists)"),
    "vqa": (VqaReader, "VQA v2 / VG JSON lists {question_id, question, answer, image}; "
                       "--answer-list into the metadata"),
    "nlvr2": (Nlvr2Reader, "NLVR2 {images: [p0, p1], sentence, label}"),
    "refcoco": (RefcocoReader, "RefCOCO(+/g) {image, text, ref_id} with boxes from --refs "
                               "+ --instances, or a 'bbox' per entry"),
    "captioning": (CaptioningReader, "COCO captioning: train {image, caption, image_id}, "
                                     "eval {image} (id from the file name)"),
    "multilingual": (MultilingualReader, "Multi30K / xFlickr&CO {id, img_path, sentences} "
                                         "(LANG=PATH per file) or {image, caption: {lang: [..]}}"),
    "video-text": (VideoTextReader, "MSRVTT retrieval {video_id|video, caption}; mp4 bytes "
                                    "stored undecoded"),
    "video-qa": (VideoQaReader, "MSRVTT / MSVD-QA JSON lines {video_id, question, answer}; "
                                "--answer-list ans2label into the metadata"),
}


@hookimpl
def x2vlm_register_datasets(register):
    for name, (cls, description) in FORMATS.items():
        register(name, cls, description=description, options=list(cls.options))


def synthetic_world(out_dir, **options):
    """The procedural world of coloured shapes (captions in several languages, exact boxes,
    task files and short videos): :func:`x2datasets.synthetic.generate`."""
    from .synthetic import generate
    return generate(out_dir, **options)


@hookimpl
def x2vlm_register_generators(register):
    register("synthetic-world", synthetic_world,
             description="coloured shapes with en/de/zh captions, exact boxes, task files and "
                         "moving-shape videos (the demos' and tests' data)")
