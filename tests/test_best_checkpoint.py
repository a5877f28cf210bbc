"""checkpoints/best.pt: the fine-tune epoch that scored best on ``best_metric``, kept beside
the last checkpoint, carried through ``--resume``, and fed to ``export`` / ``eval``."""
from __future__ import annotations

import json

import pytest
import torch

from x2core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Crash(Exception):
    """Stands for the run dying (killed) in the middle of an evaluation."""


@pytest.fixture
def scripted_eval(monkeypatch):
    """The retrieval head's evaluation replaced by a scripted ``r_mean`` sequence; every
    call snapshots the weights it scored. ``script(values)``: a value or ``_Crash``."""
    from x2core.train.heads import EvalResult
    from x2plugins.heads.retrieval import RetrievalHead

    seen: list[dict] = []
    queue: list = []

    def evaluate(self, store, *, batch_size=32, progress=False):
        value = queue.pop(0)
        if value is _Crash:
            raise _Crash()
        seen.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        return EvalResult({"r_mean": value, "tr_r1": 100.0 - value}, [])

    monkeypatch.setattr(RetrievalHead, "evaluate", evaluate)

    def script(values):
        queue[:] = list(values)
        return seen
    return script


def _run(stores, out, *extra, resume=None):
    from x2core.plugin_manager import PluginManager
    from x2core.train.finetune import finetune, load_finetune_config

    cfg = load_finetune_config(None, [
        "head=retrieval", f"train={stores['heldout_retrieval']}",
        f"eval={stores['heldout_retrieval']}", "batch_size=8", "epochs=3", "optim.lr=1e-3",
        "progress=false", f"output_dir={out}", *extra])
    return finetune(cfg, plugin_manager=PluginManager(autoload=False), resume=resume)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _latest(run):
    """The checkpoint a run's ``latest`` pointer names."""
    ckpts = run / "checkpoints"
    return ckpts / (ckpts / "latest").read_text().strip()


def _assert_holds(payload, weights):
    """A checkpoint's core + head tensors are exactly ``weights`` (a head state dict)."""
    from x2core.train.finetune import split_state

    core, own = split_state(weights)
    assert payload["model"].keys() == core.keys() and payload["head"].keys() == own.keys()
    for part, want in (("model", core), ("head", own)):
        for key, value in want.items():
            assert torch.equal(payload[part][key], value), f"{part}.{key}"


@pytest.mark.parametrize("every_epoch", [True, False], ids=["save-every-epoch", "save-last-only"])
def test_best_holds_the_best_epochs_weights_and_last_the_last(synthetic_stores, tmp_path,
                                                              scripted_eval, every_epoch):
    """Scores 0.3, 0.5, 0.4: best.pt holds epoch 2's weights (a copy of its step checkpoint,
    or written by itself when only the last epoch's is kept), the last checkpoint epoch 3's."""
    seen = scripted_eval([0.3, 0.5, 0.4])
    # default best_metric: the head's r_mean
    res = _run(synthetic_stores, tmp_path, f"save_every_epoch={str(every_epoch).lower()}")
    ckpts = tmp_path / "checkpoints"
    best, last = _load(ckpts / "best.pt"), _load(_latest(tmp_path))
    assert best["epoch"] == 2 and last["epoch"] == 3
    assert best["best"] == {"metric": ["r_mean"], "mode": "max", "value": 0.5, "epoch": 2}
    assert last["best"]["epoch"] == 2  # the best so far travels in every checkpoint
    assert not all(torch.equal(seen[1][k], seen[2][k]) for k in seen[1])  # epoch 3 moved on
    _assert_holds(best, seen[1])
    _assert_holds(last, seen[2])
    assert res["best"] == {"metric": "r_mean", "value": 0.5, "epoch": 2,
                           "checkpoint": str(ckpts / "best.pt")}


