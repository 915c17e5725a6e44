"""serving.preprocess: formats, orientation, alpha, negation, passthrough, guards, dataset round trip."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from serving.preprocess import (
    MAX_PIXELS,
    ImageTooLarge,
    InvalidImage,
    PreprocessError,
    array_to_input,
    decode_image,
    to_batch,
)
from tests.support import cutouts

IMAGES = Path(__file__).resolve().parent / "support" / "images"
NOT_AN_IMAGE = "not a supported image (PNG, JPEG, WebP, GIF, BMP): cannot identify image data"


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def draw_shape(size=(240, 180), fg=(25, 25, 25), bg=(250, 250, 250), mode="RGB") -> Image.Image:
    """An asymmetric 'L'-shaped object (so rotations and flips are detectable)."""
    img = Image.new(mode, size, bg)
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle((w * 0.3, h * 0.15, w * 0.45, h * 0.85), fill=fg)  # vertical bar
    d.rectangle((w * 0.3, h * 0.7, w * 0.75, h * 0.85), fill=fg)  # foot to the right
    return img


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The shape drawn dark on light, as lossless PNG, preprocessed."""
    return decode_image(encode(draw_shape(), "PNG"))


def assert_model_input(x: np.ndarray) -> None:
    assert x.shape == (28, 28, 1)
    assert x.dtype == np.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_reference_is_light_object_on_black(reference):
    assert_model_input(reference)
    # background → exactly 0 at the corners, object bright
    assert reference[0, 0, 0] == 0.0 and reference[-1, -1, 0] == 0.0
    assert reference.max() == 1.0
    # the object fills the longest edge (trim + resize longest edge to 28)
    rows = np.flatnonzero(reference[..., 0].max(axis=1) > 0.2)
    cols = np.flatnonzero(reference[..., 0].max(axis=0) > 0.2)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= 27


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0.0),
        ("BMP", {}, 0.0),
        ("GIF", {}, 0.01),
        ("WEBP", {"lossless": True}, 0.0),
        ("WEBP", {"quality": 80}, 0.03),
        ("JPEG", {"quality": 90}, 0.03),
    ],
)
def test_each_format_gives_the_same_tensor(reference, fmt, params, tolerance):
    x = decode_image(encode(draw_shape(), fmt, **params))
    assert_model_input(x)
    assert mean_abs_diff(x, reference) <= tolerance


def test_palette_png(reference):
    img = draw_shape().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert img.mode == "P"
    x = decode_image(encode(img, "PNG"))
    assert_model_input(x)
    assert mean_abs_diff(x, reference) <= 0.01


def test_16_bit_grayscale_png(reference):
    pixels = np.asarray(draw_shape().convert("L")).astype(np.uint16) * 257
    img = Image.fromarray(pixels)
    assert img.mode == "I;16"
    x = decode_image(encode(img, "PNG"))
    assert mean_abs_diff(x, decode_image(encode(draw_shape().convert("L"), "PNG"))) == 0.0
    assert mean_abs_diff(x, reference) <= 0.01
    small = np.arange(784, dtype=np.uint16).reshape(28, 28) % 256
    x = decode_image(encode(Image.fromarray(small * 257), "PNG"))  # 28x28: passthrough
    np.testing.assert_array_equal(x[..., 0], small.astype(np.float32) / 255)


def test_cmyk_jpeg_and_1_bit_bmp(reference):
    x = decode_image(encode(draw_shape().convert("CMYK"), "JPEG", quality=95))
    assert mean_abs_diff(x, reference) <= 0.03
    bilevel = draw_shape().convert("1", dither=Image.Dither.NONE)
    x = decode_image(encode(bilevel, "BMP"))
    assert_model_input(x)
    assert mean_abs_diff(x, reference) <= 0.05


def test_rgba_alpha_is_flattened_onto_white(reference):
    # Transparent background, opaque dark object: same as the object on a white page.
    img = draw_shape(fg=(25, 25, 25, 255), bg=(0, 0, 0, 0), mode="RGBA")
    x = decode_image(encode(img, "PNG"))
    assert_model_input(x)
    assert mean_abs_diff(x, reference) <= 0.01
    # Without flattening, the transparent pixels (black RGB) would be taken as a dark background
    # and the object would vanish.
    assert x.max() == 1.0


