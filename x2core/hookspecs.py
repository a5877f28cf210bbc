"""The hook specifications of the ``x2vlm`` pluggy project.

Registration hooks hand the plugin a ``register`` callback; the plugin says what
it adds and the host builds it lazily, on first use::

    from x2core import hookimpl

    @hookimpl
    def x2vlm_register_text_encoders(register):
        register("my-encoder", build_my_encoder, description="...")

Lifecycle hooks are called by the training loop; they observe (log, steer through
the objects they receive) and return nothing.
"""
from __future__ import annotations

import pluggy

PROJECT = "x2vlm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration -----------------------------------------------------------------

@hookspec
def x2vlm_register_text_encoders(register):
    """Register text encoders: ``register(name, factory, description="")``.

    ``factory(config: x2core.model.config.TextConfig) -> TextEncoder`` builds the
    module and its tokenizer (see :class:`x2core.interfaces.TextEncoder`).
    """


@hookspec
def x2vlm_register_vision_encoders(register):
    """Register vision encoders: ``factory(config: VisionConfig) -> VisionEncoder``."""


@hookspec
def x2vlm_register_frame_samplers(register):
    """Register frame samplers: ``register(name, factory, description="")``.

    ``factory(**options)`` returns the sampler,
    ``sampler(num_frames, n, *, training, rng, fps=None) -> list[int]`` (``n`` indices in
    ``[0, num_frames)``; ``rng`` a ``random.Random``; ``fps`` the video's rate when
    known). Resolve one with :func:`x2core.data.video_decode.get_frame_sampler`.
    """


@hookspec
def x2vlm_register_models(register):
    """Register named models (``create_model(NAME)``, ``x2vlm models``)::

        register(name, factory, description="", reference="", pretrained=())

    ``factory() -> ModelConfig`` is the architecture;
    ``x2core.model.registry.Architecture(overrides)`` builds one from overrides on the
    ModelConfig defaults. ``reference``: the reference config it mirrors.
    ``pretrained``: :class:`x2core.model.registry.PretrainedWeights` records (``tag``,
    ``location``: a local path, absolute or under ``$X2VLM_WEIGHTS_DIR``,
    ``preprocessing``, ``description``, ``source``); ``create_model(name,
    pretrained=TAG)`` loads them. Nothing is downloaded.

    The callback is the one every kind has: the factory is what the name stands for
    (an architecture), built on use; the network is not, because ``create_model``
    combines the architecture with the caller's overrides and a tag's preprocessing.
    Weights are metadata: facts about the name, several per name, listed and checked
    for on disk without building anything.
    """


@hookspec
def x2vlm_register_heads(register):
    """Register domain heads (retrieval, VQA, NLVR2, grounding, ...)."""


@hookspec
def x2vlm_register_datasets(register):
    """Register dataset formats: name -> reader turning raw annotations into records."""


@hookspec
def x2vlm_register_adapters(register):
    """Register checkpoint converters and parameter-efficient adapters.

    Converters the ``x2vlm convert --from NAME`` command offers carry
    ``converts_from="NAME"``; their factory is ``(checkpoint, *, out=None, **options) ->
    (model, report)`` and writes a model directory when ``out`` is given.
    """


@hookspec
def x2vlm_register_generators(register):
    """Register procedural data generators (``factory(out_dir, **options)`` writes raw
    annotation files and media), such as the synthetic world the demos and tests use."""


# --- lifecycle (called by the training loops) ----------------------------------------
#
# ``state`` is an :class:`x2core.train.runtime.TrainState`, the same type in pretraining and
# fine-tuning: ``cfg`` (TrainConfig or FinetuneConfig), ``model`` (the module that trains:
# the X2VLM core in pretraining, the head in fine-tuning, whose ``.model`` is the core; the
# sharded module under ``strategy=fsdp``), ``optimizer``, ``scheduler``, ``loader``,
# ``dist`` (rank, world_size, device), ``step`` (optimizer updates so far), ``output_dir``
# and ``history`` (the logged metrics rows).

@hookspec
def x2vlm_train_start(state):
    """Training is about to start (every rank), after a ``--resume`` restored ``state``."""


@hookspec
def x2vlm_train_step_end(state, step, metrics):
    """One optimizer step finished (every rank); ``metrics`` maps names to floats (the
    losses averaged over ranks, ``lr``, ``grad_norm``, ``skipped``: 1.0 when a NaN/inf
    loss skipped the update)."""


@hookspec
def x2vlm_evaluate_end(state, step, metrics):
    """An evaluation finished (fine-tuning, rank 0); ``metrics`` maps names to floats."""


@hookspec
def x2vlm_checkpoint_saved(state, step, path):
    """A checkpoint was written atomically to ``path`` (rank 0)."""


@hookspec
def x2vlm_train_end(state, metrics):
    """Training finished (every rank; also after an interruption that was handled)."""
