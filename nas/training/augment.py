"""Training-time augmentation on in-memory image batches.

`crop-flip` is the standard CIFAR recipe (He et al. 2016): pad 4 pixels with zeros, take a random
crop of the original size, flip horizontally with probability 1/2. It runs on the whole batch at
once with one gather, so it costs far less than a step of even a small network, and draws from
its own seeded generator so the shuffle order of a run does not depend on whether it augments.
"""

from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "crop_flip"]

AUGMENTATIONS = ("none", "crop-flip")


def crop_flip(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """A random `pad`-shifted crop and a random horizontal flip of every image of an NCHW batch
    (zero padding: after normalisation that is the training set's mean colour)."""
    n, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offset_y = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = offset_y + torch.arange(height)
    columns = torch.arange(width).expand(n, width)
    columns = offset_x + torch.where(flip, columns.flip(1), columns)
    batch = torch.arange(n)[:, None, None]
    # advanced indexing puts the indexed dims first: (n, height, width, channels)
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)