def test_exif_orientation_is_applied(reference):
    upright = draw_shape()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the camera stored it sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    x = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert mean_abs_diff(x, reference) <= 0.03
    # the same bytes without the tag decode to a visibly different (rotated) tensor
    sideways = decode_image(encode(stored, "JPEG", quality=95))
    assert mean_abs_diff(sideways, reference) > 0.1


def test_negation_only_for_light_backgrounds(reference):
    light_on_dark = draw_shape(fg=(230, 230, 230), bg=(5, 5, 5))
    x = decode_image(encode(light_on_dark, "PNG"))
    assert x[0, 0, 0] == 0.0
    assert mean_abs_diff(x, reference) <= 0.02
    # Inverting the light-on-dark input would give a dark object on white: far from the reference.
    assert mean_abs_diff(1.0 - x, reference) > 0.5


def test_grey_background_maps_to_zero():
    x = decode_image(encode(draw_shape(fg=(20, 20, 20), bg=(200, 200, 200)), "PNG"))
    assert x[0, 0, 0] == 0.0 and x[-1, 0, 0] == 0.0
    assert x.max() == 1.0


def test_padding_is_trimmed(reference):
    small = draw_shape(size=(120, 90))
    padded = Image.new("RGB", (600, 500), (250, 250, 250))
    padded.paste(small, (37, 311))
    x = decode_image(encode(padded, "PNG"))
    assert mean_abs_diff(x, reference) <= 0.03


def test_blank_image_gives_zeros():
    x = decode_image(encode(Image.new("RGB", (64, 64), "white"), "PNG"))
    assert_model_input(x)
    assert not x.any()


def test_28x28_grayscale_passes_through_unchanged():
    pixels = np.random.default_rng(7).integers(0, 256, size=(28, 28), dtype=np.uint8)
    pixels[0, 0] = 255  # a light corner must not trigger negation for dataset-form input
    x = decode_image(encode(Image.fromarray(pixels, mode="L"), "PNG"))
    np.testing.assert_array_equal(x[..., 0], pixels.astype(np.float32) / 255)


def test_dataset_image_png_round_trip(dataset):
    images = dataset.x_test[:50]
    for pixels in images:
        x = decode_image(encode(Image.fromarray(pixels, mode="L"), "PNG"))
        np.testing.assert_array_equal(x[..., 0], pixels.astype(np.float32) / 255)
    batch = to_batch([array_to_input(p) for p in images])
    np.testing.assert_array_equal(batch, images[..., None].astype(np.float32) / 255)


def test_reference_images_decode():
    names = sorted(p.name for p in IMAGES.glob("*.png"))
    assert "ankle_boot.png" in names
    for name in names:
        x = decode_image((IMAGES / name).read_bytes())
        assert_model_input(x)
        assert x[0, 0, 0] == 0.0 and x.max() > 0.95


def test_reference_images_are_reproducible(tmp_path):
    from tests.support import make_images

    assert make_images.main(["--out", str(tmp_path)]) == 0
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes() == (IMAGES / path.name).read_bytes(), path.name


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a supported image (PNG, JPEG, WebP, GIF, BMP): empty body"),
        (b"hello, world", NOT_AN_IMAGE),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, NOT_AN_IMAGE),
        (b"%PDF-1.4\n", NOT_AN_IMAGE),
    ],
)
def test_bad_bytes_are_invalid_image(data, message):
    with pytest.raises(InvalidImage) as info:
        decode_image(data)
    assert str(info.value) == message
    assert isinstance(info.value, PreprocessError) and isinstance(info.value, ValueError)


def test_unsupported_format_is_invalid_image():
    with pytest.raises(InvalidImage, match=r"^not a supported image"):
        decode_image(encode(draw_shape(), "TIFF"))


def test_truncated_png_is_invalid_image():
    data = encode(draw_shape(), "PNG")
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2])
    assert str(info.value).startswith("cannot decode PNG image data: ")


def test_not_bytes_is_invalid_image():
    with pytest.raises(InvalidImage, match="expected image bytes, got str"):
        decode_image("a string")  # type: ignore[arg-type]


