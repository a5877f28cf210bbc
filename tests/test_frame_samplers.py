"""Frame samplers: the built-in plugins, the reference's TSN rule, padding of short
videos, determinism, errors, and a third-party sampler found through X2VLM_PLUGINS."""
from __future__ import annotations

import pathlib
import random

import pytest

from x2core.errors import ConfigError, InputError, UnknownNameError
from x2core.plugin_manager import ENV_PLUGINS, PluginManager, reset_plugin_manager
from x2core.data.video_decode import get_frame_sampler

PLUGIN_DIR = pathlib.Path(__file__).parent / "plugins_for_tests"
BUILTIN = ("segment", "uniform", "head-tail", "fps")
SHAPES = [(1, 1), (1, 4), (3, 5), (5, 5), (6, 5), (7, 3), (10, 3), (16, 8), (17, 5), (100, 8), (301, 16)]


def reference_sample_frame_ids(rng: random.Random, nf: int, ns: int, training: bool) -> list[int]:
    """X2-VLM ``dataset/utils.py::sample_frame_ids``, transcribed rule by rule with a
    ``random.Random`` in place of numpy's global generator (same order of draws:
    shuffle the spare frames, then one draw per segment)."""
    if nf <= ns:
        if training:
            idx = list(range(nf)) + [rng.randrange(nf) for _ in range(ns - nf)]
        else:
            idx = [i % nf for i in range(ns)]
        return sorted(idx)
    stride = nf // ns
    offsets = [1] * (nf - ns * stride) + [0] * (ns * (stride + 1) - nf)
    if training:
        rng.shuffle(offsets)
    cursor, out = 0, []
    for off in offsets:
        left, right = cursor, cursor + stride + off
        cursor = right
        out.append(rng.randrange(left, right) if training else left)
    return out


def test_builtins_are_registered_by_the_plugin_with_descriptions():
    pm = PluginManager(autoload=False, extra_modules=[])
    reg = pm.registry("frame_samplers")
    assert set(BUILTIN) <= set(reg.names())
    for name in BUILTIN:
        assert reg.get(name).plugin == "x2plugins.frame_samplers" and reg.get(name).description
        assert callable(reg.get(name).factory())   # factory(**options) -> sampler


def test_unknown_sampler_and_bad_options():
    with pytest.raises(UnknownNameError, match="unknown frame sampler 'segmnet'.*segment"):
        get_frame_sampler("segmnet")
    with pytest.raises(ConfigError, match="target_fps"):
        get_frame_sampler("fps", target_fps=0)
    with pytest.raises(ConfigError, match="'segment' takes no options"):
        get_frame_sampler("segment", target_fps=2)


@pytest.mark.parametrize("nf, n, expected", [
    (10, 3, [0, 4, 7]),          # segments 4+3+3: the spare frame lengthens the first
    (9, 3, [0, 3, 6]),
    (8, 5, [0, 2, 4, 6, 7]),     # 2+2+2+1+1
    (3, 5, [0, 0, 1, 1, 2]),     # too short: cycle 0 1 2 0 1, sorted
    (1, 3, [0, 0, 0]),
    (4, 4, [0, 1, 2, 3]),
])
def test_segment_eval_is_the_first_frame_of_each_segment(nf, n, expected):
    s = get_frame_sampler("segment")
    rng = random.Random(0)
    state = rng.getstate()
    assert s(nf, n, training=False, rng=rng) == expected
    assert rng.getstate() == state          # evaluation draws nothing


@pytest.mark.parametrize("nf, n", SHAPES)
def test_segment_matches_the_reference_rule(nf, n):
    s = get_frame_sampler("segment")
    for seed in range(20):
        for training in (True, False):
            got = s(nf, n, training=training, rng=random.Random(seed))
            assert got == reference_sample_frame_ids(random.Random(seed), nf, n, training)


