"""By-value tests of the losses (also across a simulated world of ranks) and of the data
position (seeds, epoch samplers, stream mixing, resume), written against mutation-testing
survivors (issue #20). Equivalent mutants are listed in tools/mutation/equivalent.md."""
from __future__ import annotations

import hashlib
import itertools
import math
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from x2core.data import mixing
from x2core.data.mixing import EpochBatchSampler, MixedLoader, StreamSpec
from x2core.data.seeding import derive_seed, sample_rng
from x2core.errors import ConfigError, X2Error
from x2core.model import losses
from x2core.model.losses import bbox_losses, gather_ids, gather_with_grad, itc_loss, mlm_loss


# --- seeds ---------------------------------------------------------------------------------------

def test_derive_seed_is_pinned():
    # Every data order, presence pattern and loader seed derives from these values: a change
    # would silently give a resumed run different data than the run it continues.
    assert derive_seed("perm", 0, "", 0) == 6660069077090589519   # raw digest has bit 63 set, odd
    assert derive_seed("x", 2) == 8705384244162952824
    assert derive_seed("a") == 3405396810240292928
    for parts in [("perm", 0, "", 0), ("x", 1), ("present", 3, 0, "b")]:
        raw = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
        assert derive_seed(*parts) == int.from_bytes(raw, "little") % 2 ** 63


def test_sample_rng_is_a_function_of_seed_epoch_index_and_salt():
    assert sample_rng(3, 1, 7).random() == random.Random("x2vlm:3:1:7").random()
    assert sample_rng(3, 1, 7, "crop").random() == random.Random("x2vlmcrop:3:1:7").random()
    assert sample_rng(3, 1, 7).random() != sample_rng(3, 1, 8).random()


# --- EpochBatchSampler ---------------------------------------------------------------------------

def _perm(n, seed, name, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(
        derive_seed("perm", seed, name, epoch))).tolist()


def test_shard_is_the_seeded_permutation_strided_by_rank():
    s = EpochBatchSampler(10, 1, seed=9, name="img", rank=1, world_size=3)
    for epoch in (0, 2):
        assert s.shard(epoch).tolist() == _perm(10, 9, "img", epoch)[1::3][:3]
    # the default name is the empty string
    assert EpochBatchSampler(6, 2, seed=1).shard(0).tolist() == _perm(6, 1, "", 0)


def test_default_sampler_starts_at_epoch_zero_batch_zero_and_reshuffles_each_epoch():
    got = list(itertools.islice(EpochBatchSampler(6, 2, seed=1), 4))
    p0, p1 = _perm(6, 1, "", 0), _perm(6, 1, "", 1)
    assert got == [[(0, i) for i in p0[0:2]], [(0, i) for i in p0[2:4]], [(0, i) for i in p0[4:6]],
                   [(1, i) for i in p1[0:2]]]


def test_sampler_started_mid_epoch_continues_there_then_wraps():
    got = list(itertools.islice(EpochBatchSampler(6, 2, seed=1, batch=2), 2))
    assert got == [[(0, i) for i in _perm(6, 1, "", 0)[4:6]], [(1, i) for i in _perm(6, 1, "", 1)[0:2]]]


def test_one_batch_per_epoch_is_enough():
    s = EpochBatchSampler(4, 2, seed=0, world_size=2)   # 2 samples per rank = exactly one batch
    assert s.batches_per_epoch == 1
    got = list(itertools.islice(s, 2))
    assert [[e for e, _ in b] for b in got] == [[0, 0], [1, 1]]


# --- MixedLoader ---------------------------------------------------------------------------------

