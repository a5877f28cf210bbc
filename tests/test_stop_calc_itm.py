"""`stop_calc_itm`: the reference's 1B recipes stop the matching loss after N steps.

The reference (Pretrain.py, train) computes ITM while ``global_step < stop_calc_itm``
with a zero-based step, i.e. on the steps 1..N as this loop numbers them, and skips the
ITM forward afterwards on every stream.
"""
from __future__ import annotations

import pytest

from x2core.errors import ConfigError
from x2core.train.config import load_train_config

from test_train import losses_by_step, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["data.images.batch_size=4", "data.regions.batch_size=4", "data.regions.max_images=2",
         "steps=4", "ckpt_every=2", "keep_last=2"]


def test_itm_stops_after_n_steps_and_resume_across_the_boundary_is_exact(tmp_path, synthetic_stores,
                                                                          monkeypatch):
    from x2core.model import x2vlm
    from x2core.train.pretrain import train

    calls = []
    real = x2vlm.sample_hard_negatives
    monkeypatch.setattr(x2vlm, "sample_hard_negatives", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = load_train_config(str(write_config(tmp_path, synthetic_stores, "full")), [*SMALL, "stop_calc_itm=2"])
    train(cfg)
    full = losses_by_step(tmp_path / "full")
    assert sorted(full) == [1, 2, 3, 4]
    itm_keys = {"train/images/itm", "train/regions/itm"}
    for step in (1, 2):
        assert itm_keys <= full[step].keys()
    for step in (3, 4):
        assert not itm_keys & full[step].keys()
        assert "train/images/itc" in full[step] and "train/regions/bbox" in full[step]
    assert len(calls) == 4  # two streams x two steps: no negatives sampled after step 2

    # Resume from the step-2 checkpoint into another run directory: steps 3 and 4 again,
    # identical to the uninterrupted run's.
    resumed = load_train_config(str(write_config(tmp_path, synthetic_stores, "resumed")),
                                [*SMALL, "stop_calc_itm=2"])
    train(resumed, resume=str(tmp_path / "full" / "checkpoints" / "step_00000002.pt"))
    got = losses_by_step(tmp_path / "resumed")
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        assert got[step].keys() == full[step].keys()
        for key, value in full[step].items():
            assert got[step][key] == value, (step, key)


@pytest.mark.parametrize("value", [None, 0])
def test_none_and_zero_never_stop(value, synthetic_stores, tmp_path):
    from x2core.train.pretrain import itm_this_batch

    cfg = load_train_config(str(write_config(tmp_path, synthetic_stores, "cfg")),
                            [f"stop_calc_itm={'null' if value is None else value}"])
    assert all(itm_this_batch(cfg, step, None, step, {}) for step in (0, 1, 10 ** 9))
    stop = load_train_config(str(write_config(tmp_path, synthetic_stores, "cfg")), ["stop_calc_itm=3"])
    assert [itm_this_batch(stop, step, None, step, {}) for step in range(5)] == [True] * 3 + [False] * 2


def test_a_negative_value_is_a_one_line_config_error(tmp_path, synthetic_stores):
    with pytest.raises(ConfigError) as exc:
        load_train_config(str(write_config(tmp_path, synthetic_stores, "bad")), ["stop_calc_itm=-1"])
    assert "stop_calc_itm" in str(exc.value) and "\n" not in str(exc.value)
