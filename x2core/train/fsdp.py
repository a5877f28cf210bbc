"""FSDP (``strategy: fsdp``): shard the model across ranks with ``fully_shard`` (FSDP2).

:func:`x2core.train.runtime.wrap` calls :func:`shard` on what trains: the pretraining step
(the X2VLM core) or a fine-tuning head (the core as ``head.model`` plus the head's modules).

What sharding changes, kept here so the loop reads the same for every strategy:

* **Units.** Every element of every ``nn.ModuleList`` is its own unit (vision blocks,
  fusion layers, the text encoder's layers, temporal layers), then the root takes the
  rest. Parameters are gathered one block at a time, which is what lets the large model
  fit. Finding the lists rather than naming layer classes keeps a third-party text
  encoder sharded too.
* **Scalars stay replicated.** ``fully_shard`` refuses 0-dim parameters, and ``temp``
  is one (its shape is the official checkpoints' key). Such parameters are left out of
  sharding, and their gradients are averaged across ranks by :func:`sync_replicated_grads`.
* **Checkpoints hold full tensors**, model and optimizer alike, keyed by parameter
  name, so a checkpoint is one file on rank 0 that a resumed FSDP run scatters again.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def replicated_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters FSDP cannot shard (0-dim); they are kept whole on every rank."""
    return [p for p in module.parameters() if p.dim() == 0]


def shard(module: nn.Module) -> nn.Module:
    """Apply ``fully_shard`` to each layer of every ModuleList, then to ``module``."""
    from torch.distributed.fsdp import fully_shard

    ignored = set(replicated_parameters(module)) or None
    # Innermost lists first (reverse pre-order): fully_shard wants children before parents.
    for sub in reversed(list(module.modules())):
        if isinstance(sub, nn.ModuleList):
            for layer in sub:
                if any(p.dim() > 0 for p in layer.parameters()):
                    fully_shard(layer, ignored_params=ignored)
    return fully_shard(module, ignored_params=ignored)


@torch.no_grad()
def sync_replicated_grads(module: nn.Module) -> None:
    """Average the gradients of the unsharded parameters over ranks (FSDP leaves them)."""
    world = dist.get_world_size()
    for p in replicated_parameters(module):
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module) -> dict:
    """Every parameter and buffer as a whole CPU tensor (a collective: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state gathered to whole tensors, keyed by parameter name (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                    model_state: dict, optimizer_state: dict) -> None:
    """Scatter full model and optimizer states back onto this rank's shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    set_model_state_dict(model, model_state, options=_options())
    # strict=False: a parameter that never received a gradient (the frame table in an
    # image-only run) has no optimizer state to restore. The model state is strict.
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=_options(strict=False))