def test_min_mode_and_a_list_of_metrics(synthetic_stores, tmp_path, scripted_eval):
    """best_mode=min keeps the lowest; a list scores the mean of its metrics (here
    (r_mean + 100 - r_mean) / 2 = 50 every epoch: ties keep the first epoch)."""
    scripted_eval([0.5, 0.2, 0.4, 0.3, 0.1])
    res = _run(synthetic_stores, tmp_path / "min", "epochs=2", "best_metric=val/r_mean",
               "best_mode=min")
    assert (res["best"]["epoch"], res["best"]["value"]) == (2, 0.2)
    res = _run(synthetic_stores, tmp_path / "list", "best_metric=[r_mean,val/tr_r1]")
    assert (res["best"]["epoch"], res["best"]["value"]) == (1, 50.0)


def test_resumed_run_keeps_a_better_best(synthetic_stores, tmp_path, scripted_eval):
    """Epochs 1-2 score 0.3, 0.5; the run dies evaluating epoch 3; resumed, epoch 3 scores
    0.4: best.pt still holds epoch 2 (a tracker that forgot the best would take 0.4)."""
    seen = scripted_eval([0.3, 0.5, _Crash])
    with pytest.raises(_Crash):
        _run(synthetic_stores, tmp_path)
    best_file = tmp_path / "checkpoints" / "best.pt"
    before = best_file.read_bytes()
    scripted_eval([0.4])
    res = _run(synthetic_stores, tmp_path, resume=True)
    assert best_file.read_bytes() == before
    assert res["best"]["epoch"] == 2 and res["best"]["value"] == 0.5
    _assert_holds(_load(best_file), seen[1])
    assert _load(res["checkpoint"])["epoch"] == 3


def test_unknown_metric_is_one_line_listing_the_runs_metrics(synthetic_stores, tmp_path,
                                                             scripted_eval):
    scripted_eval([0.3])
    with pytest.raises(ConfigError) as err:
        _run(synthetic_stores, tmp_path, "epochs=1", "best_metric=val/recall")
    msg = str(err.value)
    assert "'val/recall'" in msg and "val/r_mean, val/tr_r1" in msg and "\n" not in msg
    # the epoch is not lost: its checkpoint was written first, so --resume can go on
    assert _load(_latest(tmp_path))["epoch"] == 1


def test_config_checks_and_score():
    from x2core.train.best_checkpoint import score
    from x2core.train.finetune import load_finetune_config

    with pytest.raises(ConfigError, match="best_mode"):
        load_finetune_config(None, ["head=vqa", "best_mode=highest"])
    with pytest.raises(ConfigError, match="best_metric"):
        load_finetune_config(None, ["head=vqa", "best_metric=[]"])
    assert load_finetune_config(None, ["head=vqa", "best_metric=null"]).best_metric is None
    results = {"val": {"acc": 60.0, "n": 1.0}, "test": {"acc": 70.0}, "train": {"loss": 1.0},
               "checkpoint": "x"}
    assert score(["acc"], results) == 65.0  # NLVR.py: (val acc + test acc) / 2
    assert score(["test/acc"], results) == 70.0
    assert score(["val/acc", "val/n"], results) == 30.5


def test_head_defaults_follow_the_reference():
    from x2plugins.heads.builtin import head_class

    want = {"retrieval": "r_mean", "video-retrieval": "r_mean", "nlvr2": "acc",
            "grounding": "val/acc_iou50", "captioning": ("bleu4", "cider"), "video-qa": "acc",
            "vqa": None, "vqa-cls": None}
    for name, metric in want.items():
        assert getattr(head_class(name), "default_best_metric", None) == metric, name


