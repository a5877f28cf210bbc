"""`aux`: clean auxiliary data standing in for a noisy stream (the reference's
``aux_iter_perc`` / ``video_aux_iter_perc``, Pretrain.py ``train``).

On each step, with probability ``iter_perc``, the noisy stream's batch comes from the
clean stream instead; with ``itm_on_noisy: false`` (the reference's image aux) a step
that keeps the noisy batch computes no ITM. Decided from (seed, step) alone, resumable.
"""
from __future__ import annotations

import pytest
from torch.utils.data import Dataset

from x2core.data.mixing import MixedLoader, StreamSpec
from x2core.errors import ConfigError
from x2core.train.config import load_train_config

from test_train import losses_by_step, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Tagged(Dataset):
    """``(tag, index)`` per sample, so a batch says which stream made it."""

    def __init__(self, tag, n):
        self.tag, self.n, self.calls = tag, n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        self.calls += 1
        return (self.tag, key[1])


def tags(items):
    return list(items)


def loader(perc=0.3, seed=3, noisy=None, clean=None):
    return MixedLoader({"noisy": StreamSpec(noisy or Tagged("noisy", 40), 4, tags, aux="clean",
                                            aux_iter_perc=perc),
                        "clean": StreamSpec(clean or Tagged("clean", 24), 4, tags)}, seed=seed)


def take(mixed, n):
    return [next(mixed) for _ in range(n)]


def test_the_clean_stream_takes_the_noisy_one_s_place_at_the_given_rate():
    noisy, clean = Tagged("noisy", 40), Tagged("clean", 24)
    mixed = loader(noisy=noisy, clean=clean)
    steps = take(mixed, 400)
    assert all(s.keys() == {"noisy"} for s in steps)  # the aux stream never appears on its own
    from_clean = [s["noisy"][0][0] == "clean" for s in steps]
    assert all(len({tag for tag, _ in s["noisy"]}) == 1 for s in steps)  # whole batches swap
    assert 0.24 < sum(from_clean) / 400 < 0.36
    assert from_clean == [mixed.from_aux("noisy", i) for i in range(400)]
    # each stream advances only on the steps it supplies: nothing is loaded and dropped,
    # and the first batches of each are exactly one epoch of it
    assert noisy.calls + clean.calls == 400 * 4
    noisy_batches = [s["noisy"] for s, c in zip(steps, from_clean) if not c]
    clean_batches = [s["noisy"] for s, c in zip(steps, from_clean) if c]
    assert sorted(i for b in noisy_batches[:10] for _, i in b) == list(range(40))
    assert sorted(i for b in clean_batches[:6] for _, i in b) == list(range(24))


def test_deterministic_under_the_seed_and_the_extremes():
    pattern = [s["noisy"][0][0] for s in take(loader(seed=5), 60)]
    assert pattern == [s["noisy"][0][0] for s in take(loader(seed=5), 60)]
    assert pattern != [s["noisy"][0][0] for s in take(loader(seed=6), 60)]
    assert {s["noisy"][0][0] for s in take(loader(perc=0.0), 20)} == {"noisy"}
    assert {s["noisy"][0][0] for s in take(loader(perc=1.0), 20)} == {"clean"}


def test_resume_continues_with_the_same_batches():
    full = take(loader(), 30)
    first = loader()
    take(first, 17)
    state = first.state_dict()
    assert state["streams"]["clean"]["batch"] + state["streams"]["clean"]["epoch"] > 0
    resumed = loader()
    resumed.load_state_dict(state)
    assert take(resumed, 13) == full[17:]


def test_tangled_aux_layouts_are_refused():
    def spec(aux=None, perc=0.5):
        return StreamSpec(Tagged("x", 8), 2, tags, aux=aux, aux_iter_perc=perc)

    cases = [({"a": spec("a")}, "not another stream"),
             ({"a": spec("zz")}, "not another stream"),
             ({"a": spec("c"), "b": spec("c"), "c": spec()}, "aux stream of both"),
             ({"a": spec("b"), "b": spec("c"), "c": spec()}, "cannot have one itself"),
             ({"a": spec("b", 1.5), "b": spec()}, "aux_iter_perc")]
    for streams, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            MixedLoader(streams, seed=0)


# --- the config and the loop ----------------------------------------------------------------

def aux_config(tmp_path, stores, name, *overrides):
    data = {"images": {"path": stores["images"], "kind": "image", "batch_size": 4, "max_tokens": 16},
            "clean": {"path": stores["images"], "kind": "image", "batch_size": 4, "max_tokens": 16},
            "regions": {"path": stores["regions"], "kind": "region", "batch_size": 4, "max_images": 2,
                        "max_tokens": 16}}
    path = write_config(tmp_path, stores, name, data=data,
                        aux={"images": {"stream": "clean", "iter_perc": 0.5}}, steps=4, ckpt_every=4)
    return load_train_config(str(path), list(overrides))


@pytest.mark.parametrize("overrides, needle", [
    (["aux.nope.stream=clean"], "aux.nope"),
    (["aux.images.stream=nope"], "aux.images.stream"),
    (["aux.images.stream=regions"], "aux.images.stream"),
    (["aux.images.iter_perc=2"], "aux.images.iter_perc"),
    (["data.clean.ratio=0.5"], "data.clean.ratio"),
    (["aux.images.every=1"], "aux.images.every"),
])
def test_bad_aux_configs_are_one_line_errors(tmp_path, synthetic_stores, overrides, needle):
    with pytest.raises(ConfigError) as exc:
        aux_config(tmp_path, synthetic_stores, "bad", *overrides)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_itm_runs_only_on_clean_steps_unless_itm_on_noisy(tmp_path, synthetic_stores):
    """The reference's image aux: no ITM on any stream of a step that kept its noisy batch."""
    from x2core.train.pretrain import itm_this_batch, train

    cfg = aux_config(tmp_path, synthetic_stores, "aux")
    train(cfg)
    rows = losses_by_step(tmp_path / "aux")
    probe = MixedLoader({"images": StreamSpec(Tagged("n", 8), 1, tags, aux="clean", aux_iter_perc=0.5),
                         "clean": StreamSpec(Tagged("c", 8), 1, tags)}, seed=cfg.seed)
    clean_steps = [probe.from_aux("images", step) for step in range(4)]
    assert any(clean_steps) and not all(clean_steps)  # the seed exercises both cases
    for step, clean in enumerate(clean_steps, start=1):
        has_itm = {"train/images/itm" in rows[step], "train/regions/itm" in rows[step]}
        assert has_itm == {clean}, (step, rows[step].keys())
        assert "train/images/itc" in rows[step]
    batches = {"images": {}, "regions": {}}
    keep = aux_config(tmp_path, synthetic_stores, "keep", "aux.images.itm_on_noisy=true")
    assert all(itm_this_batch(keep, 0, probe, step, batches) for step in range(4))
    assert [itm_this_batch(cfg, 0, probe, step, batches) for step in range(4)] == clean_steps
    # a noisy stream absent from the step (ratio < 1) leaves ITM on
    assert all(itm_this_batch(cfg, 0, probe, step, {"images": None}) for step in range(4))
