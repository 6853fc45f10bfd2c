"""Image normalisation: any file a Pokémon site serves becomes a square RGB training image."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

# Pillow reads GIF, PNG, JPEG, WebP, BMP, TIFF, ... from their bytes; these are the extensions
# we give raw files by the format that their bytes turned out to be.
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


class BadImageError(ValueError):
    """The bytes are not an image that Pillow can decode in full."""


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes whatever the file was called; the first frame of an animation.

    Raises BadImageError for bytes that are not an image or are truncated.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.seek(0)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadImageError(f"not a decodable image ({error})") from None
    return image


def read_image(path: Path) -> Image.Image:
    return decode_image(Path(path).read_bytes())


def image_extension(image: Image.Image) -> str:
    return EXTENSIONS.get(image.format or "", ".png")


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def flatten(image: Image.Image, background: str = "#FFFFFF") -> Image.Image:
    """RGB with every kind of transparency (alpha, LA, a palette's transparent index)
    composited on `background`, so transparent pixels never turn black."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit greyscale PNGs
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if not has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*ImageColor.getrgb(background)[:3], 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def to_square(image: Image.Image, size: int, background: str = "#FFFFFF") -> Image.Image:
    """A `size`×`size` RGB image: flattened on `background`, aspect kept by padding."""
    flat = flatten(image, background)
    return ImageOps.pad(
        flat, (size, size), method=Image.Resampling.LANCZOS, color=ImageColor.getrgb(background)
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
