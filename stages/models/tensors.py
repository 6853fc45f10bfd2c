"""Images as the networks read them: a float batch, channels first, pixels in [-1, 1]."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image


def to_unit_range(images: Iterable[Image.Image]) -> torch.Tensor:
    """N x 3 x H x W float tensor of RGB images of one size, pixels scaled to [-1, 1]."""
    arrays = [np.asarray(image.convert("RGB")) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
