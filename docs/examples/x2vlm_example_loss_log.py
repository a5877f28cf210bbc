"""A lifecycle-hook plugin: every logged number of a run in ``OUTPUT_DIR/loss_log.csv``.

Lifecycle hooks observe the training loop (``x2vlm pretrain`` and ``x2vlm finetune``);
they get the live state (``state.model``, ``state.optimizer``, ``state.output_dir``,
``state.dist``, ``state.step``) and return nothing. They run on every rank; this one
writes on rank 0 only. Rows are ``step,name,value``: the training numbers after every
optimizer step, the evaluation metrics after every evaluation.
"""
import csv

from x2core import hookimpl

FILE_NAME = "loss_log.csv"


def _append(state, rows):
    if not state.dist.is_main:
        return
    with open(state.output_dir / FILE_NAME, "a", newline="") as fh:
        csv.writer(fh).writerows(rows)


@hookimpl
def x2vlm_train_start(state):
    if state.dist.is_main and state.step == 0:  # a resumed run (step > 0) appends
        state.output_dir.mkdir(parents=True, exist_ok=True)
        (state.output_dir / FILE_NAME).write_text("step,name,value\n")


@hookimpl
def x2vlm_train_step_end(state, step, metrics):
    _append(state, [(step, name, value) for name, value in sorted(metrics.items())])


@hookimpl
def x2vlm_evaluate_end(state, step, metrics):
    _append(state, [(step, name, value) for name, value in sorted(metrics.items())])
