"""Awkward image files, made in the tests: what real Pokémon sites serve."""

from __future__ import annotations

import io

from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgba_sprite(size: tuple[int, int] = (40, 40), colour=(200, 30, 30)) -> Image.Image:
    """A red disc on a fully transparent background whose hidden RGB is black."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    w, h = size
    for x in range(w):
        for y in range(h):
            if (x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2:
                image.putpixel((x, y), (*colour, 255))
    return image


def palette_with_transparency() -> bytes:
    """A P-mode PNG whose index 0 is transparent and black."""
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 30, 200, 30] + [0, 0, 0] * 254)
    for x in range(8, 24):
        for y in range(8, 24):
            image.putpixel((x, y), 1)
    return encode(image, "PNG", transparency=0)


def la_image() -> bytes:
    image = Image.new("LA", (32, 32), (0, 0))
    for x in range(10, 22):
        for y in range(10, 22):
            image.putpixel((x, y), (128, 255))
    return encode(image, "PNG")


def animated_gif() -> bytes:
    """Two frames: the first blue, the second red."""
    frames = [Image.new("RGB", (30, 30), (0, 0, 255)), Image.new("RGB", (30, 30), (255, 0, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def jpeg() -> bytes:
    return encode(Image.new("RGB", (48, 24), (20, 160, 220)), "JPEG", quality=95)


def webp_rgba() -> bytes:
    return encode(rgba_sprite((36, 36), (30, 90, 230)), "WEBP", lossless=True)


def png(size: tuple[int, int] = (40, 40), colour=(200, 30, 30)) -> bytes:
    return encode(rgba_sprite(size, colour), "PNG")
