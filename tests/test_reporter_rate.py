"""The training progress bar and log show the throughput of the last logging window."""
from __future__ import annotations

import pytest


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Logger:
    def __init__(self):
        self.rows = []

    def log(self, step, metrics, prefix="train"):
        self.rows.append((step, dict(metrics)))


def test_rate_is_samples_over_the_window_and_shown_on_every_step():
    from x2core.train.runtime import Reporter, TrainState

    clock, logger = _Clock(), _Logger()
    reporter = Reporter(logger, log_every=3, total=7, initial=0, desc="train", enabled=False,
                        clock=clock)
    state = TrainState(cfg=None, model=None, optimizer=None, scheduler=None, loader=None)
    seconds = [1, 1, 2, 1, 1, 1, 4]  # per step; 8 samples each
    shown = []
    for step, dt in enumerate(seconds, 1):
        reporter.count(8)
        clock.now += dt
        state.step = step
        reporter.report(state, {"loss": 1.0})
        shown.append(reporter.pbar.postfix)
    # logged at 3, 6 and the last step: samples / seconds of that window
    assert [(s, m["samples_per_s"]) for s, m in logger.rows] == \
        [(3, pytest.approx(24 / 4)), (6, pytest.approx(24 / 3)), (7, pytest.approx(8 / 4))]
    # the bar: the partial window before the first log, then the last logged window's rate
    rates = [float(p.split("samples_per_s=")[1]) for p in shown]
    assert rates == [8.0, 8.0, 6.0, 6.0, 6.0, 8.0, 2.0]


def test_steps_per_s_rate_for_heads():
    from x2core.train.runtime import Reporter, TrainState

    clock, logger = _Clock(), _Logger()
    reporter = Reporter(logger, log_every=2, total=4, initial=0, desc="finetune",
                        rate="steps_per_s", enabled=False, clock=clock)
    state = TrainState(cfg=None, model=None, optimizer=None, scheduler=None, loader=None)
    for step in range(1, 5):
        clock.now += 0.25
        state.step = step
        reporter.report(state, {"loss": 1.0})
        assert reporter.shown_rate == pytest.approx(4.0)
    assert [m["steps_per_s"] for _, m in logger.rows] == [pytest.approx(4.0)] * 2
