"""First-party plugin: the dataset formats ``x2vlm pack`` reads (facts §6 layouts).

Each format is a reader factory ``factory(ann_files, images_root, *, max_side, lang,
**options)`` (see :mod:`x2core.data.packing`). The format modules import PIL lazily, so
registering them costs nothing until a pack runs.
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl

from .formats.parallel_text import ParallelTextReader
from .formats.iglue import MarvlReader, WitReader, XgqaReader, XvnliReader
from .formats.pretrain import ImageTextReader, RegionReader
from .formats.retrieval import CaptioningReader, MultilingualReader, RetrievalReader
from .formats.tasks import Nlvr2Reader, RefcocoReader, VqaReader
from .formats.video import VideoQaReader, VideoTextReader
from .formats.classification import ClassificationReader
from .formats.layouts import Layout, native, with_layouts
from .formats.official_captions import CocoCaptionsReader, KarpathyReader
from .formats.official_tasks import Nlvr2OfficialReader, VgQaReader, VqaV2Reader
from .formats.official_video import (MsrvttInfoReader, Msrvtt1kaReader, MsrvttQaReader,
                                     MsvdQaReader, is_published_qa)

# name -> (reader class, description); also used by `x2vlm pack --help`.
FORMATS = {
    "image-text": (ImageTextReader, "pretraining JSON lines: caption|desc (str, list or "
                                    "{lang: text}) + base64 'binary' or 'image_rpath'"),
    "regions": (RegionReader, "pretraining JSON lines: elems [{caption, bb [x,y,w,h], "
                              "attributes}] + optional whole-image caption"),
    "parallel-text": (ParallelTextReader, "translation pairs (CCLM's parallel-text stream): TSV with "
                                          "a header or JSON lines, source_text, target_text "
                                          "[, source_lang, target_lang]"),
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
    "xvnli": (XvnliReader, "IGLUE XVNLI JSON lines {Flikr30kID, sentence2, gold_label} "
                           "(image ID.--image-ext); --translation-field"),
    "marvl": (MarvlReader, "IGLUE MaRVL JSON lines {left_img, right_img, caption, label, "
                           "language}; --translation-field"),
    "xgqa": (XgqaReader, "IGLUE xGQA (GQA layout) {qid: {imageId, question, answer}} per "
                         "language; --answer-list, --translation-field"),
    "wit": (WitReader, "IGLUE WIT JSON lines {image_url, image_content (base64), "
                       "caption_reference_description, language}"),
    "classification": (ClassificationReader, "image + label: an ImageNet-style tree (one folder "
                                             "per class), CSV image,label or JSON(L) {image, "
                                             "label}; metadata 'classes'"),
}

# The files the datasets' owners publish, told from their content (--layout overrides).
_KARPATHY = Layout("karpathy", lambda p: p.has("images", "dataset") and not p.has("annotations"),
                   KarpathyReader, "Karpathy dataset_coco.json / dataset_flickr30k.json "
                                   "(--split train+restval|val|test)")
_COCO_CAPTIONS = Layout("coco-captions", lambda p: p.has("images", "annotations"),
                        CocoCaptionsReader, "COCO captions_{train,val}2014.json")
LAYOUTS = {
    "retrieval": [_KARPATHY, _COCO_CAPTIONS],
    "captioning": [_KARPATHY, _COCO_CAPTIONS],
    "image-text": [_COCO_CAPTIONS],
    "vqa": [Layout("vqa-v2", lambda p: p.has("questions"), VqaV2Reader,
                   "VQA v2 questions (--questions) + --annotations"),
            Layout("vg-qa", lambda p: p.kind == "list" and p.has("qas"), VgQaReader,
                   "Visual Genome question_answers.json")],
    "nlvr2": [Layout("nlvr2-official", lambda p: p.has("identifier") and not p.has("images"),
                     Nlvr2OfficialReader, "NLVR2's {identifier, directory, sentence, label} jsonl")],
    "video-text": [Layout("msrvtt", lambda p: p.has("videos", "sentences"), MsrvttInfoReader,
                          "MSRVTT {train_val,test}_videodatainfo.json (--split)"),
                   Layout("msrvtt-1ka", lambda p: p.kind == "csv"
                          and {"video_id", "sentence"} <= set(p.header), Msrvtt1kaReader,
                          "the 1k-A test list MSRVTT_JSFUSION_test.csv")],
    "video-qa": [Layout("msrvtt-qa", lambda p: is_published_qa(p.first) and "category_id" in p.first,
                        MsrvttQaReader, "MSRVTT-QA {train,val,test}_qa.json"),
                 Layout("msvd-qa", lambda p: is_published_qa(p.first), MsvdQaReader,
                        "MSVD-QA {train,val,test}_qa.json")],
}


@hookimpl
def x2vlm_register_datasets(register):
    for name, (cls, description) in FORMATS.items():
        if name in LAYOUTS:
            # the published layouts first: native() accepts any JSON list / lines
            factory = with_layouts(name, LAYOUTS[name] + [native(cls)])
            layouts = ", ".join(factory.layouts)
            register(name, factory, description=f"{description}; layouts: {layouts}",
                     options=factory.options)
        else:
            register(name, cls, description=description, options=list(cls.options))


def synthetic_world(out_dir, **options):
    """The procedural world of coloured shapes (captions in several languages, exact boxes,
    task files and short videos): :func:`x2datasets.synthetic.generate`."""
    from .synthetic import generate
    return generate(out_dir, **options)


def synthetic_iglue(out_dir, **options):
    """The IGLUE task files (XVNLI, MaRVL, xGQA in en/de/zh) about a synthetic world already
    generated in ``out_dir``: :func:`x2datasets.synthetic.iglue.write_iglue`."""
    from .synthetic.iglue import write_iglue
    return write_iglue(out_dir, **options)


@hookimpl
def x2vlm_register_generators(register):
    register("synthetic-world", synthetic_world,
             description="coloured shapes with en/de/zh captions, exact boxes, task files and "
                         "moving-shape videos (the demos' and tests' data)")
    register("synthetic-iglue", synthetic_iglue,
             description="IGLUE-layout XVNLI, MaRVL and xGQA files in en/de/zh about a generated "
                         "synthetic world (the multilingual demo's IGLUE tasks)")
