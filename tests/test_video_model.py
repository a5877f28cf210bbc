"""Video encoding: frames -> vision -> frame-position embedding -> (temporal) -> mean,
and the frame-table resize when the frame count changes between runs (facts §4)."""
from __future__ import annotations

import pytest
import torch

import x2core
from x2core.errors import InputError


def tiny(**video):
    torch.manual_seed(0)
    return x2core.create_model("x2vlm-tiny", video=video).eval()


def test_encode_video_is_the_mean_of_frame_embeddings_plus_their_positions():
    m = tiny(max_frames=4)
    video = torch.randn(2, 3, 3, 64, 64)
    embeds, atts = m.encode_video(video)
    assert embeds.shape == (2, 1 + 16, 64) and atts.shape == (2, 17) and bool((atts == 1).all())
    with torch.no_grad():
        frames = m.vision_encoder(video.flatten(0, 1)).view(2, 3, 17, 64)
        want = (frames + m.video_pooling.frame_pos_embed[:, :3]).mean(1)
    torch.testing.assert_close(embeds, want)
    # one frame: the video is that image plus its frame embedding
    one, _ = m.encode_video(video[:, :1])
    img, _, _ = m.encode_image(video[:, 0])
    torch.testing.assert_close(one, img + m.video_pooling.frame_pos_embed[:, 0])


def test_avgpool_ignores_frame_order_and_temporal_attention_sees_it():
    video = torch.randn(1, 4, 3, 64, 64)
    backwards = video.flip(1)
    avg = tiny(max_frames=4)
    # avgpool: the frame embedding is a constant shift of the mean, so order is invisible
    with torch.no_grad():
        avg.video_pooling.frame_pos_embed.normal_()
    torch.testing.assert_close(avg.encode_video(video)[0], avg.encode_video(backwards)[0])
    temporal = tiny(max_frames=4, encoding="temporal")
    temporal.load_state_dict(avg.state_dict(), strict=False)
    # starts as avgpool: zero-initialised residual branches
    torch.testing.assert_close(temporal.encode_video(video)[0], avg.encode_video(video)[0])
    with torch.no_grad():
        for p in temporal.video_pooling.temporal.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a, b = temporal.encode_video(video)[0], temporal.encode_video(backwards)[0]
    assert (a - b).abs().max() > 1e-3


def test_more_frames_than_the_table_is_a_clear_error():
    m = tiny(max_frames=2)
    with pytest.raises(InputError, match="3 frames.*video.max_frames"):
        m.encode_video(torch.randn(1, 3, 3, 64, 64))
    with pytest.raises(InputError, match=r"\(B, F, 3, H, W\)"):
        m.encode_video(torch.randn(3, 3, 64, 64))


@pytest.mark.parametrize("new_frames", [8, 2])
def test_changing_the_frame_count_resizes_the_table_on_load(tmp_path, new_frames):
    from x2core.model.directory import from_pretrained, save_pretrained
    from x2core.model.artifact import load_weights

    pre = tiny(max_frames=3)  # pretrained on 3 frames, as X2-VLM
    with torch.no_grad():
        pre.video_pooling.frame_pos_embed.normal_()
    old = pre.video_pooling.frame_pos_embed.detach().clone()
    save_pretrained(pre, tmp_path / "pre")
    n = min(3, new_frames)

    # model directory with another frame count
    ft = from_pretrained(tmp_path / "pre", video={"max_frames": new_frames})
    table = ft.video_pooling.frame_pos_embed
    assert table.shape == (1, new_frames, 1, 64)
    assert torch.equal(table[:, :n], old[:, :n])

    # `init_from` in a training / fine-tuning config: same rule, rows beyond keep their init
    fresh = tiny(max_frames=new_frames)
    init = fresh.video_pooling.frame_pos_embed.detach().clone()
    load_weights(fresh, str(tmp_path / "pre"))
    table = fresh.video_pooling.frame_pos_embed
    assert torch.equal(table[:, :n], old[:, :n])
    assert torch.equal(table[:, n:], init[:, n:])

    # everything else is untouched
    for k, v in pre.state_dict().items():
        if "frame_pos_embed" not in k:
            assert torch.equal(ft.state_dict()[k], v), k


def test_a_table_of_another_width_is_still_refused(tmp_path):
    from x2core.model.loading import compare_state
    from x2core.errors import CheckpointError

    m = tiny(max_frames=3)
    state = dict(m.state_dict())
    state["video_pooling.frame_pos_embed"] = torch.zeros(1, 3, 1, 32)
    with pytest.raises(CheckpointError, match="frame_pos_embed"):
        compare_state(m.state_dict(), state, source="file").raise_for_problems()


def test_a_frame_count_beyond_the_table_is_a_config_error_naming_the_field():
    from x2core.errors import ConfigError
    from x2core.model.config import VideoConfig
    from x2core.model.video import check_frame_count

    check_frame_count(VideoConfig(max_frames=3), 3, "data.videos.num_frames")
    check_frame_count(VideoConfig(max_frames=3, frame_pos_embed=False), 9, "data.videos.num_frames")
    with pytest.raises(ConfigError, match=r"'data.videos.num_frames' \(4\).*max_frames = 3"):
        check_frame_count(VideoConfig(max_frames=3), 4, "data.videos.num_frames")
