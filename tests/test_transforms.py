"""Image transforms keep boxes in step; region crop rules; normalisation; decoding."""
from __future__ import annotations

import io
import random

import pytest
import torch
from PIL import Image, ImageDraw

from x2core.data import transforms as T
from x2core.errors import InputError, X2Error

RED = (255, 0, 0)
GREY = (128, 128, 128)


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def with_rect(size, box, color=RED, bg=GREY) -> Image.Image:
    img = Image.new("RGB", size, bg)
    x, y, w, h = box
    ImageDraw.Draw(img).rectangle([x, y, x + w - 1, y + h - 1], fill=color)
    return img


def assert_rect_matches(img: Image.Image, box, margin=3):
    """Pixels well inside ``box`` are red, pixels well outside are grey."""
    x, y, w, h = box
    W, H = img.size
    px = img.load()
    for j in range(0, H, 3):
        for i in range(0, W, 3):
            cx, cy = i + 0.5, j + 0.5
            inside = x + margin <= cx <= x + w - margin and y + margin <= cy <= y + h - margin
            outside = cx < x - margin or cx > x + w + margin or cy < y - margin or cy > y + h + margin
            r, g, b = px[i, j]
            if inside:
                assert r > 200 and g < 60, (i, j, px[i, j], box)
            elif outside:
                assert abs(r - 128) < 40 and abs(g - 128) < 40, (i, j, px[i, j], box)


class FixedRng:
    """``randint`` / ``random`` return scripted values (checks bounds of randint)."""

    def __init__(self, ints, floats=()):
        self.ints, self.floats = list(ints), list(floats)

    def randint(self, a, b):
        v = self.ints.pop(0)
        assert a <= v <= b, (a, v, b)
        return v

    def random(self):
        return self.floats.pop(0)


# --- geometric transforms (hand-computed) --------------------------------------------------------

def test_resize_scales_boxes_per_axis():
    img = Image.new("RGB", (100, 50))
    out, boxes = T.resize(img, [[10, 10, 20, 10]], (50, 100))
    assert out.size == (50, 100)
    assert boxes == [[5.0, 20.0, 10.0, 20.0]]
    out, boxes = T.resize(img, [[0, 0, 100, 50]], 224)
    assert out.size == (224, 224) and boxes == [[0.0, 0.0, 224.0, 224.0]]


def test_hflip_moves_boxes_and_pixels():
    img = with_rect((100, 60), (10, 5, 20, 10))
    out, boxes = T.hflip(img, [[10, 5, 20, 10]])
    assert boxes == [[70, 5, 20, 10]]
    assert_rect_matches(out, boxes[0], margin=1)


def test_crop_boxes_clip_shift_and_keep_slots():
    boxes = [[10, 10, 20, 20], [0, 0, 5, 5], [20, 20, 100, 100]]
    assert T.crop_boxes(boxes, 5, 5, 30, 30) == [[5, 5, 20, 20], [0, 0, 0.0, 0.0], [15, 15, 15, 15]]


def test_clip_box():
    assert T.clip_box([-10, 5, 30, 100], 50, 40) == [0.0, 5.0, 20.0, 35.0]
    assert T.clip_box([60, 5, 30, 10], 50, 40)[2] == 0.0


def test_random_resized_crop_boxes_follow_the_pixels():
    rng = random.Random(3)
    box = (60, 40, 80, 60)
    img = with_rect((200, 150), box)
    n_checked = 0
    for _ in range(30):
        out, (b,) = T.random_resized_crop(img, [box], 64, rng=rng, scale=(0.3, 1.0))
        assert out.size == (64, 64)
        if b[2] > 8 and b[3] > 8:
            assert_rect_matches(out, b, margin=3)
            n_checked += 1
    assert n_checked > 5


