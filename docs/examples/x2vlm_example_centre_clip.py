"""A frame-sampler plugin: ``n`` frames ``stride`` apart around the middle of the video.

What is registered is a factory ``factory(**options) -> sampler``; its keyword
arguments are the options a config may set (``frame_sampler: {name: centre-clip,
stride: 2}``) and are checked against this signature when the config is read. A sampler
is ``sampler(num_frames, n, *, training, rng, fps=None) -> list[int]``: ``n``
non-decreasing indices in ``[0, num_frames)``, with ``rng`` (a ``random.Random``) its
only source of randomness.
"""
from x2core import hookimpl
from x2core.errors import ConfigError


def centre_clip(stride: int = 1, jitter: int = 0):
    """Evaluation: the clip of ``n`` frames ``stride`` apart centred in the video, e.g.
    ``num_frames=20, n=4, stride=2`` -> ``[6, 8, 10, 12]``. Training shifts the clip by up
    to ``jitter`` frames either way (kept inside the video). A video shorter than the
    clip is sampled from its start and holds its last frame: ``num_frames=5, n=4,
    stride=2`` -> ``[0, 2, 4, 4]``."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ConfigError(f"frame sampler 'centre-clip': stride must be an integer >= 1, "
                          f"got {stride!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
        raise ConfigError(f"frame sampler 'centre-clip': jitter must be an integer >= 0, "
                          f"got {jitter!r}")

    def sampler(num_frames, n, *, training, rng, fps=None):
        span = (n - 1) * stride + 1
        start = max(0, (num_frames - span) // 2)
        if training and jitter and span < num_frames:
            start = min(max(0, start + rng.randint(-jitter, jitter)), num_frames - span)
        return [min(num_frames - 1, start + k * stride) for k in range(n)]

    return sampler


@hookimpl
def x2vlm_register_frame_samplers(register):
    register("centre-clip", centre_clip,
             description="n frames `stride` apart around the middle (training: +-jitter)")
