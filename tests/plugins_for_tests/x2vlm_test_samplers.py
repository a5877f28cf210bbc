"""A third-party frame sampler, loaded from outside the package through X2VLM_PLUGINS.

``every-kth`` takes every ``k``-th frame from the end backwards (then sorts), with
``k`` a factory option: a rule none of the built-ins follows, so a test can tell it
was used. Registered as a factory ``factory(**options) -> sampler``, the convention
of :func:`x2core.hookspecs.x2vlm_register_frame_samplers`.
"""
from x2core import hookimpl


def every_kth(k: int = 2):
    def sampler(num_frames, n, *, training, rng, fps=None):
        out = [max(0, num_frames - 1 - j * k) for j in range(n)]
        return sorted(out)
    return sampler


@hookimpl
def x2vlm_register_frame_samplers(register):
    register("every-kth", every_kth, description="every k-th frame from the end (test plugin)")