def test_random_resized_crop_params_hand_checked():
    # scale fixed to 1 and aspect = image aspect -> whole image, offset 0
    rng = random.Random(0)
    left, top, w, h = T.random_resized_crop_params(120, 90, rng, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
    assert (left, top, w, h) == (0, 0, 120, 90)
    # impossible request -> centre crop with clamped aspect
    left, top, w, h = T.random_resized_crop_params(300, 100, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert (left, top, w, h) == (100, 0, 100, 100)


def test_train_transform_same_draws_from_bytes_or_image():
    img = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    data = jpeg(img)
    a = T.train_image_transform(data, 64, random.Random(5))
    b = T.train_image_transform(T.decode_image(data), 64, random.Random(5))
    assert a.shape == b.shape == (3, 64, 64)
    assert (a - b).abs().mean() < 0.05  # draft decode vs full decode: same crop, same flip


def test_eval_transform_is_a_squash_resize():
    img = with_rect((200, 100), (0, 0, 100, 100))  # left half red
    t = T.eval_image_transform(png(img), 32)
    assert t.shape == (3, 32, 32)
    red = (1.0 - T.CLIP_MEAN[0]) / T.CLIP_STD[0]
    assert torch.allclose(t[0, :, :14], torch.full((32, 14), red), atol=1e-3)  # left half red


# --- region crop ---------------------------------------------------------------------------------

def test_region_crop_hand_computed():
    img = Image.new("RGB", (100, 100))
    boxes = [[45, 40, 15, 20],   # chosen
             [20, 40, 20, 20],   # exactly 50% inside -> dropped (rule is > 0.5)
             [25, 40, 20, 20],   # 75% inside -> kept, clipped
             [0, 0, 10, 10]]     # outside -> dropped
    # crop x0=30, y0=30, x1=70, y1=90 (w0=40, h0=60), no flip; res 120 -> sx=3, sy=2
    out, kept, flipped = T.region_crop(img, boxes, 0, 120, FixedRng([30, 30, 70, 90], [0.9]))
    assert out.size == (120, 120) and not flipped
    assert kept == [[45.0, 20.0, 45.0, 40.0], None, [0.0, 20.0, 45.0, 40.0], None]
    # same crop, flipped: x -> w0 - x - w before scaling
    _, kept, flipped = T.region_crop(img, boxes, 0, 120, FixedRng([30, 30, 70, 90], [0.1]))
    assert flipped
    assert kept == [[30.0, 20.0, 45.0, 40.0], None, [75.0, 20.0, 45.0, 40.0], None]


def test_region_crop_bounds_of_the_draws():
    # x0 in [0, floor(x)], x1 in [min(ceil(x+w), W), W]; FixedRng asserts the bounds
    img = Image.new("RGB", (50, 40))
    T.region_crop(img, [[10.5, 7.2, 20.1, 10.0]], 0, 32, FixedRng([10, 7, 31, 18], [0.9]))
    with pytest.raises(AssertionError):
        T.region_crop(img, [[10.5, 7.2, 20.1, 10.0]], 0, 32, FixedRng([11, 7, 31, 18], [0.9]))


def test_region_crop_random_properties():
    rng = random.Random(0)
    W, H, res = 160, 120, 64
    img = Image.new("RGB", (W, H))
    n_flip = 0
    trials = 400
    for _ in range(trials):
        boxes = []
        for _ in range(5):
            x, y = rng.uniform(0, W - 2), rng.uniform(0, H - 2)
            boxes.append([x, y, rng.uniform(1, W - x), rng.uniform(1, H - y)])
        chosen = rng.randrange(5)
        probe = random.Random(rng.random())
        state = probe.getstate()
        crop = T.region_crop_params(W, H, boxes[chosen], probe)
        probe.setstate(state)
        _, kept, flipped = T.region_crop(img, boxes, chosen, res, probe)
        n_flip += flipped
        x0, y0, x1, y1 = crop
        # the crop contains the chosen box entirely
        bx, by, bw, bh = boxes[chosen]
        assert x0 <= bx and y0 <= by and bx + bw <= x1 and by + bh <= y1
        cb = kept[chosen]
        assert cb is not None
        assert cb[2] == pytest.approx(bw * res / (x1 - x0)) and cb[3] == pytest.approx(bh * res / (y1 - y0))
        for b, k in zip(boxes, kept):
            iw = max(0.0, min(x1, b[0] + b[2]) - max(x0, b[0]))
            ih = max(0.0, min(y1, b[1] + b[3]) - max(y0, b[1]))
            frac = iw * ih / (b[2] * b[3])
            assert (k is not None) == (frac > 0.5), (b, crop, frac)
            if k is not None:
                assert 0 <= k[0] and 0 <= k[1] and k[0] + k[2] <= res + 1e-6 and k[1] + k[3] <= res + 1e-6
                assert k[2] * k[3] == pytest.approx(iw * ih * res * res / ((x1 - x0) * (y1 - y0)))
    assert 0.42 < n_flip / trials < 0.58


def test_region_crop_never_flips_when_not_allowed():
    img = Image.new("RGB", (80, 60))
    rng = random.Random(1)
    assert not any(T.region_crop(img, [[10, 10, 20, 20]], 0, 32, rng, allow_hflip=False)[2]
                   for _ in range(200))


def test_region_crop_pixels_follow_boxes_from_bytes():
    box = [50, 30, 40, 30]
    data = jpeg(with_rect((320, 240), box))
    rng = random.Random(2)
    flips = set()
    for _ in range(20):
        out, (k,), flipped = T.region_crop(data, [box], 0, 96, rng)
        flips.add(flipped)
        assert_rect_matches(out, k, margin=3)
    assert flips == {True, False}


def test_region_crop_rejects_a_box_outside():
    with pytest.raises(InputError, match="outside"):
        T.region_crop(Image.new("RGB", (50, 50)), [[40, 40, 20, 20]], 0, 32, random.Random(0))
    with pytest.raises(InputError, match="empty"):
        T.region_crop(Image.new("RGB", (50, 50)), [[10, 10, 0, 20]], 0, 32, random.Random(0))


def test_mentions_left_or_right():
    assert T.mentions_left_or_right(["a dog", "man on the LEFT"])
    assert T.mentions_left_or_right(["the bright light"])  # substring, like the reference
    assert not T.mentions_left_or_right(["a dog", "a cat"])
    assert not T.mentions_left_or_right([])


def test_box_to_target():
    assert T.box_to_target([10, 20, 30, 40], 100) == [0.25, 0.4, 0.3, 0.4]


# --- normalisation -------------------------------------------------------------------------------

def test_clip_normalisation_numerically():
    img = Image.new("RGB", (4, 3), (255, 0, 128))
    t = T.to_tensor_normalized(img)
    assert t.dtype == torch.float32 and t.shape == (3, 3, 4)
    expected = [(1.0 - 0.48145466) / 0.26862954, (0.0 - 0.4578275) / 0.26130258,
                (128 / 255 - 0.40821073) / 0.27577711]
    for c in range(3):
        assert torch.allclose(t[c], torch.full((3, 4), expected[c]), atol=1e-5)
    # channel layout: (C, H, W) with x along the last axis
    img.putpixel((3, 0), (0, 0, 0))
    t = T.to_tensor_normalized(img)
    assert t[0, 0, 3] == pytest.approx(-0.48145466 / 0.26862954, abs=1e-5)
    assert t[0, 0, 2] == pytest.approx(expected[0], abs=1e-5)


def test_custom_mean_std_and_grey_input():
    t = T.to_tensor_normalized(Image.new("L", (2, 2), 51), mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(t, torch.full((3, 2, 2), 0.2))


# --- decoding ------------------------------------------------------------------------------------

def test_corrupt_jpeg_is_a_clear_input_error():
    data = jpeg(Image.linear_gradient("L").convert("RGB"))
    for bad in (data[: len(data) // 2], b"\xff\xd8\xff\xe0" + b"\x00" * 100, b"not an image at all"):
        with pytest.raises(InputError, match="cannot decode image") as info:
            T.decode_image(bad)
        assert isinstance(info.value, X2Error)
    with pytest.raises(InputError, match="cannot decode image"):
        T.train_image_transform(data[: len(data) // 2], 32, random.Random(0))
    with pytest.raises(InputError, match="must be bytes"):
        T.decode_image("path/to/file.jpg")


def test_draft_mode_decodes_at_the_size_asked():
    img = Image.radial_gradient("L").resize((640, 480)).convert("RGB")
    data = jpeg(img)
    assert T.decode_image(data).size == (640, 480)
    # 1/4 DCT scale is the smallest that still covers 100x100
    assert T.decode_image(data, draft_size=(100, 100)).size == (160, 120)
    # 1/2 covers 200x200 (1/4 would give 120 rows < 200)
    assert T.decode_image(data, draft_size=200).size == (320, 240)
    # never smaller than asked, never a draft when the image is not 2x larger
    assert T.decode_image(data, draft_size=(400, 300)).size == (640, 480)
    # PNG: no draft
    assert T.decode_image(png(img), draft_size=100).size == (640, 480)
    dec, boxes = T.decode_image_and_boxes(data, [[64, 48, 320, 240]], draft_size=(100, 100))
    assert dec.size == (160, 120) and boxes == [[16.0, 12.0, 80.0, 60.0]]


def test_decode_crop_resize_draft_matches_full_decode():
    img = Image.radial_gradient("L").resize((640, 480)).convert("RGB")
    data = jpeg(img)
    box = (100, 80, 500, 380)
    fast = T.decode_crop_resize(data, box, 96)
    full = T.decode_image(data).resize((96, 96), T.BICUBIC, box=box)
    diff = (T.to_tensor_normalized(fast) - T.to_tensor_normalized(full)).abs().mean()
    assert fast.size == (96, 96) and diff < 0.05


def test_grey_and_cmyk_jpegs_become_rgb():
    grey = jpeg(Image.new("L", (64, 48), 100))
    assert T.decode_image(grey).mode == "RGB"
    assert T.train_image_transform(grey, 16, random.Random(0)).shape == (3, 16, 16)
    buf = io.BytesIO()
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(buf, format="JPEG")
    assert T.decode_image(buf.getvalue(), draft_size=16).mode == "RGB"
