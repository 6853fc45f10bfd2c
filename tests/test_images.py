"""Image normalisation on the awkward files that real Pokémon sites serve."""

from __future__ import annotations

import pytest
from PIL import Image

from stages.data.images import BadImageError, decode_image, flatten, image_extension, to_square
from tests import imagemaker as make


def corner(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((0, 0))


def test_rgba_transparency_becomes_the_background_not_black():
    image = to_square(decode_image(make.png()), 32, "#FFFFFF")
    assert image.mode == "RGB" and image.size == (32, 32)
    assert corner(image) == (255, 255, 255)
    assert image.getpixel((16, 16)) == (200, 30, 30)


def test_background_colour_is_used():
    image = to_square(decode_image(make.png()), 32, "#00FF00")
    assert corner(image) == (0, 255, 0)


def test_palette_with_transparent_index_is_composited():
    source = decode_image(make.palette_with_transparency())
    assert source.mode == "P" and "transparency" in source.info
    image = to_square(source, 32, "white")
    assert corner(image) == (255, 255, 255)  # index 0 is black but transparent
    assert image.getpixel((16, 16)) == (30, 200, 30)


def test_la_image_is_composited():
    image = to_square(decode_image(make.la_image()), 32, "white")
    assert corner(image) == (255, 255, 255)
    assert image.getpixel((16, 16)) == (128, 128, 128)


def test_animated_gif_takes_the_first_frame():
    source = decode_image(make.animated_gif())
    assert getattr(source, "n_frames", 1) == 2
    r, _, b = to_square(source, 16, "white").getpixel((8, 8))
    assert b > 200 and r < 50  # blue, the first frame; the second is red


def test_format_is_read_from_bytes_not_extension(tmp_path):
    misnamed = tmp_path / "0001.png"
    misnamed.write_bytes(make.jpeg())
    image = decode_image(misnamed.read_bytes())
    assert image.format == "JPEG" and image_extension(image) == ".jpg"
    webp = tmp_path / "0002.PNG"
    webp.write_bytes(make.webp_rgba())
    image = decode_image(webp.read_bytes())
    assert image.format == "WEBP" and image_extension(image) == ".webp"
    assert corner(to_square(image, 32, "white")) == (255, 255, 255)


def test_non_square_is_padded_not_stretched():
    source = decode_image(make.jpeg())  # 48 x 24, one solid colour
    image = to_square(source, 48, "white")
    assert image.size == (48, 48)
    assert corner(image) == (255, 255, 255)  # padding above
    assert image.getpixel((0, 47)) == (255, 255, 255)  # and below
    r, g, b = image.getpixel((24, 24))
    assert abs(r - 20) < 8 and abs(g - 160) < 8 and abs(b - 220) < 8
    # the content keeps its 2:1 aspect: 48 wide, 24 high, centred
    column = [image.getpixel((24, y)) for y in range(48)]
    content = [y for y, p in enumerate(column) if p != (255, 255, 255)]
    assert 22 <= len(content) <= 26 and 10 <= content[0] <= 14


def test_sixteen_bit_greyscale_is_read():
    source = Image.new("I;16", (20, 20), 65535)
    image = flatten(decode_image(make.encode(source, "PNG")))
    assert image.mode == "RGB" and image.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", make.png()[:60], b"<html>404 page</html>"],
    ids=["empty", "text", "truncated-png", "html"],
)
def test_broken_bytes_raise_a_clear_error(data):
    with pytest.raises(BadImageError, match="not a decodable image"):
        decode_image(data)
