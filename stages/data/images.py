"""Image normalisation: any file a Pokémon site serves becomes a square RGB training image."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

# Pillow reads GIF, PNG, JPEG, WebP, BMP, TIFF, ... from their bytes; these are the extensions
# we give raw files by the format that their bytes turned out to be.
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


class BadImageError(ValueError):
    """The bytes are not an image that Pillow can decode in full."""


def limit_pixels(max_pixels: int) -> None:
    """Make Pillow refuse, in Image.open and before decoding, any image over `max_pixels`.

    Pillow only warns between its MAX_IMAGE_PIXELS and twice that; the warning becomes an
    error here. Both settings are process-wide: call this once, before any thread starts.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} megapixels"


def check_pixels(image: Image.Image, max_pixels: int) -> None:
    """Refuse an image larger than `max_pixels` from the size in its header, before a byte of it
    is decoded: a few KB of PNG can claim 30,000 x 30,000 pixels and take gigabytes to decode."""
    width, height = image.size
    if width * height > max_pixels:
        raise BadImageError(
            f"{width} x {height} pixels ({megapixels(width * height)}), over "
            f"data.max_pixels ({megapixels(max_pixels)}): refused before decoding, as a "
            "possible decompression bomb; raise data.max_pixels in params.yaml if it is genuine"
        )


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes whatever the file was called; the first frame of an animation.

    Raises BadImageError for bytes that are not an image, are truncated, or have more pixels
    than `max_pixels` (default: Pillow's Image.MAX_IMAGE_PIXELS), checked before decoding.
    """
    cap = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        if cap is not None:
            check_pixels(image, cap)
        image.seek(0)
        image.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own check fired in Image.open (see limit_pixels): say it in our words
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = megapixels(int(claimed[1])) if claimed else str(error)
        limit = min(cap or Image.MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS)
        raise BadImageError(
            f"{size}, over data.max_pixels ({megapixels(limit)}): refused before decoding, as "
            "a possible decompression bomb; raise data.max_pixels in params.yaml if it is genuine"
        ) from None
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
