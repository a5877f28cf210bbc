"""``Predictor``: a trained model answering on raw images, videos and texts.

Every task preprocesses with the model's own config (:meth:`X2VLM.image_transform` /
:meth:`X2VLM.video_transform`), runs in eval mode without gradients, in batches of
``batch_size``, and returns plain Python values (tensors on the CPU)::

    p = Predictor.from_pretrained("runs/vqa")          # any form artifact.resolve accepts
    p.similarity(["cat.jpg", "dog.jpg"], ["a cat", "a dog"])   # (2, 2) ITC cosine
    p.match("cat.jpg", ["a cat", "a dog"])                     # (1, 2) ITM P(match)
    p.ground("street.jpg", ["the red car"])                    # [[x, y, w, h]] in its pixels
    p.vqa("cat.jpg", "what animal is this?")                   # {"answer", "top_k"}

Tasks that need a fine-tuned head (``caption``, ``vqa``, ``classify`` without labels) use
the head the artifact carries (``model.head``) and say which head is missing otherwise.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from x2core.errors import InputError
from x2core.predict.inputs import as_items, as_texts, batches, item_name, where_of

DEFAULT_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}")
VQA_HEADS = {"image": ("vqa", "vqa-cls"), "video": ("video-qa",)}


def _pick_device(device: str | torch.device) -> torch.device:
    from x2core.train.runtime import pick_device

    dev = pick_device(str(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{device}' was asked for, but CUDA is not available here "
                         "(use --device cpu or auto)")
    return dev


class Predictor:
    """Inference on one model (``x2core.model.x2vlm.X2VLM``, optionally with ``model.head``).

    Args:
        model: the model; moved to ``device`` and put in eval mode.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        batch_size: images (or image-text pairs) per forward pass.
        max_tokens: padded text length for similarity / match / ground / zero-shot labels.
        name: how messages name the model (its path when loaded from one).
    """

    def __init__(self, model, *, device: str | torch.device = "auto", batch_size: int = 16,
                 max_tokens: int = 40, name: str | None = None):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _pick_device(device)
        self.model = model.to(self.device).eval()
        if self.model.head is not None:
            self.model.head.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.max_tokens = int(max_tokens)
        self.name = name or "the model"
        self.image_transform = model.image_transform()
        self._video_transform = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        **kwargs) -> "Predictor":
        """Load a model directory, run directory, checkpoint file or ``latest`` pointer
        (with its fine-tuned head, if any); ``kwargs`` go to :class:`Predictor`."""
        from x2core.model.artifact import load_model

        return cls(load_model(path), device=device, name=kwargs.pop("name", f"'{os.fspath(path)}'"),
                   **kwargs)

    @property
    def head(self):
        return self.model.head

    def _amp(self):
        from x2core.utils.device import autocast_for
        return autocast_for("auto", self.device)  # bf16 on CUDA, fp32 on CPU

    # --- inputs -------------------------------------------------------------------------
    def video_transform(self):
        """The model's video preprocessing; a fine-tuned video head's own frame count and
        sampler win (the frames it was trained on)."""
        if self._video_transform is None:
            from x2core.data.preprocess import video_preprocessing

            o = getattr(self.head, "options", None)
            self._video_transform = video_preprocessing(
                self.model.config, num_frames=getattr(o, "num_frames", None),
                frame_sampler=getattr(o, "frame_sampler", None))
        return self._video_transform

    def _pixels(self, images=None, videos=None) -> tuple[torch.Tensor, list[str], str]:
        """``(B, 3, R, R)`` images or ``(B, F, 3, R, R)`` videos, their names, and the kind."""
        if (images is None) == (videos is None):
            raise InputError("give images or videos (exactly one of them)")
        kind, items = ("image", images) if images is not None else ("video", videos)
        items = as_items(items, kind)
        load = self.image_transform if kind == "image" else self.video_transform()
        names = [item_name(x, i, kind) for i, x in enumerate(items)]
        return torch.stack([load(x, where_of(x, i, kind)) for i, x in enumerate(items)]), names, kind

    def _tokens(self, texts: Sequence[str], max_tokens: int | None = None, max_words: int | None = 40):
        """``(ids, atts)`` ``(n, L)``: retrieval's text pipeline (caption cleaning); the QA
        heads read questions with ``max_words=None``."""
        from x2core.eval.ranking import _tokenize
        from x2core.train.heads import text_processor

        return _tokenize(text_processor(self.model, max_tokens or self.max_tokens, max_words), texts)

    @torch.no_grad()
    def _encode_visual(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1+N, D)`` embeddings, batch by batch."""
        out = []
        with self._amp():
            for chunk in batches(pixels, self.batch_size):
                out.append(self.model.encode_visual(chunk.to(self.device))[0])
        return torch.cat(out)

    @torch.no_grad()
    def _encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, atts = self._tokens(texts)
        out = []
        with self._amp():
            for s in range(0, len(ids), self.batch_size):
                i, a = ids[s:s + self.batch_size].to(self.device), atts[s:s + self.batch_size].to(self.device)
                out.append(self.model.encode_text(i, a))
        return torch.cat(out), atts.to(self.device)

    def _need_head(self, task: str, names: Sequence[str]):
        head = self.head
        if head is not None and head.name in names:
            return head
        wanted = " or ".join(f"'{n}'" for n in names)
        has = (f"has the '{head.name}' head" if head is not None
               else "has no head (a pretraining checkpoint)")
        raise InputError(f"task '{task}' needs a model fine-tuned with the {wanted} head; "
                         f"{self.name} {has}")

    # --- zero-shot tasks of the core model -------------------------------------------------
    @torch.no_grad()
    def similarity(self, images=None, texts=None, *, videos=None) -> torch.Tensor:
        """ITC cosine similarity ``(n_images, n_texts)`` (or videos x texts), as retrieval
        ranks candidates: ``image_features @ text_features.T``."""
        texts = as_texts(texts)
        pixels, _, _ = self._pixels(images, videos)
        img = self.model.image_features(self._encode_visual(pixels)).float()
        txt = self.model.text_features(self._encode_texts(texts)[0]).float()
        return (img @ txt.t()).cpu()

    @torch.no_grad()
    def match(self, images=None, texts=None, *, videos=None) -> torch.Tensor:
        """ITM probability that each image (video) and text match: ``(n_images, n_texts)``,
        ``softmax(itm_logits)[:, 1]`` of every pair."""
        texts = as_texts(texts)
        pixels, _, _ = self._pixels(images, videos)
        vis = self._encode_visual(pixels)
        txt, atts = self._encode_texts(texts)
        n_img, n_txt = len(vis), len(txt)
        rows = torch.arange(n_img * n_txt, device=self.device)
        probs = []
        with self._amp():
            for chunk in batches(rows, self.batch_size):
                v, t = vis[chunk // n_txt], chunk % n_txt
                ones = torch.ones(v.shape[:2], dtype=torch.long, device=self.device)
                logits = self.model.itm_logits(v, ones, txt[t], atts[t]).float()
                probs.append(logits.softmax(-1)[:, 1])
        return torch.cat(probs).view(n_img, n_txt).cpu()

    @torch.no_grad()
    def ground(self, image, texts) -> list[list[float]]:
        """One box per text, ``[x, y, w, h]`` in pixels of the (upright) input image.

        The bbox head predicts a normalised ``(cx, cy, w, h)`` of the square model input,
        which is the whole image squashed, so the box scales back by width and height."""
        from x2core.data.transforms import clip_box
        from x2core.model.boxes import box_cxcywh_to_xyxy

        texts = as_texts(texts)
        where = where_of(image, 0, "image")
        img = self.image_transform.load(image, where)
        W, H = img.size
        pixels = self.image_transform.tensor(img, where).unsqueeze(0).to(self.device)
        txt, atts = self._encode_texts(texts)
        boxes = []
        with self._amp():
            _, _, full = self.model.encode_image(pixels)
            for s in range(0, len(txt), self.batch_size):
                t, a = txt[s:s + self.batch_size], atts[s:s + self.batch_size]
                boxes.append(self.model.predict_bbox(full.expand(len(t), -1, -1), t, a).float())
        out = []
        for x0, y0, x1, y1 in box_cxcywh_to_xyxy(torch.cat(boxes).cpu()).tolist():
            out.append(clip_box([x0 * W, y0 * H, (x1 - x0) * W, (y1 - y0) * H], W, H))
        return out

    def draw(self, image, texts, boxes, out_png: str | os.PathLike) -> str:
        """Write ``image`` with ``boxes`` (from :meth:`ground`) outlined and labelled by
        ``texts`` to the PNG file ``out_png``; returns its path."""
        from x2core.predict.draw import draw_boxes, save_png

        texts = as_texts(texts)
        if len(boxes) != len(texts):
            raise InputError(f"draw: {len(texts)} texts but {len(boxes)} boxes")
        img = self.image_transform.load(image, where_of(image, 0, "image"))
        save_png(draw_boxes(img, texts, boxes), out_png)
        return os.fspath(out_png)

    @torch.no_grad()
    def classify(self, images, labels: Sequence[str] | None = None,
                 templates: Sequence[str] = DEFAULT_TEMPLATES, top_k: int = 5) -> list[dict]:
        """Per image ``{"label", "top_k": [{"label", "score"}, ...]}``, best first.

        With ``labels``: zero-shot, as CLIP does: each label in every prompt template, the
        prompts' text features averaged per label; the score is the softmax over labels of
        ``cosine / temperature``. Without: the fine-tuned ``classification`` head over its
        ``options.classes``."""
        pixels, _, _ = self._pixels(images)
        if labels is None:
            head = self._need_head("classify", ("classification",))
            labels = list(head.options.classes or [])
            probs = torch.cat([head.class_probabilities(c.to(self.device)).cpu()
                               for c in batches(pixels, self.batch_size)])
        else:
            labels = as_texts(labels, "label")
            templates = as_texts(templates, "template")
            for t in templates:
                if "{}" not in t:
                    raise InputError(f"template {t!r} has no '{{}}' for the label")
            prompts = [t.format(label) for label in labels for t in templates]
            feats = self.model.text_features(self._encode_texts(prompts)[0]).float()
            per_label = torch.nn.functional.normalize(
                feats.view(len(labels), len(templates), -1).mean(1), dim=-1)
            img = self.model.image_features(self._encode_visual(pixels)).float()
            probs = ((img @ per_label.t()) / self.model.temperature().float()).softmax(-1).cpu()
        k = min(int(top_k), len(labels))
        out = []
        for row in probs:
            top = row.topk(k)
            ranked = [{"label": labels[int(i)], "score": float(p)}
                      for p, i in zip(top.values.tolist(), top.indices.tolist())]
            out.append({"label": ranked[0]["label"], "top_k": ranked})
        return out

    # --- tasks of a fine-tuned head -----------------------------------------------------------
    @torch.no_grad()
    def caption(self, images) -> list[str]:
        """A caption per image from the ``captioning`` head (beam search, its options)."""
        head = self._need_head("caption", ("captioning",))
        pixels, _, _ = self._pixels(images)
        out: list[str] = []
        for chunk in batches(pixels, self.batch_size):
            out.extend(head.generate(chunk.to(self.device)))
        return out

    @torch.no_grad()
    def vqa(self, image=None, question: str | Sequence[str] = None, top_k: int = 5, *,
            video=None) -> dict | list[dict]:
        """``{"answer", "top_k": [{"answer", "score"}, ...]}`` for a question about one
        image (``vqa`` / ``vqa-cls`` head) or one video (``video-qa`` head); a list of
        questions gives a list of answers. Scores: the head's ``answer_scores``."""
        kind = "video" if video is not None else "image"
        head = self._need_head("vqa" if kind == "image" else "vqa on a video", VQA_HEADS[kind])
        if not getattr(head, "answer_list", None):
            raise InputError(f"the '{head.name}' head of {self.name} has no answer list")
        questions = as_texts(question, "question")
        pixels, _, _ = self._pixels(*((image, None) if kind == "image" else (None, video)))
        if len(pixels) != 1:
            raise InputError(f"vqa takes one {kind} (got {len(pixels)}); ask each in turn")
        ids, atts = self._tokens(questions, getattr(head.options, "max_tokens", self.max_tokens),
                                 max_words=None)
        out = []
        for s in range(0, len(questions), self.batch_size):
            n = len(ids[s:s + self.batch_size])
            batch = {kind: pixels.expand(n, *pixels.shape[1:]).to(self.device),
                     "text_ids": ids[s:s + n].to(self.device), "text_atts": atts[s:s + n].to(self.device)}
            for ranked in head.answer_scores(batch, k=top_k):
                out.append({"answer": ranked[0][0],
                            "top_k": [{"answer": a, "score": p} for a, p in ranked]})
        return out[0] if isinstance(question, str) else out
