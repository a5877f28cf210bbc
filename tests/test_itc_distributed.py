"""ITC across ranks by value: with features all-gathered, the gradient DDP ends with
(the mean of the ranks' gradients) equals one process's gradient on the global batch.
The reference's backward (a plain slice of the gathered gradient) gives 1/world of it."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from x2core.model.losses import itc_loss

from _data_files import free_port

WORLD, PER_RANK, DIM, EMBED = 2, 3, 6, 4


def _problem():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * PER_RANK, DIM, generator=g)
    texts = torch.randn(WORLD * PER_RANK, DIM, generator=g)
    w_img = torch.randn(EMBED, DIM, generator=g)
    w_txt = torch.randn(EMBED, DIM, generator=g)
    ids = torch.tensor([7, 7, 3, 9, 3, 1])   # rows 0/1 and 2/4 share an image (across ranks)
    return images, texts, w_img, w_txt, ids


def _grads(images, texts, w_img, w_txt, ids):
    w_img, w_txt = w_img.clone().requires_grad_(), w_txt.clone().requires_grad_()
    temp = torch.tensor(0.1)
    img, txt = F.normalize(images @ w_img.t(), dim=-1), F.normalize(texts @ w_txt.t(), dim=-1)
    loss = itc_loss(img, txt, temp) + itc_loss(img, txt, temp, ids)
    loss.backward()
    return loss.detach(), w_img.grad, w_txt.grad


def _worker(rank, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        images, texts, w_img, w_txt, ids = _problem()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss, g_img, g_txt = _grads(images[mine], texts[mine], w_img, w_txt, ids[mine])
        for g in (g_img, g_txt):          # what DDP does with the ranks' gradients
            dist.all_reduce(g)
            g /= WORLD
        if rank == 0:
            torch.save({"loss": loss, "g_img": g_img, "g_txt": g_txt}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_rank_itc_gradient_equals_single_process_gradient(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    got = torch.load(out)
    want_loss, want_img, want_txt = _grads(*_problem())
    torch.testing.assert_close(got["loss"], want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["g_img"], want_img, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["g_txt"], want_txt, rtol=1e-4, atol=1e-6)
    assert want_img.abs().max() > 1e-3   # a real gradient, not two zeros agreeing
