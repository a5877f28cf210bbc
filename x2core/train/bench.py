"""Train-step throughput, peak memory and model-FLOP utilisation on synthetic batches.

MFU = (FLOPs of one train step, counted by ``torch.utils.flop_counter`` on the
real forward + backward) x steps/s / (a bf16 matmul ceiling measured on the same
device in the same run). Counting rather than estimating keeps the numerator honest
when the architecture changes; measuring the ceiling keeps the ratio meaningful
across cards and clocks.
"""
from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import torch

from x2core.model.boxes import box_to_patch_mask
from x2core.utils.device import autocast_for


@dataclass
class BenchResult:
    model: str
    mode: str                 # eager | compile
    device: str
    dtype: str
    batch_size: int
    samples_per_s: float
    step_ms: float
    tflops_per_step: float
    achieved_tflops: float
    ceiling_tflops: float
    mfu: float
    peak_mem_gib: float

    def as_dict(self) -> dict:
        return asdict(self)


def matmul_ceiling_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None,
                          iters: int = 20) -> float:
    """Best sustained dense matmul rate (TFLOP/s) of ``n x n`` operands."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / iters)
    return 2 * n ** 3 / best / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(model, batch_size: int, device: torch.device, *, regions: bool,
                    max_tokens: int = 40, max_masks: int = 12) -> dict[str, torch.Tensor]:
    """A pretraining batch of the model's shapes (random pixels, random token ids)."""
    vcfg = model.config.vision
    vocab = model.text_encoder.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch_size, max_tokens), generator=g)
    tok = model.tokenizer
    ids[:, 0] = tok.cls_token_id
    ids[:, -1] = tok.sep_token_id
    masked = ids.clone()
    pos = torch.stack([torch.randperm(max_tokens - 2, generator=g)[:max_masks] + 1 for _ in range(batch_size)])
    masked.scatter_(1, pos, tok.mask_token_id)
    batch = {
        "image": torch.randn(batch_size, 3, vcfg.image_size, vcfg.image_size, generator=g),
        "text_ids": ids, "text_atts": torch.ones_like(ids), "text_ids_masked": masked,
        "masked_pos": pos, "masked_ids": ids.gather(1, pos),
    }
    if regions:
        # one box per image row: the left half of the image
        size = vcfg.image_size
        mask = box_to_patch_mask([0, 0, size / 2, size], size, vcfg.patch_size)
        batch.update(idx_to_group_img=torch.arange(batch_size),
                     image_atts=mask.expand(batch_size, -1).clone(),
                     target_bbox=torch.tensor([[0.25, 0.5, 0.5, 1.0]]).expand(batch_size, -1).clone(),
                     is_image=torch.zeros(batch_size))
    return {k: v.to(device) for k, v in batch.items()}


def bench_train_step(name: str, *, batch_size: int, device: torch.device, compile: bool = False,
                     steps: int = 10, warmup: int = 3, regions: bool = True,
                     ceiling: float | None = None) -> BenchResult:
    """Time full train steps (forward ITC+ITM+MLM(+bbox), backward, AdamW)."""
    from torch.utils.flop_counter import FlopCounterMode

    from x2core.model.factory import create_model

    torch.manual_seed(0)
    model = create_model(name).to(device)
    model.train()
    batch = synthetic_batch(model, batch_size, device, regions=regions)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    amp = autocast_for("auto", device)  # bf16 on CUDA, fp32 on CPU
    fwd = torch.compile(model) if compile else model

    def step():
        with amp:
            loss = fwd(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:  # eager count of the same computation
        with amp:
            model(batch)["loss"].backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # process high-water mark (includes everything else the process holds)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ceiling = ceiling or matmul_ceiling_tflops(device, dtype)
    achieved = flops / dt / 1e12
    return BenchResult(name, "compile" if compile else "eager", str(device), str(dtype).replace("torch.", ""),
                       batch_size, batch_size / dt, dt * 1e3, flops / 1e12, achieved, ceiling,
                       achieved / ceiling, peak)
