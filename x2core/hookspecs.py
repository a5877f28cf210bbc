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

    ``factory(config: x2core.model_config.TextConfig) -> TextEncoder`` builds the
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
    known). Resolve one with :func:`x2core.video_io.get_frame_sampler`.
    """


@hookspec
def x2vlm_register_heads(register):
    """Register domain heads (retrieval, VQA, NLVR2, grounding, ...)."""


@hookspec
def x2vlm_register_datasets(register):
    """Register dataset formats: name -> reader turning raw annotations into records."""


@hookspec
def x2vlm_register_adapters(register):
    """Register checkpoint converters and parameter-efficient adapters."""


# --- lifecycle (called by the training loop) ----------------------------------------

@hookspec
def x2vlm_train_start(state):
    """Training is about to start; ``state`` is the loop's TrainState."""


@hookspec
def x2vlm_train_step_end(state, step, metrics):
    """One optimizer step finished; ``metrics`` maps names to floats."""


@hookspec
def x2vlm_evaluate_end(state, step, metrics):
    """An evaluation finished; ``metrics`` maps names to floats."""


@hookspec
def x2vlm_checkpoint_saved(state, step, path):
    """A checkpoint was written atomically to ``path``."""


@hookspec
def x2vlm_train_end(state, metrics):
    """Training finished (also after an interruption that was handled)."""
