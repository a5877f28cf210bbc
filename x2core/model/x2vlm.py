"""The composite X2-VLM model: vision + text plugin + fusion + pretraining heads.

The model receives its built sub-modules (TorchMultimodal style); use
:func:`x2core.create_model` to build one from a name or config.

Tensor names used throughout (shapes):
    image        (B_img, 3, H, W)        images of the batch
    video        (B, F, 3, H, W)         videos of the batch (F frames each)
    text_ids     (B, L) long             CLS + pieces + SEP, padded
    text_atts    (B, L) 0/1              1 on real tokens
    text_ids_masked, masked_pos (B, M), masked_ids (B, M; -100 = padding)
    idx_to_group_img (B,) long           region rows: which image each text row is about
    image_atts   (B, 1 + N) 0/1          region rows: CLS + in-box patches
    target_bbox  (B, 4)                  region rows: (cx, cy, w, h) / image size
    is_image     (B,)                    region rows: 1 for whole-image captions
    idx          (B,) long               rows with equal ids are one image's (ITC positives)
    text_group   (B,) long               the row's caption id (loss.caption_groups)
    text_ids_2, text_atts_2 (B, L)       parallel-text rows: the other sentence of each pair
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from x2core.model.boxes import pool_regions
from x2core.errors import InputError
from x2core.model.fusion import FusionEncoder
from x2core.model.losses import (bbox_losses, itc_loss, itm_negative_groups, mlm_loss,
                                 sample_hard_negatives, sample_hard_negatives_k)
from x2core.model.config import ModelConfig
from x2core.model.video import VideoPooling


def build_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """The reference head: Linear(d, 2d) -> LayerNorm -> GELU -> Linear(2d, out).

    Indices 0, 1, 3 match the reference's ``itm_head`` / ``bbox_head`` keys.
    """
    return nn.Sequential(nn.Linear(in_dim, 2 * in_dim), nn.LayerNorm(2 * in_dim),
                         nn.GELU(), nn.Linear(2 * in_dim, out_dim))


LOSS_WEIGHT = {"itm_rank": "itm"}  # losses weighted by another loss's config.loss weight


class X2VLM(nn.Module):
    """Multi-grained vision-language model.

    Args:
        config: the full model config (kept on ``self.config``).
        vision_encoder: returns ``(B, 1 + N, D)`` with a pooled token first.
        text_encoder: a text-encoder plugin module (``x2core.interfaces.TextEncoder``).
        fusion_encoder: cross-attention layers of width ``d``.
        text_adapter: maps text width to ``d`` when they differ (else Identity).
    """

    def __init__(self, config: ModelConfig, vision_encoder: nn.Module, text_encoder: nn.Module,
                 fusion_encoder: FusionEncoder, text_adapter: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.text_adapter = text_adapter if text_adapter is not None else nn.Identity()
        self.fusion_encoder = fusion_encoder
        vision_width, text_width = vision_encoder.width, text_encoder.hidden_size
        fusion_width = fusion_encoder.hidden_size
        self.vision_proj = nn.Linear(vision_width, config.embed_dim)
        self.text_proj = nn.Linear(text_width, config.embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(config.temp)))
        self.itm_head = build_mlp(fusion_width, 2)
        self.bbox_head = build_mlp(fusion_width, 4)
        self.mlm_head = text_encoder.build_mlm_head(fusion_width)
        self.video_pooling = VideoPooling(config.video, vision_width,
                                          getattr(vision_encoder, "num_heads", None) or config.vision.num_heads)

    # --- the artifact: loading, saving, the attached head, preprocessing --------------
    @classmethod
    def from_pretrained(cls, path, *, with_head: bool = True, allow_partial: bool = False,
                        plugin_manager=None, **overrides) -> "X2VLM":
        """Build the model any artifact describes and load its weights: a model directory,
        a run directory, a checkpoint file or a ``latest`` pointer
        (:func:`x2core.model.artifact.resolve`). A fine-tuned artifact comes back with its
        head attached as ``model.head`` (``model.head.model is model``). ``overrides`` are
        ModelConfig fields applied on top of the stored architecture."""
        from x2core.model.artifact import load_model
        return load_model(path, with_head=with_head, allow_partial=allow_partial,
                          plugin_manager=plugin_manager, **overrides)

    def save_pretrained(self, directory, **kwargs):
        """Write a model directory (config, safetensors, tokenizer and the attached head);
        see :func:`x2core.model.directory.save_pretrained`."""
        from x2core.model.directory import save_pretrained
        kwargs.setdefault("head", self.head)
        return save_pretrained(self, directory, **kwargs)

    @property
    def head(self):
        """The fine-tuned head this model was loaded with (or attached), else ``None``.

        Kept outside the module tree: the head holds this model as ``head.model``, so
        registering it as a submodule would put every core tensor in the state dict twice."""
        return self.__dict__.get("_attached_head")

    def attach_head(self, head) -> None:
        """Attach a head built on this model (``head.model is self``)."""
        if head is not None and getattr(head, "model", None) is not self:
            raise InputError("attach_head: the head was built on another model")
        self.__dict__["_attached_head"] = head

    def image_transform(self):
        """The evaluation image preprocessing of this model (bytes / PIL / path ->
        ``(3, R, R)``); see :mod:`x2core.data.preprocess`."""
        from x2core.data.preprocess import image_preprocessing
        return image_preprocessing(self.config)

    def video_transform(self):
        """The evaluation video preprocessing (file / bytes -> ``(F, 3, R, R)``): this
        model's frame sampler, frame count and image transform."""
        from x2core.data.preprocess import video_preprocessing
        return video_preprocessing(self.config)

    # --- conveniences ---------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    def temperature(self) -> torch.Tensor:
        """The learnable ITC temperature, clamped to ``[temp_min, temp_max]``."""
        return self.temp.clamp(self.config.temp_min, self.config.temp_max)

    def clamp_temperature_(self) -> None:
        """Clamp the stored value in place (the loop calls this every step)."""
        with torch.no_grad():
            self.temp.clamp_(self.config.temp_min, self.config.temp_max)

    def tokenize(self, texts: list[str], max_tokens: int = 40) -> dict[str, torch.Tensor]:
        """Tokenize raw strings to ``text_ids``/``text_atts`` ``(B, max_tokens)``."""
        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"text {i} is empty; every text needs at least one token")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=max_tokens, return_tensors="pt")
        return {"text_ids": enc["input_ids"], "text_atts": enc["attention_mask"]}

    # --- encoders ---------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, idx_to_group_img: torch.Tensor | None = None,
                     image_atts: torch.Tensor | None = None):
        """Encode images once; optionally pool per-row box "CLS" tokens.

        Returns:
            ``(embeds (R, 1+N, D), atts (R, 1+N), full_embeds (R, 1+N, D))``; without
            ``idx_to_group_img`` R = B_img, atts are all ones, full_embeds is embeds.
        """
        if image.dim() != 4:
            raise InputError(f"image must be (B, 3, H, W), got shape {tuple(image.shape)}")
        embeds = self.vision_encoder(image)
        if idx_to_group_img is None:
            atts = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            return embeds, atts, embeds
        if image_atts is None:
            raise InputError("region rows need 'image_atts' with 'idx_to_group_img'")
        region, full = pool_regions(embeds, idx_to_group_img, image_atts)
        return region, image_atts, full

    def encode_video(self, video: torch.Tensor):
        """Encode videos: every frame through the vision encoder, then frame-position
        embedding, (temporal attention) and the mean over frames.

        Args:
            video: ``(B, F, 3, H, W)``.
        Returns:
            ``(embeds (B, 1+N, D), atts (B, 1+N) ones)``.
        """
        if video.dim() != 5:
            raise InputError(f"video must be (B, F, 3, H, W), got shape {tuple(video.shape)}")
        b, f = video.shape[:2]
        frames = self.vision_encoder(video.flatten(0, 1))
        embeds = self.video_pooling(frames.view(b, f, *frames.shape[1:]))
        return embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def encode_visual(self, pixels: torch.Tensor):
        """Images ``(B, 3, H, W)`` or videos ``(B, F, 3, H, W)`` -> ``(embeds, atts)``."""
        if pixels.dim() == 5:
            return self.encode_video(pixels)
        embeds, atts, _ = self.encode_image(pixels)
        return embeds, atts

    def encode_text(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids and mask -> ``(B, L, d_text)`` text-only hidden states."""
        if text_ids.dim() != 2 or text_ids.shape != text_atts.shape:
            raise InputError(f"text_ids {tuple(text_ids.shape)} and text_atts "
                             f"{tuple(text_atts.shape)} must both be (B, L)")
        # Eager only: under torch.compile this check would split the graph (see pool_regions).
        if not torch.compiler.is_compiling() and bool((text_atts.sum(1) == 0).any()):
            empty = (text_atts.sum(1) == 0).nonzero().flatten()
            raise InputError(f"text rows {empty.tolist()} are empty (attention mask all zero)")
        return self.text_encoder(text_ids, text_atts)

    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, 1+N, D)`` -> L2-normalised ``(B, embed_dim)`` from the pooled token."""
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, L, d_text)`` -> L2-normalised ``(B, embed_dim)`` from the CLS token."""
        return F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)

    def fuse(self, image_embeds, image_atts, text_embeds, text_atts) -> torch.Tensor:
        """Cross-modal encoding: ``(B, L, d_text)`` text + ``(B, T, D)`` vision -> ``(B, L, d)``.
        ``image_embeds`` may instead be the vision tokens' cross-attention keys/values,
        projected once per image (``self.fusion_encoder.image_kv(embeds).rows(index)``)."""
        return self.fusion_encoder(self.text_adapter(text_embeds), text_atts, image_embeds, image_atts)

    def predict_bbox(self, full_image_embeds, text_embeds, text_atts) -> torch.Tensor:
        """Box ``(B, 4)`` in normalised ``(cx, cy, w, h)`` from whole-image fusion."""
        atts = torch.ones(full_image_embeds.shape[:2], dtype=torch.long, device=full_image_embeds.device)
        cls = self.fuse(full_image_embeds, atts, text_embeds, text_atts)[:, 0]
        return self.bbox_head(cls).sigmoid()

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts) -> torch.Tensor:
        """``(B, 2)`` match logits for paired rows (index 1 = match); ``image_embeds`` as in
        :meth:`fuse` (tokens or their cached keys/values)."""
        return self.itm_head(self.fuse(image_embeds, image_atts, text_embeds, text_atts)[:, 0])

    # --- pretraining ------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor], *, itm: bool = True) -> dict[str, torch.Tensor]:
        """Pretraining losses for an image, a region or a video batch.

        Returns a dict of scalar losses: ``itc``, ``itm`` (and ``itm_rank``, weighted like
        it, with ``config.loss.itm_listwise_negatives``), ``mlm`` and, for region
        batches with ``target_bbox``, ``bbox`` and ``giou``; plus ``loss``, their
        weighted sum (weights from ``config.loss``). ``itm=False`` leaves the matching
        loss out, its fusion forward included (the reference's ``ret_match_loss=False``:
        after ``stop_calc_itm`` steps, and on noisy batches that have clean aux data).
        ITM negatives of region rows follow ``config.loss.itm_negatives``; with
        ``config.loss.caption_groups`` the batch's ``text_group`` (equal for rows whose
        records carry the same captions) makes such rows ITC positives of each other and
        keeps them out of each other's ITM negatives.
        A batch with ``text_ids_2`` is a parallel-text batch: see :meth:`text_pair_losses`.
        """
        if "text_ids_2" in batch:
            return self.text_pair_losses(batch, itm=itm)
        visual = "video" if "video" in batch else "image"
        for key in (visual, "text_ids", "text_atts"):
            if key not in batch:
                raise InputError(f"batch is missing '{key}' (has: {', '.join(sorted(batch))})")
        idx_to_group_img = batch.get("idx_to_group_img")
        if visual == "video":
            image_embeds, image_atts = self.encode_video(batch["video"])
            full_embeds = image_embeds
        else:
            image_embeds, image_atts, full_embeds = self.encode_image(
                batch["image"], idx_to_group_img, batch.get("image_atts"))
        text_ids, text_atts = batch["text_ids"], batch["text_atts"]
        if image_embeds.shape[0] != text_ids.shape[0]:
            raise InputError(f"{image_embeds.shape[0]} image rows but {text_ids.shape[0]} text "
                             "rows; region batches need 'idx_to_group_img'")
        text_embeds = self.encode_text(text_ids, text_atts)
        image_feat, text_feat = self.image_features(image_embeds), self.text_features(text_embeds)
        temp = self.temperature()
        weights = self.config.loss
        losses: dict[str, torch.Tensor] = {}
        text_group = batch.get("text_group") if weights.caption_groups else None
        if weights.itc:
            losses["itc"] = itc_loss(image_feat, text_feat, temp, batch.get("idx"), text_group)
        if weights.itm and itm:
            group = itm_negative_groups(batch.get("idx"), idx_to_group_img, weights.itm_negatives)
            losses.update(self.itm_losses(image_embeds, image_atts, image_feat,
                                          text_embeds, text_atts, text_feat, temp, group,
                                          text_group=text_group))
        if weights.mlm and "masked_ids" in batch:
            losses["mlm"] = self._mlm_loss(image_embeds, image_atts, batch)
        if (weights.bbox or weights.giou) and "target_bbox" in batch:
            pred = self.predict_bbox(full_embeds, text_embeds, text_atts)
            is_image = None if weights.calc_image_bbox_loss else batch.get("is_image")
            losses["bbox"], losses["giou"] = bbox_losses(pred, batch["target_bbox"], is_image)
        losses["loss"] = sum(getattr(weights, LOSS_WEIGHT.get(k, k)) * v for k, v in losses.items())
        return losses

    def text_pair_losses(self, batch: Mapping[str, torch.Tensor], *, itm: bool = True
                         ) -> dict[str, torch.Tensor]:
        """CCLM's cross-view losses for translation pairs (the reference's
        ``CrossViewLM.forward_para_text``): the second sentence is the first one's "other
        view", taking the image's place.

        * ``ttc``: :func:`~x2core.model.losses.itc_loss` between the two sentences' features;
        * ``ttm``: :meth:`itm_loss` with the first sentence's hidden states as the keys and
          values of the fusion cross-attention and the second as its queries (hard
          negatives from the other rows of the batch);
        * ``mlm``: the masked first sentence fused with the unmasked second.

        Weighted by ``config.loss`` ``itc``, ``itm`` and ``mlm``; ``itm=False`` leaves
        ``ttm`` out. Needs the text width to equal the vision width (the fusion
        cross-attention keys are vision-width).

        Args:
            batch: ``text_ids, text_atts, text_ids_2, text_atts_2 (B, L)`` and, for MLM,
                ``text_ids_masked (B, L), masked_pos, masked_ids (B, M)``.
        """
        for key in ("text_ids", "text_atts", "text_ids_2", "text_atts_2"):
            if key not in batch:
                raise InputError(f"parallel-text batch is missing '{key}' (has: {', '.join(sorted(batch))})")
        first = self.encode_text(batch["text_ids"], batch["text_atts"])
        second = self.encode_text(batch["text_ids_2"], batch["text_atts_2"])
        if first.shape[0] != second.shape[0]:
            raise InputError(f"{first.shape[0]} first sentences but {second.shape[0]} second ones")
        if first.shape[-1] != self.fusion_encoder.vision_width:
            raise InputError(f"text pairs need the text width ({first.shape[-1]}) to equal the vision "
                             f"width ({self.fusion_encoder.vision_width}): one sentence takes the "
                             "image's place in the fusion cross-attention")
        atts, atts_2 = batch["text_atts"], batch["text_atts_2"]
        feat, feat_2 = self.text_features(first), self.text_features(second)
        temp = self.temperature()
        weights = self.config.loss
        losses: dict[str, torch.Tensor] = {}
        scale = {"ttc": weights.itc, "ttm": weights.itm, "mlm": weights.mlm}
        if weights.itc:
            losses["ttc"] = itc_loss(feat, feat_2, temp)
        if weights.itm and itm:
            losses["ttm"] = self.itm_loss(first, atts, feat, second, atts_2, feat_2, temp)
        if weights.mlm and "masked_ids" in batch:
            losses["mlm"] = self._mlm_loss(second, atts_2, batch)
        losses["loss"] = sum(scale[k] * v for k, v in losses.items())
        return losses

    def itm_loss(self, image_embeds, image_atts, image_feat, text_embeds, text_atts, text_feat,
                 temp, group=None, *, text_group=None) -> torch.Tensor:
        """The matching loss as one scalar: the sum of :meth:`itm_losses`."""
        return sum(self.itm_losses(image_embeds, image_atts, image_feat, text_embeds, text_atts,
                                   text_feat, temp, group, text_group=text_group).values())

    def itm_losses(self, image_embeds, image_atts, image_feat, text_embeds, text_atts, text_feat,
                   temp, group=None, *, text_group=None) -> dict[str, torch.Tensor]:
        """``{"itm": ...}``: ITM cross-entropy on the positives plus one hard negative per
        text and per image (sampled from ITC similarity, mixed with uniform draws by
        ``config.loss.itm_uniform_negatives``; rows sharing ``group`` or ``text_group``
        are never negatives, see :func:`~x2core.model.losses.itm_negative_groups`).
        With ``config.loss.itm_listwise_negatives`` k > 0, also ``"itm_rank"``: see
        :meth:`_itm_loss_listwise`."""
        k = self.config.loss.itm_listwise_negatives
        if k:
            return self._itm_loss_listwise(image_embeds, image_atts, image_feat, text_embeds,
                                           text_atts, text_feat, temp, group, text_group, k)
        neg_img, neg_txt = sample_hard_negatives(image_feat, text_feat, temp, group,
                                                 uniform_mix=self.config.loss.itm_uniform_negatives,
                                                 text_group=text_group)
        # rows: positives | (text, hard-negative image) | (image, hard-negative text).
        # Always 3B rows, so shapes never depend on the data (no host sync, one compiled
        # graph): a row without a negative (-1) points at row 0 and is ignored by the loss.
        n = len(neg_img)
        rows = torch.arange(n, device=neg_img.device)
        img_rows = torch.cat([rows, neg_img.clamp(min=0), rows])
        txt_rows = torch.cat([rows, rows, neg_txt.clamp(min=0)])
        logits = self.itm_logits(image_embeds[img_rows], image_atts[img_rows],
                                 text_embeds[txt_rows], text_atts[txt_rows])
        labels = torch.cat([torch.ones_like(rows),
                            torch.where(neg_img >= 0, 0, -100), torch.where(neg_txt >= 0, 0, -100)])
        return {"itm": F.cross_entropy(logits.float(), labels, ignore_index=-100)}

    def _itm_loss_listwise(self, image_embeds, image_atts, image_feat, text_embeds, text_atts,
                           text_feat, temp, group, text_group, k: int) -> dict[str, torch.Tensor]:
        """The matching loss with ``k`` distinct hard negatives per text and per image
        (``(1 + 2k) B`` fusion rows):

        * ``itm``: the reference's cross-entropy on the positives and the first negative
          of each direction, so P(match) keeps its meaning and its constant-prediction
          level (:func:`~x2core.model.losses.itm_constant_loss`);
        * ``itm_rank``: a listwise cross-entropy of the match logit (index 1, what the
          rerank sorts by) over each query's positive and its ``k`` negatives, averaged
          over the two directions. This trains the head on the task the rerank gives it,
          ordering a query's near misses (IR's localised contrastive estimation, Gao et
          al. 2021), instead of judging each pair alone.
        """
        neg_img, neg_txt = sample_hard_negatives_k(
            image_feat, text_feat, temp, k, group, uniform_mix=self.config.loss.itm_uniform_negatives,
            text_group=text_group)
        n, k = neg_img.shape
        rows = torch.arange(n, device=neg_img.device)
        img_rows = torch.cat([rows, neg_img.t().reshape(-1).clamp(min=0), rows.repeat(k)])
        txt_rows = torch.cat([rows, rows.repeat(k), neg_txt.t().reshape(-1).clamp(min=0)])
        logits = self.itm_logits(image_embeds[img_rows], image_atts[img_rows],
                                 text_embeds[txt_rows], text_atts[txt_rows]).float()
        first_img, first_txt = neg_img[:, 0], neg_txt[:, 0]
        pointwise_rows = torch.cat([rows, n + rows, n + n * k + rows])
        labels = torch.cat([torch.ones_like(rows), torch.where(first_img >= 0, 0, -100),
                            torch.where(first_txt >= 0, 0, -100)])
        pointwise = F.cross_entropy(logits[pointwise_rows], labels, ignore_index=-100)
        match = logits[:, 1]
        pos = match[:n].unsqueeze(1)
        listwise = 0.0
        for j, neg in ((1, neg_img), (1 + k, neg_txt)):
            scores = match[n * j:n * (j + k)].view(k, n).t().masked_fill(neg < 0, float("-inf"))
            listwise = listwise + F.cross_entropy(torch.cat([pos, scores], 1),
                                                  torch.zeros_like(rows)) / 2
        return {"itm": pointwise, "itm_rank": listwise}

    def _mlm_loss(self, image_embeds, image_atts, batch) -> torch.Tensor:
        for key in ("text_ids_masked", "masked_pos"):
            if key not in batch:
                raise InputError(f"MLM needs '{key}' alongside 'masked_ids'")
        masked_embeds = self.text_encoder(batch["text_ids_masked"], batch["text_atts"])
        fused = self.fuse(image_embeds, image_atts, masked_embeds, batch["text_atts"])
        pos = batch["masked_pos"]
        picked = fused.gather(1, pos.unsqueeze(-1).expand(-1, -1, fused.shape[-1]))
        return mlm_loss(self.mlm_head(picked), batch["masked_ids"])