def png_header_only(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header declares width x height grayscale pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def gif_header_only(width: int, height: int) -> bytes:
    """A ~40-byte GIF with one frame declaring width x height pixels (data: 1 pixel)."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b";"


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel data gets decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("make", [png_header_only, gif_header_only])
def test_huge_dimensions_rejected_from_the_header(make, no_decoding):
    data = make(30000, 30000)
    assert len(data) < 200
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert str(info.value) == (
        f"image is 30000x30000 = 900000000 pixels, more than the limit of {MAX_PIXELS} pixels"
    )


def gif_with_frame(screen: int, frame: int) -> bytes:
    """A GIF with a small logical screen whose first frame declares a much larger extent."""
    head = b"GIF89a" + struct.pack("<HHBBB", screen, screen, 0x80, 0, 0) + b"\x00" * 3 + b"\xff" * 3
    desc = b"," + struct.pack("<HHHHB", 0, 0, frame, frame, 0) + b"\x02\x02\x44\x01\x00"
    return head + desc + b";"


def test_gif_frame_larger_than_its_screen(no_decoding):
    # 12000x12000 passes Pillow's own bomb check (a warning only) but not ours
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLarge) as info:
        decode_image(gif_with_frame(10, 12000))
    assert str(info.value).startswith("image is 12000x12000 = 144000000 pixels")
    # 20000x20000 is refused by Pillow while parsing the frame header: still ImageTooLarge
    with pytest.raises(ImageTooLarge, match=r"^image rejected as a decompression bomb: "):
        decode_image(gif_with_frame(10, 20000))


def test_pixel_limit_is_a_parameter():
    data = encode(draw_shape(size=(100, 80)), "PNG")
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, max_pixels=7999)
    assert str(info.value) == "image is 100x80 = 8000 pixels, more than the limit of 7999 pixels"
    assert_model_input(decode_image(data, max_pixels=8000))


# --- arrays and batches -------------------------------------------------------------------


def test_array_to_input_scales_values():
    arr = np.arange(784).reshape(28, 28) % 256
    x = array_to_input(arr)
    assert_model_input(x)
    np.testing.assert_array_equal(x[..., 0], arr.astype(np.float32) / 255)
    np.testing.assert_array_equal(array_to_input(arr.tolist()), x)
    np.testing.assert_array_equal(array_to_input(arr[..., None].astype(np.float64)), x)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((28, 27)), "pixel array must have shape [28, 28], got [28, 27]"),
        (np.zeros((1, 28, 28)), "pixel array must have shape [28, 28], got [1, 28, 28]"),
        (np.full((28, 28), 256), "pixel values must be within 0-255, got 256..256"),
        (np.full((28, 28), -1.5), "pixel values must be within 0-255, got -1.5..-1.5"),
        (np.full((28, 28), np.nan), "pixel array contains NaN or infinite values"),
        (
            [[0] * 28] * 27 + [[0] * 27],
            "pixel array must be a rectangular 28x28 grid of numbers 0-255",
        ),
        ([["a"] * 28] * 28, "pixel array must hold numbers 0-255, got 'U' values"),
        (np.zeros((28, 28), dtype=bool), "pixel array must hold numbers 0-255, got 'b' values"),
    ],
)
def test_bad_arrays_are_invalid_image(value, message):
    with pytest.raises(InvalidImage) as info:
        array_to_input(value)
    assert str(info.value) == message


def test_to_batch_stacks_in_order():
    items = [array_to_input(np.full((28, 28), v)) for v in (0, 51, 255)]
    batch = to_batch(items)
    assert batch.shape == (3, 28, 28, 1) and batch.dtype == np.float32
    assert batch.flags.c_contiguous
    assert [batch[i].max() for i in range(3)] == [0.0, np.float32(51) / 255, 1.0]


def test_to_batch_of_one_float32_input_is_a_view_and_anything_else_a_float32_copy():
    item = array_to_input(np.full((28, 28), 51))
    batch = to_batch([item])
    assert batch.shape == (1, 28, 28, 1) and batch.dtype == np.float32
    assert batch.flags.c_contiguous and np.shares_memory(batch, item)
    np.testing.assert_array_equal(batch[0], item)
    # float64, a non-contiguous float32 array and nested lists are converted into a new batch
    others = [
        item.astype(np.float64),
        np.asfortranarray(np.full((28, 28, 1), 0.2, np.float32)),
        np.full((28, 28, 1), 0.2).tolist(),
    ]
    for other in others:
        copied = to_batch([other])
        assert copied.shape == (1, 28, 28, 1) and copied.dtype == np.float32
        assert copied.flags.c_contiguous and not np.shares_memory(copied, other)
        np.testing.assert_array_equal(copied[0], np.asarray(other, np.float32))


def test_to_batch_without_range_check_still_checks_shapes():
    out_of_range = np.full((28, 28, 1), 2.0, np.float32)
    with pytest.raises(InvalidImage, match=r"batch values must be within \[0, 1\]"):
        to_batch([out_of_range])
    batch = to_batch([out_of_range], check_range=False)
    assert batch.shape == (1, 28, 28, 1) and batch.max() == 2.0
    with pytest.raises(InvalidImage, match=r"item 0 has shape \(28, 28\)"):
        to_batch([np.zeros((28, 28), np.float32)], check_range=False)


def test_to_batch_rejects_empty_and_wrong_shapes():
    with pytest.raises(InvalidImage, match="no images given"):
        to_batch([])
    with pytest.raises(InvalidImage, match=r"item 1 has shape \(28, 28\)"):
        to_batch([np.zeros((28, 28, 1), np.float32), np.zeros((28, 28), np.float32)])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_mutated_files_only_raise_preprocess_errors():
    """Bit flips, truncations and insertions in every format: a valid tensor or a PreprocessError."""
    rng = np.random.default_rng(0)
    shape = draw_shape(size=(60, 40))
    seeds = [
        encode(shape, "PNG"),
        encode(shape, "JPEG", quality=80),
        encode(shape, "GIF"),
        encode(shape, "BMP"),
        encode(shape, "WEBP", quality=80),
        encode(shape.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
    ]
    outcomes = {"ok": 0, "error": 0}
    for i in range(900):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(len(data)))
            op = int(rng.integers(3))
            if op == 0:
                data[pos] = int(rng.integers(256))
            elif op == 1:
                data = data[: max(pos, 1)]
            else:
                data[pos:pos] = rng.integers(
                    0, 256, int(rng.integers(1, 20)), dtype=np.uint8
                ).tobytes()
        try:
            x = decode_image(bytes(data))
        except PreprocessError:
            outcomes["error"] += 1
        else:
            assert_model_input(x)
            outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0


# Transparent cutouts: intensity = coverage x the garment's darkness against white (see the
# serving.preprocess docstring). Each `coverage_png` reference is the rule's expected intensity
# as a light-on-black L image, which goes through the same trim/resize/sharpen/centre steps,
# so tensors are compared exactly.


def test_opaque_alpha_is_exactly_the_image_without_alpha():
    rgb = draw_shape(fg=(90, 40, 30), bg=(240, 236, 230))
    rgba = rgb.convert("RGBA")
    assert np.asarray(rgba)[..., 3].min() == 255
    np.testing.assert_array_equal(
        decode_image(encode(rgba, "PNG")), decode_image(encode(rgb, "PNG"))
    )
    gray = rgb.convert("L")
    np.testing.assert_array_equal(
        decode_image(encode(gray.convert("LA"), "PNG")), decode_image(encode(gray, "PNG"))
    )


@pytest.mark.parametrize("stored", [(0, 0, 0), (255, 255, 255), (255, 0, 255)])
def test_fully_transparent_pixels_are_background_whatever_they_store(stored):
    alpha = cutouts.coverage()
    expected = decode_image(cutouts.coverage_png(alpha.astype(np.float64)))
    x = decode_image(cutouts.png(cutouts.cutout(alpha, (0, 0, 0), transparent_rgb=stored)))
    np.testing.assert_array_equal(x, expected)
    assert x[0, 0, 0] == 0.0 and x[-1, -1, 0] == 0.0


def test_fully_transparent_image_gives_zeros():
    x = decode_image(cutouts.png(Image.new("RGBA", (50, 40), (120, 30, 200, 0))))
    assert_model_input(x)
    assert not x.any()


@pytest.mark.parametrize("grey", [0, 51, 102, 153, 204])
def test_partly_transparent_pixels_are_coverage_times_darkness(grey):
    # soft edges and the half-covered thin part: alpha x (255 - grey), rounded once; a second
    # multiplication by the coverage (compositing an already-flattened edge) would not match.
    alpha = cutouts.coverage()
    assert ((alpha > 0) & (alpha < 255)).sum() > 300  # many partly transparent pixels
    expected = decode_image(cutouts.coverage_png(alpha * ((255 - grey) / 255)))
    x = decode_image(cutouts.png(cutouts.cutout(alpha, (grey, grey, grey))))
    np.testing.assert_array_equal(x, expected)
    assert x.max() == 1.0  # stretched to the full range whatever the garment's darkness


def test_coloured_garment_uses_its_luma():
    alpha = cutouts.coverage()
    colour = (200, 90, 40)  # luma 0.299 R + 0.587 G + 0.114 B = 117.59
    luma = float(np.dot(colour, [0.299, 0.587, 0.114]))
    expected = decode_image(cutouts.coverage_png(alpha * ((255 - luma) / 255)))
    x = decode_image(cutouts.png(cutouts.cutout(alpha, colour)))
    assert mean_abs_diff(x, expected) <= 1 / 255  # float32 vs float64 rounding at most


@pytest.mark.parametrize("blur", [0, 1.5])
def test_light_garment_is_stretched_like_a_dark_one(blur):
    # Same shape and coverage, darkness 235 vs 51: only the contrast differs, and the stretch
    # removes most of it, as the dataset's did. What stays is what the dataset's own steps
    # leave: the dark garment's sharpening overshoot is clipped at 255 and the light one's is
    # not (so the light interior sits lower under its peak), and with soft edges the light
    # garment's faintest edge pixels fall under the 5% trim tolerance.
    alpha = cutouts.coverage(blur=blur)
    dark = decode_image(cutouts.png(cutouts.cutout(alpha, (20, 20, 20))))
    light = decode_image(cutouts.png(cutouts.cutout(alpha, (204, 204, 204))))
    assert dark.max() == light.max() == 1.0
    # without the stretch the light one would be 51/235 = 0.22 of the dark one
    assert 0.75 <= float(light.mean()) / float(dark.mean()) <= 1.0


def test_white_garment_is_shown_by_its_coverage():
    # darkness 5 < the 5% tolerance: invisible on white, so the coverage alone is the garment
    alpha = cutouts.coverage()
    expected = decode_image(cutouts.coverage_png(alpha.astype(np.float64)))
    x = decode_image(cutouts.png(cutouts.cutout(alpha, (250, 250, 250))))
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("grey", [51, 153])
def test_colour_matted_against_white_is_not_counted_twice(grey):
    # A masked photo: the soft edges' colour already holds the page. Its darkness is coverage
    # x darkness, so it decodes as the same garment stored un-associated (rounding aside).
    alpha = cutouts.coverage()
    garment = cutouts.cutout(alpha, (grey, grey, grey))
    x = decode_image(cutouts.png(cutouts.matted(alpha, 255 - grey)))
    close = mean_abs_diff(x, decode_image(cutouts.png(garment)))
    assert close <= 1 / 255
    twice = decode_image(cutouts.coverage_png(alpha * (alpha / 255) * ((255 - grey) / 255)))
    assert mean_abs_diff(x, twice) > max(3 / 255, 5 * close)  # what alpha x darkness would give


def test_textured_garment_matted_against_white_keeps_its_texture():
    alpha = cutouts.coverage()
    darkness = cutouts.texture(alpha.shape, 120, 230)
    x = decode_image(cutouts.png(cutouts.matted(alpha, darkness)))
    expected = decode_image(cutouts.coverage_png(alpha * (darkness / 255)))
    assert mean_abs_diff(x, expected) <= 1 / 255


def test_textured_garment_in_its_own_colour_is_not_taken_for_matted():
    alpha = cutouts.coverage()
    darkness = cutouts.texture(alpha.shape, 40, 230)
    grey = np.rint(255 - darkness).astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, alpha])
    rgba[alpha == 0, :3] = 0
    x = decode_image(cutouts.png(Image.fromarray(rgba, "RGBA")))
    expected = decode_image(cutouts.coverage_png(alpha * ((255 - grey.astype(np.float64)) / 255)))
    assert mean_abs_diff(x, expected) <= 1 / 255


def test_matte_evidence_needs_enough_partly_transparent_pixels_that_vary():
    from serving.preprocess import matted_on_white

    alpha = cutouts.coverage().astype(np.int32)
    fading = alpha * 200 // 255  # darkness proportional to alpha: matted
    assert matted_on_white(alpha, fading)
    assert not matted_on_white(alpha, np.full_like(alpha, 200))  # one colour: no evidence
    assert not matted_on_white(alpha, 255 - fading)  # anti-correlated: a garment's own colour
    hard = np.where(alpha > 127, 255, 0)
    hard[0, :10] = 100  # only 10 partly transparent pixels
    assert not matted_on_white(hard, hard * 200 // 255)
    large = np.kron(alpha, np.ones((20, 20), np.int32))  # 1440 x 1920: sampled, same verdicts
    assert matted_on_white(large, large * 200 // 255)
    assert not matted_on_white(large, 255 - large * 200 // 255)


def test_garment_cropped_to_the_canvas_is_still_light_on_black():
    # Tight crop: the garment covers most of the border ring, which is where the background
    # is read from; the cutout's own transparency must still be the background.
    alpha = np.full(cutouts.SIZE[::-1], 255, np.uint8)  # a coat filling its canvas,
    alpha[:20, 40:56] = 0  # with a neckline,
    alpha[50:, 46:50] = 128  # a half-transparent slit
    alpha[:, :3] = alpha[:, -3:] = 200  # and soft sides
    ring = np.concatenate((alpha[0], alpha[-1], alpha[1:-1, 0], alpha[1:-1, -1]))
    assert np.median(ring) > 127.5  # read as the background, the ring would be light
    x = decode_image(cutouts.png(cutouts.cutout(alpha, (30, 30, 30))))
    with_margin = np.zeros((alpha.shape[0] + 20, alpha.shape[1] + 20), np.uint8)
    with_margin[10:-10, 10:-10] = alpha
    np.testing.assert_array_equal(
        x, decode_image(cutouts.png(cutouts.cutout(with_margin, (30, 30, 30))))
    )
    assert x[0, 0, 0] == 0.0 and x.max() == 1.0


def test_la_png_is_the_same_cutout_as_rgba():
    alpha = cutouts.coverage()
    la = Image.merge("LA", (Image.new("L", alpha.shape[::-1], 51), Image.fromarray(alpha)))
    np.testing.assert_array_equal(
        decode_image(encode(la, "PNG")),
        decode_image(cutouts.png(cutouts.cutout(alpha, (51, 51, 51)))),
    )


def test_palette_png_with_trns_is_the_same_cutout_as_rgba():
    # index 0: transparent (stores white); 1: opaque black; 2: black at alpha 102 (tRNS holds
    # one alpha per palette entry)
    alpha = np.zeros(cutouts.SIZE[::-1], np.uint8)
    alpha[10:60, 20:70] = 255
    alpha[10:60, 70:80] = 102  # a partly transparent strip along one side
    indices = np.select([alpha == 255, alpha == 102], [1, 2], 0).astype(np.uint8)
    pal = Image.fromarray(indices, "P")
    pal.putpalette([255, 255, 255, 0, 0, 0, 0, 0, 0])
    data = encode(pal, "PNG", transparency=bytes([0, 255, 102]))
    assert Image.open(io.BytesIO(data)).info["transparency"] == b"\x00\xff\x66"
    np.testing.assert_array_equal(
        decode_image(data), decode_image(cutouts.png(cutouts.cutout(alpha, (0, 0, 0))))
    )
    expected = decode_image(cutouts.coverage_png(alpha.astype(np.float64)))
    np.testing.assert_array_equal(decode_image(data), expected)


def test_grayscale_png_with_trns_colour_is_transparent():
    # An L PNG whose tRNS names one grey level: those pixels are transparent, not grey 77.
    pixels = np.full(cutouts.SIZE[::-1], 77, np.uint8)
    pixels[12:60, 16:80] = 0
    x = decode_image(encode(Image.fromarray(pixels, "L"), "PNG", transparency=77))
    expected = decode_image(cutouts.coverage_png(np.where(pixels == 0, 255.0, 0.0)))
    np.testing.assert_array_equal(x, expected)
    # without tRNS, 77 is a dark background and the black block is darker still
    assert not np.array_equal(decode_image(encode(Image.fromarray(pixels, "L"), "PNG")), x)


def test_light_photo_without_alpha_is_stretched_too():
    # a light-grey garment on white (low contrast) fills the range like the dataset's images
    x = decode_image(encode(draw_shape(fg=(200, 200, 200), bg=(250, 250, 250)), "PNG"))
    assert x[0, 0, 0] == 0.0 and x.max() == 1.0
    # its interior comes out at ~0.8 (the sharpening overshoot at its outline is the peak),
    # not at the 50/255 = 0.2 of its contrast against the page
    assert float(np.median(x[x > 0.1])) > 0.75
    reference = decode_image(encode(draw_shape(), "PNG"))
    assert mean_abs_diff(x, reference) <= 0.04
