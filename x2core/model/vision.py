"""BEiT-v2 Vision Transformer, the X2-VLM image encoder (facts §1.1).

Layout (parameter names equal the reference checkpoint's ``vision_encoder.*`` keys,
facts §7, so official weights load without renaming):

* ``patch_embed.proj``: Conv2d(3, D, p, stride p); ``cls_token (1, 1, D)``; no
  absolute position embedding;
* ``blocks.{i}``: pre-norm ``norm1`` -> attention (``attn.qkv`` weight only, biases
  ``attn.q_bias`` / ``attn.v_bias``, the key bias is fixed at zero; a per-block
  relative position bias ``attn.relative_position_bias_table ((2g-1)²+3, H)`` indexed
  by the buffer ``attn.relative_position_index (1+g², 1+g²)``; ``attn.proj``) ->
  LayerScale ``gamma_1`` -> drop-path -> residual; ``norm2`` -> ``mlp.fc1`` -> GELU ->
  ``mlp.fc2`` -> ``gamma_2`` -> drop-path -> residual;
* ``fc_norm`` on the patch tokens; the output is
  ``[mean of normed patch tokens] + normed patch tokens`` ``(B, 1+N, D)``. The CLS
  token takes part in attention but its output is discarded, as in the reference.

Changing resolution (224 -> 384 -> 768): :func:`resize_rel_pos_bias_table`,
:meth:`VisionTransformer.set_image_size`, and loading a state dict saved at another
size interpolates the tables automatically (see ``_RelPosAttention._load_from_state_dict``).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from x2core.model.attention import IMPLS, attention
from x2core.errors import CheckpointError, ConfigError, InputError
from x2core.model.config import VisionConfig
from x2core.model.rel_pos_resize import resize_offsets_reference

log = logging.getLogger(__name__)

_EXTRA = 3  # table rows for cls->token, token->cls, cls->cls


# --- relative position bias ----------------------------------------------------------

def num_relative_distances(grid: int) -> int:
    """Rows of a relative-position table for a ``grid x grid`` patch grid."""
    return (2 * grid - 1) ** 2 + _EXTRA


def relative_position_index(grid: int) -> torch.Tensor:
    """Long ``(1+g², 1+g²)`` index into a ``((2g-1)²+3, H)`` table, BEiT layout.

    Token ``t = 1 + r*g + c`` sits at patch (row r, col c). The bias between query
    token at ``(r1, c1)`` and key token at ``(r2, c2)`` is table row
    ``(r1-r2+g-1)*(2g-1) + (c1-c2+g-1)``. The three extra rows at the end are, in
    order: query CLS -> key patch, query patch -> key CLS, CLS -> CLS. The same
    layout as the official checkpoints, so their tables mean the same thing here.
    """
    side = 2 * grid - 1
    rows = torch.arange(grid).repeat_interleave(grid)  # (g²,) row of each patch
    cols = torch.arange(grid).repeat(grid)             # (g²,) column of each patch
    d_row = rows[:, None] - rows[None, :] + grid - 1   # (g², g²) in [0, 2g-2]
    d_col = cols[:, None] - cols[None, :] + grid - 1
    n = side * side
    index = torch.empty(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    index[1:, 1:] = d_row * side + d_col
    index[0, :] = n          # CLS query -> patch keys
    index[:, 0] = n + 1      # patch queries -> CLS key
    index[0, 0] = n + 2      # CLS -> CLS
    return index


def grid_from_table_rows(rows: int) -> int:
    """Inverse of :func:`num_relative_distances`; CheckpointError if ``rows`` fits no grid."""
    side = math.isqrt(max(rows - _EXTRA, 0))
    if side * side != rows - _EXTRA or side % 2 == 0:
        raise CheckpointError(f"relative position table has {rows} rows, which is not "
                              f"(2g-1)^2 + 3 for any grid size g")
    return (side + 1) // 2


RESIZE_MODES = ("reference", "bicubic")


def resize_rel_pos_bias_table(table: torch.Tensor, old_grid: int, new_grid: int,
                              mode: str = "reference") -> torch.Tensor:
    """Resize a ``((2g-1)²+3, H)`` relative-position table from grid ``old_grid`` to ``new_grid``.

    The ``(2g-1) x (2g-1)`` offset part is resampled per head; the 3 CLS rows are kept.
    Identity (the same tensor) when the grids are equal.

    ``mode``:

    * ``"reference"`` (default): the official code's procedure (BEiT's
      ``interpolate_pos_embed``): old offsets placed on a geometric progression, a
      not-a-knot bicubic spline through them, evaluated at the new integer offsets
      (:mod:`x2core.model.rel_pos_resize`). Offsets near 0 keep their values and the
      far ones are stretched, so a converted official checkpoint fine-tuned at 384 or
      768 px starts from the weights the paper's fine-tuning started from.
    * ``"bicubic"``: ``F.interpolate(mode="bicubic", align_corners=True)`` on the
      uniform grid -- the centre and the extremes map exactly onto the new centre and
      extremes and everything between is spaced evenly. Differs from the reference by
      up to ~0.4 on smooth tables going 64 -> 96 px; fine-tuning adapts either way.
    """
    if mode not in RESIZE_MODES:
        raise ConfigError(f"relative-position resize mode must be one of {RESIZE_MODES}, "
                          f"got {mode!r} (config field 'vision.rel_pos_resize')")
    if table.dim() != 2 or table.shape[0] != num_relative_distances(old_grid):
        raise InputError(f"table of shape {tuple(table.shape)} is not a relative-position "
                         f"table for a {old_grid}x{old_grid} grid "
                         f"(expected ({num_relative_distances(old_grid)}, heads))")
    if new_grid < 1:
        raise InputError(f"new grid size must be positive, got {new_grid}")
    if old_grid == new_grid:
        return table
    old_side, new_side = 2 * old_grid - 1, 2 * new_grid - 1
    heads = table.shape[1]
    main, extra = table[:-_EXTRA], table[-_EXTRA:]
    # (side², H) -> (H, side, side), rows = vertical offset, columns = horizontal.
    # float32 at least: bicubic has no bf16 CPU kernel everywhere, and the bias values are small.
    grid = main.float().T.reshape(heads, old_side, old_side)
    if mode == "reference":
        resized = resize_offsets_reference(grid, new_side)
    elif old_side == 1:  # a 1x1 grid has a single offset; bicubic needs no neighbours
        resized = grid.expand(heads, new_side, new_side)
    else:
        resized = F.interpolate(grid[None], size=(new_side, new_side), mode="bicubic",
                                align_corners=True)[0]
    main = resized.reshape(heads, new_side * new_side).T.to(table.dtype)
    return torch.cat([main, extra], dim=0)


def sincos_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position values ``(1, 1 + grid², dim)`` (MAE's; CLS row zero):
    a quarter of the channels each for sin/cos of x and of y at geometric frequencies."""
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter))
    parts = []
    for coord in (xs.flatten(), ys.flatten()):
        angle = coord[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    pe = torch.cat(parts, dim=1)
    pe = F.pad(pe, (0, dim - pe.shape[1]))  # dim not a multiple of 4: zero tail
    return torch.cat([torch.zeros(1, dim), pe], dim=0).unsqueeze(0)


# --- building blocks -------------------------------------------------------------------

def resize_pos_embed(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """``(1, 1+g², D)`` absolute position embedding -> ``(1, 1+new_grid², D)`` (bicubic on the
    patch grid; the CLS row is kept)."""
    n = pos.shape[1] - 1
    old = int(round(math.sqrt(n)))
    if old * old != n:
        raise CheckpointError(f"pos_embed with {n} patch rows is not a square grid")
    if old == new_grid:
        return pos
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([pos[:, :1], grid], dim=1)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` -> ``(B, (H/p)*(W/p), D)`` by a strided convolution, row-major."""

    def __init__(self, patch_size: int, in_chans: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _RelPosAttention(nn.Module):
    """Self-attention with q/v biases and a per-block relative position bias."""

    def __init__(self, width: int, num_heads: int, grid: int, impl: str,
                 resize_mode: str = "reference"):
        super().__init__()
        self.num_heads = num_heads
        self.impl = impl
        self.resize_mode = resize_mode  # how a table saved at another grid is resampled
        self.grid = grid
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_relative_distances(grid), num_heads))
        # Persistent so our state dicts carry the key the official ones carry; on load
        # the incoming value is always replaced by ours (it is derived, never learned).
        self.register_buffer("relative_position_index", relative_position_index(grid))
        self.proj = nn.Linear(width, width)

    def rel_pos_bias(self) -> torch.Tensor:
        """``(1, H, L, L)`` additive bias, ``L = 1 + g²``."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)

    def set_grid(self, grid: int) -> None:
        """Rebuild the index and resize the table for a new grid (new Parameter object)."""
        if grid == self.grid:
            return
        table = self.relative_position_bias_table
        with torch.no_grad():
            new = resize_rel_pos_bias_table(table.detach(), self.grid, grid, self.resize_mode)
        self.relative_position_bias_table = nn.Parameter(new, requires_grad=table.requires_grad)
        self.relative_position_index = relative_position_index(grid).to(table.device)
        self.grid = grid

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Tables saved at another image size are interpolated to ours; the index buffer
        # is derived from the grid, so the incoming one (maybe another size, maybe absent)
        # is replaced by ours. `load_state_dict` hands us a copy, so editing it is safe.
        key = prefix + "relative_position_bias_table"
        table = state_dict.get(key)
        if isinstance(table, torch.Tensor) and table.dim() == 2 \
                and table.shape[0] != self.relative_position_bias_table.shape[0]:
            old_grid = grid_from_table_rows(table.shape[0])
            state_dict[key] = resize_rel_pos_bias_table(table, old_grid, self.grid, self.resize_mode)
        state_dict[prefix + "relative_position_index"] = self.relative_position_index
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``."""
        b, n, d = x.shape
        k_bias = torch.zeros_like(self.v_bias)  # the key bias is fixed at zero (BEiT)
        # Call the module (not F.linear on its weight) so a wrapper such as peft's LoRA
        # on `qkv` runs; the q/v bias is added outside the bias-free Linear.
        qkv = self.qkv(x) + torch.cat([self.q_bias, k_bias, self.v_bias])  # (B, L, 3D)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, mask=self.rel_pos_bias(), impl=self.impl)  # (B, H, L, dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale and drop-path."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, grid: int, drop_path: float,
                 init_values: float, eps: float, impl: str, resize_mode: str = "reference"):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = _RelPosAttention(width, num_heads, grid, impl, resize_mode)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        if init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((width,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((width,), float(init_values)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        if self.gamma_1 is not None:
            a = self.gamma_1 * a
        x = x + self.drop_path(a)
        m = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            m = self.gamma_2 * m
        return x + self.drop_path(m)


# --- the encoder -----------------------------------------------------------------------

class VisionTransformer(nn.Module):
    """BEiT-v2 ViT returning a mean-pooled token plus patch tokens.

    Args:
        config: :class:`~x2core.model.config.VisionConfig` (sizes, drop-path, LayerScale
            init, attention implementation, gradient checkpointing).
        in_chans: input channels (3 for RGB).

    Attributes:
        width, patch_size, image_size, grid_size (patches per side), num_patches.

    ``forward(images (B, C, S, S)) -> (B, 1 + N, D)``, ``S = image_size``,
    ``N = (S / patch_size)²``; index 0 is the mean of the ``fc_norm``'ed patch tokens.
    """

    def __init__(self, config: VisionConfig, in_chans: int = 3):
        super().__init__()
        config.validate("vision")
        if config.attn_impl not in IMPLS:
            raise ConfigError(f"config field 'vision.attn_impl' must be one of {IMPLS}, "
                              f"got {config.attn_impl!r}")
        self.config = config
        self.width = config.width
        self.patch_size = config.patch_size
        self.in_chans = in_chans
        self._set_sizes(config.image_size)
        self.grad_checkpointing = bool(config.grad_checkpointing)

        self.patch_embed = PatchEmbed(config.patch_size, in_chans, config.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = (nn.Parameter(torch.zeros(1, 1 + self.num_patches, config.width))
                          if config.abs_pos_embed else None)
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist() if config.depth else []
        self.blocks = nn.ModuleList(
            Block(config.width, config.num_heads, config.mlp_ratio, self.grid_size, rate,
                  config.init_values, config.layer_norm_eps, config.attn_impl, config.rel_pos_resize)
            for rate in rates)
        self.fc_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self._init_weights()

    def _set_sizes(self, image_size: int) -> None:
        self.image_size = image_size
        self.grid_size = image_size // self.patch_size
        self.num_patches = self.grid_size ** 2

    def _init_weights(self) -> None:
        # Truncated normal(0.02) for tokens, tables and Linear weights, as BEiT does; the
        # output projections of each residual branch are scaled down by sqrt(2 * layer)
        # so deep stacks start close to the identity.
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            if self.config.abs_pos_init == "sincos":
                with torch.no_grad():
                    self.pos_embed.copy_(sincos_pos_embed(self.grid_size, self.pos_embed.shape[-1]))
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for layer, blk in enumerate(self.blocks, start=1):
            nn.init.trunc_normal_(blk.attn.relative_position_bias_table, std=0.02)
            with torch.no_grad():
                blk.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in backward (``torch.utils.checkpoint``, non-reentrant)."""
        self.grad_checkpointing = bool(enabled)

    def set_image_size(self, image_size: int) -> None:
        """Rebuild the relative-position indices and resize every block's table.

        The tables become new ``nn.Parameter`` objects: call this before creating the
        optimizer (or wrapping the model in DDP/FSDP).
        """
        if image_size <= 0 or image_size % self.patch_size:
            raise ConfigError(f"image size {image_size} must be a positive multiple of the "
                              f"patch size {self.patch_size}")
        old_grid = self.grid_size
        self._set_sizes(image_size)
        for blk in self.blocks:
            blk.attn.set_grid(self.grid_size)
        if self.pos_embed is not None and old_grid != self.grid_size:
            with torch.no_grad():
                new = resize_pos_embed(self.pos_embed.detach(), self.grid_size)
            self.pos_embed = nn.Parameter(new)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # An absolute position embedding saved at another image size is interpolated.
        key = prefix + "pos_embed"
        pos = state_dict.get(key)
        if self.pos_embed is not None and isinstance(pos, torch.Tensor) \
                and pos.shape[1] != self.pos_embed.shape[1]:
            state_dict[key] = resize_pos_embed(pos, self.grid_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_input(self, images: torch.Tensor) -> None:
        if images.dim() != 4:
            raise InputError(f"images must be (B, {self.in_chans}, H, W), got shape "
                             f"{tuple(images.shape)}")
        _, c, h, w = images.shape
        if c != self.in_chans:
            raise InputError(f"images have {c} channels, the vision encoder expects "
                             f"{self.in_chans} (shape {tuple(images.shape)})")
        if h != self.image_size or w != self.image_size:
            fix = (f"call set_image_size({h}) on the encoder or build it with "
                   f"vision.image_size={h}" if h == w else "images must be square")
            raise InputError(f"image size {h}x{w} differs from the vision encoder's "
                             f"{self.image_size}x{self.image_size}; resize the images, or {fix}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` -> ``(B, 1 + N, D)``: ``[mean patch token] + patch tokens``."""
        self._check_input(images)
        x = self.patch_embed(images.to(self.patch_embed.proj.weight.dtype))  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            # Non-reentrant checkpointing restores the RNG state on recompute, so
            # drop-path makes the same choices in forward and in the recomputation.
            x = checkpoint(blk, x, use_reentrant=False) if use_ckpt else blk(x)
        patches = self.fc_norm(x[:, 1:])  # the CLS output is discarded (reference)
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that conventionally get no weight decay."""
        names = {"cls_token", "pos_embed"}
        names.update(n for n, _ in self.named_parameters()
                     if n.endswith("relative_position_bias_table"))
        return names


# --- building and loading --------------------------------------------------------------

# Keys of BEiT pretraining / classification checkpoints that this encoder has no use for.
_IGNORED_PREFIXES = ("head.", "lm_head.", "cls_pt_layers.", "rel_pos_bias.relative_position_index")
_IGNORED_KEYS = ("mask_token",)
_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"vision checkpoint '{path}' does not exist (config field "
                              f"'vision.pretrained'); give a local .pth/.pt/.safetensors file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, or pickled objects weights_only refuses
        raise CheckpointError(f"cannot read vision checkpoint '{path}': {exc}") from exc
    # Unwrap {'model': sd} / {'module': sd} / ..., possibly nested.
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"vision checkpoint '{path}' holds a {type(obj).__name__}, "
                              f"not a state dict")
    return obj


def prepare_beit2_state_dict(state_dict: dict[str, torch.Tensor],
                             depth: int | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Normalise a BEiT-v2 / X2-VLM state dict to this module's key names.

    * strips ``module.`` (DDP) and then the prefix under which the encoder lives:
      ``vision_encoder.`` (an X2-VLM checkpoint: every other key is dropped) or
      ``encoder.``;
    * drops classification / pretraining-only keys (``head.*``, ``lm_head.*``,
      ``mask_token``, ``cls_pt_layers.*``);
    * a shared ``rel_pos_bias.relative_position_bias_table`` (BEiT pretraining) is
      copied into every block that has no table of its own (needs ``depth``).

    Returns ``(state_dict, ignored_keys)``. Table sizes are left alone: loading
    interpolates them to the model's grid.
    """
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    ignored: list[str] = []
    if "patch_embed.proj.weight" not in sd:
        for prefix in ("vision_encoder.", "encoder."):
            if prefix + "patch_embed.proj.weight" in sd:
                ignored += [k for k in sd if not k.startswith(prefix)]
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                break
    shared = sd.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None and depth is not None:
        for i in range(depth):
            sd.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
    for k in list(sd):
        if k.startswith(_IGNORED_PREFIXES) or k in _IGNORED_KEYS:
            ignored.append(k)
            del sd[k]
    return sd, ignored


def load_beit2_checkpoint(model: VisionTransformer, path: str) -> list[str]:
    """Load a local BEiT-v2 (or X2-VLM) checkpoint into ``model``, strictly.

    Relative-position tables saved at another image size are interpolated. Missing or
    unexpected keys and shape mismatches raise :class:`CheckpointError` listing them.
    Returns the keys that were deliberately ignored (heads, other sub-models).
    """
    sd, ignored = prepare_beit2_state_dict(_read_state_dict(path), depth=len(model.blocks))
    try:
        result = model.load_state_dict(sd, strict=False)
    except CheckpointError:
        raise
    except RuntimeError as exc:  # size mismatches
        raise CheckpointError(f"vision checkpoint '{path}' does not fit the encoder "
                              f"(width {model.width}, depth {len(model.blocks)}):\n{exc}") from exc
    missing = list(result.missing_keys)
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"vision checkpoint '{path}' does not match the BEiT-v2 encoder "
            f"(width {model.width}, depth {len(model.blocks)}):\n"
            f"  missing keys ({len(missing)}): {_short(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if ignored:
        log.info("vision checkpoint %s: ignored %d keys (%s)", path, len(ignored), _short(ignored, 5))
    return ignored


def _short(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "") if keys else "none"


def build_beit2(config: VisionConfig) -> VisionTransformer:
    """Build the BEiT-v2 encoder from ``config``; load ``config.pretrained`` if set."""
    model = VisionTransformer(config)
    if config.pretrained:
        load_beit2_checkpoint(model, os.path.expanduser(config.pretrained))
    return model
