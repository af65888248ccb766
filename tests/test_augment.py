"""crop-flip: every output image is a window of the zero-padded input, mirrored or not."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nas.training.augment import crop_flip


def test_a_4x4_image_shifted_and_mirrored_from_a_seeded_generator() -> None:
    image = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    out = crop_flip(image, torch.Generator().manual_seed(0), pad=1)
    # seed 0 draws offset (y, x) = (2, 0) and a flip: rows 2-5 of the padded image, its columns 3..0
    assert out[0, 0].tolist() == [[7, 6, 5, 0], [11, 10, 9, 0], [15, 14, 13, 0], [0, 0, 0, 0]]


def test_every_output_is_a_padded_window_plain_or_mirrored() -> None:
    images = torch.randn(64, 3, 8, 8)
    out = crop_flip(images, torch.Generator().manual_seed(3), pad=2)
    padded = F.pad(images, (2, 2, 2, 2))
    flips = 0
    for index in range(64):
        windows = [padded[index, :, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
        plain = any(torch.equal(out[index], window) for window in windows)
        mirrored = any(torch.equal(out[index], window.flip(2)) for window in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 16 < flips < 48  # about half are mirrored


def test_the_same_generator_state_gives_the_same_batch() -> None:
    images = torch.randn(8, 3, 8, 8)
    first = crop_flip(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, crop_flip(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, crop_flip(images, torch.Generator().manual_seed(8)))
