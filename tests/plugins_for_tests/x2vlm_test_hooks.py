"""A plugin the training tests load through X2VLM_PLUGINS (a real, out-of-package plugin).

* ``X2VLM_TEST_KILL_AT=N``: SIGKILL this process right after step N (no cleanup at all,
  like the OOM killer or a pre-empted node).
* ``X2VLM_TEST_DUMP_PARAMS=1``: at the end of training every rank saves its own parameters
  to ``output_dir/params_rank{R}.pt`` so a test can compare ranks.
"""
import os
import signal

import torch

from x2core import hookimpl


@hookimpl
def x2vlm_train_step_end(state, step, metrics):
    kill_at = os.environ.get("X2VLM_TEST_KILL_AT")
    if kill_at and step == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def x2vlm_train_end(state, metrics):
    if os.environ.get("X2VLM_TEST_DUMP_PARAMS"):
        params = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
        torch.save(params, state.output_dir / f"params_rank{state.dist.rank}.pt")
