"""A plugin the training tests load through X2VLM_PLUGINS (a real, out-of-package plugin).

* ``X2VLM_TEST_KILL_AT=N``: SIGKILL this process right after step N (no cleanup at all,
  like the OOM killer or a pre-empted node).
* ``X2VLM_TEST_DUMP_PARAMS=1``: at the end of training every rank saves its own parameters
  to ``output_dir/params_rank{R}.pt`` so a test can compare ranks.
* ``X2VLM_TEST_STEP_LOG=FILE``: every step this process runs is appended to FILE (one
  line per step), so a test can tell a resumed run from one that started over.
* ``X2VLM_TEST_DUMP_OPTIM_AT=N`` (or ``every``): after step N (after every step) the
  optimizer's state (AdamW moments) is saved to ``output_dir/optim_step{N}.pt``.
* ``X2VLM_TEST_COUNT_RERANK=1``: from the first step on, the ITM rerank counts the
  (query, candidate) pairs this rank scores; at the end of training they are written to
  ``output_dir/rerank_pairs_rank{R}.json``.
* ``X2VLM_TEST_SAMPLE_LOG=DIR``: every image-text batch the training loop takes from its
  loader is logged to ``DIR/rank{R}.jsonl`` as ``{"step", "stream", "keys": [[epoch,
  index, worker], ...]}`` (``worker``: the DataLoader worker that made the sample, -1 in
  the main process); the extra field is removed before the batch reaches the model.
"""
import json
import os
import signal

import torch

from x2core import hookimpl


_PAIRS = []


def _count_rerank_pairs() -> None:
    from x2core.eval import ranking

    if _PAIRS:
        return
    _PAIRS.append(0)
    real = ranking.rerank_itm

    def counting(model, img_embeds, txt_embeds, txt_atts, query_is_image, cand, *args, **kwargs):
        _PAIRS[0] += cand.numel()
        return real(model, img_embeds, txt_embeds, txt_atts, query_is_image, cand, *args, **kwargs)
    ranking.rerank_itm = counting


def _log_samples(log_dir: str) -> None:
    """Patch the image-text dataset, its collate and the mixing loader (see the docstring)."""
    from x2core.data import collate, datasets, mixing

    get_item = datasets.ImageTextDataset.__getitem__

    def getitem(self, key):
        sample = get_item(self, key)
        info = torch.utils.data.get_worker_info()
        sample["x2vlm_test_key"] = [int(sample["key"][1]), int(sample["idx"]),
                                    -1 if info is None else info.id]
        return sample
    datasets.ImageTextDataset.__getitem__ = getitem

    collate_image_text = collate.collate_image_text

    def collate_logged(items):
        out = collate_image_text(items)
        out["x2vlm_test_keys"] = torch.tensor([it["x2vlm_test_key"] for it in items])
        return out
    collate.collate_image_text = collate_logged

    real_next = mixing.MixedLoader.__next__

    def next_logged(self):
        step = self.step
        out = real_next(self)
        for name, batch in out.items():
            if isinstance(batch, dict) and "x2vlm_test_keys" in batch:
                keys = batch.pop("x2vlm_test_keys").tolist()
                with open(os.path.join(log_dir, f"rank{self.rank}.jsonl"), "a") as f:
                    f.write(json.dumps({"step": step, "stream": name, "keys": keys}) + "\n")
        return out
    mixing.MixedLoader.__next__ = next_logged


if os.environ.get("X2VLM_TEST_SAMPLE_LOG"):
    _log_samples(os.environ["X2VLM_TEST_SAMPLE_LOG"])


@hookimpl
def x2vlm_train_step_end(state, step, metrics):
    if os.environ.get("X2VLM_TEST_COUNT_RERANK"):
        _count_rerank_pairs()
    step_log = os.environ.get("X2VLM_TEST_STEP_LOG")
    if step_log:
        with open(step_log, "a") as f:
            f.write(f"{step}\n")
    dump_at = os.environ.get("X2VLM_TEST_DUMP_OPTIM_AT")
    if dump_at and (dump_at == "every" or step == int(dump_at)):
        torch.save(state.optimizer.state_dict()["state"], state.output_dir / f"optim_step{step}.pt")
    kill_at = os.environ.get("X2VLM_TEST_KILL_AT")
    if kill_at and step == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def x2vlm_train_end(state, metrics):
    if os.environ.get("X2VLM_TEST_DUMP_PARAMS"):
        params = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
        torch.save(params, state.output_dir / f"params_rank{state.dist.rank}.pt")
    if _PAIRS:
        (state.output_dir / f"rerank_pairs_rank{state.dist.rank}.json").write_text(json.dumps(_PAIRS[0]))