def test_finetune_best_then_export_and_eval_it(synthetic_stores, tmp_path, capsys):
    """What a user runs: `x2vlm finetune` prints the best epoch and writes best.pt; `x2vlm
    export` of best.pt makes a model directory; `x2vlm eval` of it scores what the best
    epoch scored."""
    from x2core.cli.app import main

    run, model_dir = tmp_path / "run", tmp_path / "model"
    store = synthetic_stores["heldout_retrieval"]
    assert main(["finetune", "head=retrieval", f"train={store}", f"eval={store}", "epochs=2",
                 "batch_size=8", "optim.lr=1e-3", "progress=false", "best_metric=val/r_mean",
                 f"output_dir={run}"]) == 0
    out = capsys.readouterr().out
    best = _load(run / "checkpoints" / "best.pt")
    line = f"best: epoch {best['epoch']} (val/r_mean={best['best']['value']:.2f})"
    assert line in out and str(run / "checkpoints" / "best.pt") in out
    assert best["best"]["value"] == best["metrics"]["val"]["r_mean"]
    assert main(["export", str(run / "checkpoints" / "best.pt"), str(model_dir)]) == 0
    assert main(["eval", f"eval={store}", "progress=false", f"output_dir={tmp_path / 'ev'}",
                 "--checkpoint", str(model_dir)]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert again["val"]["r_mean"] == pytest.approx(best["best"]["value"])


def test_head_default_the_run_lacks_turns_best_off_and_another_metric_starts_afresh(capsys):
    from types import SimpleNamespace

    from x2core.train.best_checkpoint import BestTracker

    head = SimpleNamespace(default_best_metric="val/acc_iou50")
    tracker = BestTracker.for_run("auto", "max", head)
    assert not tracker.update({"testA": {"acc_iou50": 50.0}}, 1) and tracker.names is None
    assert "no best checkpoint" in capsys.readouterr().out and tracker.state()["metric"] == []
    tracker = BestTracker.for_run("val/acc", "max", head)
    saved = {"metric": ["val/acc"], "mode": "max", "value": 0.7, "epoch": 3}
    assert tracker.restore(saved) is None and (tracker.value, tracker.epoch) == (0.7, 3)
    assert not tracker.update({"val": {"acc": 0.6}}, 4) and tracker.epoch == 3
    fresh = BestTracker.for_run("val/acc", "min", head)
    assert "starts again" in fresh.restore(saved) and fresh.value is None


# --- how often and on what fine-tuning evaluates (eval_every, eval_splits) -------------------

def test_eval_every_and_eval_splits_choose_when_and_what(synthetic_stores, tmp_path, monkeypatch):
    """4 epochs, eval_every=2, eval_splits=[val]: val after epoch 2, every split after the
    last epoch, nothing else; best.pt is judged on val alone (like with like)."""
    from x2core.train.heads import EvalResult
    from x2plugins.heads.retrieval import RetrievalHead

    calls: list[str] = []
    scores = {"val": iter([10.0, 20.0]), "test": iter([99.0])}

    def evaluate(self, store, *, batch_size=32, progress=False):
        split = "val" if store.path.endswith("val") else "test"
        calls.append(split)
        return EvalResult({"r_mean": next(scores[split])}, [])

    monkeypatch.setattr(RetrievalHead, "evaluate", evaluate)
    import shutil
    val, test = tmp_path / "val", tmp_path / "test"
    for d in (val, test):
        shutil.copytree(synthetic_stores["heldout_retrieval"], d)
    out = tmp_path / "run"
    results = _run(synthetic_stores, out, "epochs=4", f"eval={{val: {val}, test: {test}}}",
                   "eval_every=2", "eval_splits=[val]")
    assert calls == ["val", "val", "test"]  # epoch 2: val; epoch 4 (last): val and test
    assert results["best"]["epoch"] == 4 and results["best"]["value"] == 20.0  # val only, not (20+99)/2
    assert results["test"]["r_mean"] == 99.0


def test_eval_every_zero_is_the_last_epoch_only_and_bad_values_are_one_line(synthetic_stores, tmp_path,
                                                                             scripted_eval):
    seen = scripted_eval([0.5])
    _run(synthetic_stores, tmp_path / "run", "eval_every=0")
    assert len(seen) == 1  # 3 epochs, one evaluation
    from x2core.train.finetune import load_finetune_config
    with pytest.raises(ConfigError, match="'eval_every' must be >= 0") as err:
        load_finetune_config(None, ["head=retrieval", "eval_every=-1"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'eval_splits' names 'tset', not a split of 'eval' \(val, test\)"):
        load_finetune_config(None, ["head=retrieval", "eval={val: a, test: b}", "eval_splits=[tset]"])
    # the old switch still works: eval_every_epoch=false is eval_every=0
    seen = scripted_eval([0.5])
    _run(synthetic_stores, tmp_path / "old", "eval_every_epoch=false")
    assert len(seen) == 2  # one more