class Keys(Dataset):
    """Returns the sampler's ``(epoch, index)`` key itself, so batches show the position."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return key


def keys(n, bs, **kw):
    return StreamSpec(Keys(n), bs, list, **kw)


def test_config_errors_are_one_exact_line():
    cases = [
        ({}, "MixedLoader needs at least one stream"),
        ({"x": keys(4, 2, ratio=1.5)}, "stream 'x': ratio must be in (0, 1], got 1.5"),
        ({"x": keys(4, 0)}, "stream 'x': batch_size must be >= 1, got 0"),
        ({"x": keys(4, 2, num_workers=-1)}, "stream 'x': num_workers must be >= 0"),
    ]
    for streams, message in cases:
        with pytest.raises(ConfigError) as exc:
            MixedLoader(streams, seed=0)
        assert str(exc.value) == message
    loader = MixedLoader({"x": keys(4, 2)}, seed=0)
    with pytest.raises(X2Error) as exc:
        loader.load_state_dict({"streams": {}})
    assert str(exc.value) == "not a MixedLoader state (missing 'step')"


def test_pin_memory_follows_the_argument_else_cuda(monkeypatch):
    spec = {"x": keys(4, 2)}
    assert MixedLoader(spec, seed=0, pin_memory=True).pin_memory is True
    assert MixedLoader(spec, seed=0, pin_memory=False).pin_memory is False
    assert MixedLoader(spec, seed=0, pin_memory=1).pin_memory is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert MixedLoader(spec, seed=0).pin_memory is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert MixedLoader(spec, seed=0).pin_memory is False


def test_stream_batches_are_the_samplers_batches():
    loader = MixedLoader({"a": keys(8, 2), "b": keys(12, 3)}, seed=4, rank=1, world_size=2)
    steps = list(itertools.islice(loader, 5))
    for name, n, bs in [("a", 8, 2), ("b", 12, 3)]:
        want = EpochBatchSampler(n, bs, seed=4, name=name, rank=1, world_size=2)
        assert [s[name] for s in steps] == list(itertools.islice(want, 5))


def test_state_dict_is_the_exact_position():
    loader = MixedLoader({"a": keys(8, 2), "b": keys(6, 3)}, seed=4, rank=1, world_size=2)
    list(itertools.islice(loader, 3))   # a: 2 batches per epoch, b: 1
    assert loader.state_dict() == {
        "step": 3, "seed": 4, "rank": 1, "world_size": 2,
        "streams": {"a": {"epoch": 1, "batch": 1}, "b": {"epoch": 3, "batch": 0}}}


def test_presence_is_pinned_to_seed_step_name_and_strict():
    loader = MixedLoader({"a": keys(8, 2, ratio=0.4), "b": keys(8, 2)}, seed=3)
    for step in range(60):
        want = random.Random(derive_seed("present", 3, step, "a")).random() < 0.4
        assert loader.present("a", step) is want
        assert loader.present("b", step) is True
    # P(present) is exactly the ratio: a draw equal to the ratio is absent
    r0 = random.Random(derive_seed("present", 3, 0, "a")).random()
    edge = MixedLoader({"a": keys(8, 2, ratio=r0)}, seed=3)
    assert edge.present("a", 0) is False
    assert MixedLoader({"a": keys(8, 2, ratio=math.nextafter(r0, 1))}, seed=3).present("a", 0)


def test_an_absent_stream_does_not_hide_the_streams_after_it():
    loader = MixedLoader({"a": keys(8, 2, ratio=0.3), "b": keys(8, 2)}, seed=3)
    steps = list(itertools.islice(loader, 12))
    assert any(s["a"] is None for s in steps)
    assert all(set(s) == {"a", "b"} and s["b"] is not None for s in steps)


def test_resume_restores_listed_streams_and_restarts_the_others():
    def fresh():
        return MixedLoader({"a": keys(8, 2), "b": keys(12, 3)}, seed=2)   # 4 batches per epoch each
    ref = list(itertools.islice(fresh(), 9))
    # "a" is missing from the state (starts over); "b" comes after it and is still restored
    resumed = fresh()
    resumed.load_state_dict({"step": 5, "streams": {"b": {"epoch": 1, "batch": 1}}})
    assert next(resumed) == {"a": ref[0]["a"], "b": ref[5]["b"]}
    assert resumed.state_dict()["streams"] == {"a": {"epoch": 0, "batch": 1},
                                               "b": {"epoch": 1, "batch": 2}}
    assert resumed.state_dict()["step"] == 6
    # a saved batch at or past the end of its epoch (e.g. resumed on more ranks): next epoch
    rolled = fresh()
    rolled.load_state_dict({"step": 0, "streams": {"a": {"epoch": 0, "batch": 4},
                                                   "b": {"epoch": 1, "batch": 7}}})
    assert rolled.state_dict()["streams"] == {"a": {"epoch": 1, "batch": 0},
                                              "b": {"epoch": 2, "batch": 0}}
    assert next(rolled) == {"a": ref[4]["a"], "b": ref[8]["b"]}
    assert rolled.state_dict()["streams"] == {"a": {"epoch": 1, "batch": 1},
                                              "b": {"epoch": 2, "batch": 1}}


def test_loading_batches_leaves_the_global_torch_rng_alone():
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    loader = MixedLoader({"a": keys(8, 2), "b": keys(8, 2, ratio=0.5)}, seed=1)
    list(itertools.islice(loader, 3))
    loader.load_state_dict(loader.state_dict())   # restarts the iterators
    list(itertools.islice(loader, 2))
    assert torch.equal(torch.rand(3), want)


@pytest.fixture
def built_loaders(monkeypatch):
    """Every DataLoader a MixedLoader builds, in order."""
    built = []

    class Recording(DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(mixing, "DataLoader", Recording)
    return built


def test_each_stream_gets_one_dataloader_with_a_private_seeded_generator(built_loaders):
    loader = MixedLoader({"a": keys(8, 2), "b": keys(8, 2)}, seed=5, rank=1, world_size=2,
                         pin_memory=True)
    loader.load_state_dict({"step": 0, "streams": {"b": {"epoch": 2, "batch": 0}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pin_memory without an accelerator
        list(itertools.islice(loader, 5))   # crosses epochs: the same DataLoaders keep going
    assert len(built_loaders) == 2        # not one per step
    for dl, name, epoch in zip(built_loaders, "ab", (0, 2)):
        assert dl.generator.initial_seed() == derive_seed("loader", 5, name, epoch, 1)
        assert dl.pin_memory is True and dl.num_workers == 0


def test_worker_options_reach_the_dataloader(built_loaders):
    with MixedLoader({"w": keys(8, 2, num_workers=1, prefetch_factor=3)}, seed=0,
                     pin_memory=False) as loader:
        first = next(loader)["w"]
    assert first == list(itertools.islice(EpochBatchSampler(8, 2, seed=0, name="w"), 1))[0]
    (dl,) = built_loaders
    # persistent workers: with pin_memory on CUDA torch then shuts them down in order at exit
    assert (dl.num_workers, dl.prefetch_factor, dl.persistent_workers, dl.pin_memory) \
        == (1, 3, True, False)


# --- losses --------------------------------------------------------------------------------------

class FakeWorld:
    """``torch.distributed`` as rank ``rank`` of ``world`` sees it, the ranks' tensors being
    the row blocks of ``tensors``. ``all_gather`` fills in the blocks of the global tensor
    whose block ``rank`` is the tensor given. ``all_reduce`` multiplies by ``world``: the
    sum over ranks when, as in ITC, every rank computes the same loss over the same gathered
    matrix and therefore holds the same gradient."""

    def __init__(self, rank, world, *tensors):
        self.rank, self.world, self.tensors = rank, world, tensors

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_rank(self):
        return self.rank

    def get_world_size(self):
        return self.world

    def all_gather(self, parts, x):
        assert len(parts) == self.world
        for full in self.tensors:
            blocks = full.chunk(self.world)
            mine = blocks[self.rank]
            if mine.shape == x.shape and torch.equal(mine.to(x.dtype), x):
                for part, block in zip(parts, blocks):
                    part.copy_(block)
                return
        raise AssertionError("no rank's tensors match the tensor being gathered")

    def all_reduce(self, t):
        t.mul_(self.world)


def test_gather_with_grad_concatenates_ranks_and_sums_the_gradient(monkeypatch):
    full = torch.arange(18.0).reshape(6, 3)
    monkeypatch.setattr(losses, "dist", FakeWorld(1, 3, full))
    x = full[2:4].clone().requires_grad_()
    y = gather_with_grad(x)
    assert torch.equal(y, full)
    w = torch.arange(18.0).reshape(6, 3) / 7
    (y * w).sum().backward()
    assert torch.equal(x.grad, 3 * w[2:4])


def test_gather_ids_concatenates_ranks_as_int64(monkeypatch):
    full = torch.tensor([5, 7, 100001, 9])
    monkeypatch.setattr(losses, "dist", FakeWorld(0, 2, full))
    got = gather_ids(torch.tensor([[5], [7]], dtype=torch.int32))
    assert got.dtype == torch.int64 and got.tolist() == [5, 7, 100001, 9]


@pytest.mark.parametrize("with_ids", [False, True])
def test_itc_on_one_rank_of_a_world_equals_the_global_batch(monkeypatch, with_ids):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    ids = torch.tensor([7, 7, 3, 9, 3, 1]) if with_ids else None
    temp = torch.tensor(0.1)
    # single process on the global batch
    gi, gt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    want = itc_loss(gi, gt, temp, ids)
    want.backward()
    # rank 1 of 2 holds rows 3..5
    monkeypatch.setattr(losses, "dist", FakeWorld(1, 2, img, txt, *([ids] if with_ids else [])))
    li, lt = img[3:].clone().requires_grad_(), txt[3:].clone().requires_grad_()
    got = itc_loss(li, lt, temp, None if ids is None else ids[3:])
    got.backward()
    torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)
    # summed over the ranks (world x the shared gradient) before DDP averages it
    torch.testing.assert_close(li.grad, 2 * gi.grad[3:], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lt.grad, 2 * gt.grad[3:], rtol=1e-5, atol=1e-7)


def test_itc_keeps_float64_precision_and_warns_nothing():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
    idx = torch.tensor([4, 4, 4, 2, 8])   # a group of three: targets of 1/3
    logits = img @ txt.t() / 0.2
    targets = (idx[:, None] == idx[None, :]).double()
    targets = targets / targets.sum(1, keepdim=True)
    want = (-(logits.log_softmax(1) * targets).sum(1).mean()
            - (logits.t().log_softmax(1) * targets).sum(1).mean()) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = itc_loss(img, txt, torch.tensor(0.2, dtype=torch.float64), idx)
        itc_loss(img, txt, torch.tensor(0.2, dtype=torch.float64))
    assert got.dtype == torch.float64
    assert abs(float(got) - float(want)) < 1e-12 * float(want)


def test_itc_runs_on_the_features_device():
    # "meta" stands in for an accelerator: labels built on the CPU would not mix with it
    img = F.normalize(torch.randn(3, 4), dim=-1).to("meta")
    loss = itc_loss(img, img, torch.tensor(0.1, device="meta"))
    assert loss.device.type == "meta" and loss.shape == ()


def test_mlm_loss_divides_by_the_masked_count():
    logits = torch.randn(2, 2, 5)
    labels = torch.tensor([[3, -100], [-100, -100]])    # one masked position, three padding
    want = F.cross_entropy(logits[0, 0][None], torch.tensor([3]))
    assert math.isclose(float(mlm_loss(logits, labels)), float(want), rel_tol=1e-6)
    labels = torch.tensor([[3, 1], [2, -100]])          # three masked, one padding
    want = F.cross_entropy(logits.reshape(4, 5)[:3], torch.tensor([3, 1, 2]))
    assert math.isclose(float(mlm_loss(logits, labels)), float(want), rel_tol=1e-6)


def test_bbox_losses_without_is_image_average_every_row():
    pred = torch.tensor([[0.3, 0.3, 0.2, 0.2]])
    target = torch.tensor([[0.7, 0.7, 0.2, 0.2]])
    l1, giou = bbox_losses(pred, target)
    assert math.isclose(float(l1), 0.8, rel_tol=1e-6)
    # disjoint 0.2x0.2 boxes, enclosing 0.6x0.6: GIoU = -(0.36 - 0.08) / 0.36
    assert math.isclose(float(giou), 1 + (0.36 - 0.08) / 0.36, rel_tol=1e-5)
    l1, giou = bbox_losses(pred.repeat(2, 1), target.repeat(2, 1))
    assert math.isclose(float(l1), 0.8, rel_tol=1e-6)


def test_bbox_giou_is_zeroed_when_either_side_is_degenerate():
    good = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    flipped = torch.tensor([[0.5, 0.5, -0.2, 0.2]])   # x1 < x0 only (y1 > x0, y1 > y0)
    for pred, target in [(flipped, good), (good, flipped)]:
        l1, giou = bbox_losses(pred, target)
        assert float(giou) == 0.0 and math.isclose(float(l1), 0.4, rel_tol=1e-6)
    # zero width is not degenerate: an empty box against a 0.2x0.2 one has GIoU 0, loss 1
    thin = torch.tensor([[0.5, 0.5, 0.0, 0.2]])
    l1, giou = bbox_losses(torch.cat([thin, good]), torch.cat([good, thin]))
    assert math.isclose(float(giou), 1.0, rel_tol=1e-6)