def test_segment_training_takes_one_frame_per_perturbed_segment():
    s = get_frame_sampler("segment")
    nf, n = 23, 5     # stride 4, 3 spare frames
    seen_bounds, seen_first = set(), set()
    for seed in range(300):
        idx = s(nf, n, training=True, rng=random.Random(seed))
        assert idx == sorted(idx) and len(set(idx)) == n
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        assert all(1 <= g <= 2 * 5 - 1 for g in gaps)
        seen_first.add(idx[0])
        seen_bounds.add(tuple(i // 4 for i in idx))
    assert seen_first == {0, 1, 2, 3, 4}    # first segment is 4 or 5 frames long
    assert len(seen_bounds) > 1


def test_segment_training_pads_short_videos_with_random_frames():
    s = get_frame_sampler("segment")
    picks = set()
    for seed in range(50):
        idx = s(3, 8, training=True, rng=random.Random(seed))
        assert len(idx) == 8 and idx == sorted(idx) and set(idx) == {0, 1, 2}
        picks.add(tuple(idx))
    assert len(picks) > 1


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("nf, n", SHAPES)
def test_every_sampler_is_valid_sorted_and_deterministic(name, nf, n):
    s = get_frame_sampler(name)
    for training in (True, False):
        for seed in range(5):
            a = s(nf, n, training=training, rng=random.Random(seed), fps=25.0)
            b = s(nf, n, training=training, rng=random.Random(seed), fps=25.0)
            assert a == b
            assert len(a) == n and all(isinstance(i, int) and 0 <= i < nf for i in a)
            assert a == sorted(a)


@pytest.mark.parametrize("name", BUILTIN)
def test_bad_requests_are_input_errors(name):
    s = get_frame_sampler(name)
    with pytest.raises(InputError, match="0 frames"):
        s(0, 3, training=False, rng=random.Random(0))
    with pytest.raises(InputError, match=">= 1"):
        s(10, 0, training=True, rng=random.Random(0))


def test_uniform_takes_bin_centres_and_jitters_within_bins():
    s = get_frame_sampler("uniform")
    assert s(100, 4, training=False, rng=random.Random(0)) == [12, 37, 62, 87]
    assert s(8, 8, training=False, rng=random.Random(0)) == list(range(8))
    assert s(3, 6, training=False, rng=random.Random(0)) == [0, 0, 1, 1, 2, 2]   # short: repeat
    for seed in range(100):
        idx = s(100, 4, training=True, rng=random.Random(seed))
        assert [i // 25 for i in idx] == [0, 1, 2, 3]


def test_head_tail_always_has_first_and_last():
    s = get_frame_sampler("head-tail")
    assert s(100, 5, training=False, rng=random.Random(0)) == [0, 25, 50, 74, 99]
    assert s(10, 1, training=False, rng=random.Random(0)) == [0]
    assert s(2, 4, training=False, rng=random.Random(0)) == [0, 0, 1, 1]       # short: repeat
    inner = set()
    for seed in range(50):
        idx = s(100, 5, training=True, rng=random.Random(seed))
        assert idx[0] == 0 and idx[-1] == 99
        inner.add(tuple(idx[1:-1]))
    assert len(inner) > 1


def test_fps_sampler_follows_the_native_rate():
    s = get_frame_sampler("fps")                      # 1 frame per second
    assert s(300, 4, training=False, rng=random.Random(0), fps=30.0) == [0, 30, 60, 90]
    s2 = get_frame_sampler("fps", target_fps=4)
    assert s2(300, 4, training=False, rng=random.Random(0), fps=10.0) == [0, 2, 5, 7]
    starts = set()
    for seed in range(50):
        idx = s(300, 4, training=True, rng=random.Random(seed), fps=30.0)
        assert [b - a for a, b in zip(idx, idx[1:])] == [30, 30, 30] and idx[-1] < 300
        starts.add(idx[0])
    assert len(starts) > 5
    # too short for the clip: start at 0, hold the last frame
    assert s(50, 4, training=True, rng=random.Random(1), fps=30.0) == [0, 30, 49, 49]
    # native rate unknown (pre-extracted frames): taken to be at the target rate
    assert s(10, 3, training=False, rng=random.Random(0), fps=None) == [0, 1, 2]


def _check_third_party(expected_plugin):
    s = get_frame_sampler("every-kth", k=3)
    assert s(10, 3, training=False, rng=random.Random(0)) == [3, 6, 9]
    from x2core.plugin_manager import registry
    assert registry("frame_samplers").get("every-kth").plugin == expected_plugin
    return s


def test_third_party_sampler_from_x2vlm_plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv(ENV_PLUGINS, "x2vlm_test_samplers")
    reset_plugin_manager(None)          # rebuilt from the environment on next use
    try:
        s = _check_third_party("x2vlm_test_samplers")
        # and the decoding path uses it
        from x2core.data.video_decode import load_video_frames
        from _data_files import jpeg_bytes
        rec = {"frames": [jpeg_bytes((16, 16), (20 * i, 0, 0)) for i in range(10)]}
        frames, idx = load_video_frames(rec, 3, sampler=s, training=False, rng=random.Random(0))
        assert idx == [3, 6, 9] and frames.shape == (3, 16, 16, 3)
    finally:
        reset_plugin_manager(None)
    monkeypatch.delenv(ENV_PLUGINS)
    with pytest.raises(UnknownNameError):
        get_frame_sampler("every-kth")


def test_third_party_sampler_from_extra_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    reset_plugin_manager(PluginManager(autoload=False, extra_modules=["x2vlm_test_samplers"]))
    try:
        _check_third_party("x2vlm_test_samplers")
    finally:
        reset_plugin_manager(None)
