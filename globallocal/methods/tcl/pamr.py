"""Pixel-adaptive mask refinement (PAMR, SPEC-tcl section 6), vectorised over its 48 neighbours.

Each pixel's new mask value is a weighted mean of its neighbours at the
offsets {-d, 0, d}^2 minus the centre for d in (1, 2, 4, 8, 12, 24) (a
neighbour outside the image takes the nearest border pixel); the weights
(the affinity) come from colour differences in a guide image, scaled by the
local colour spread. The affinity depends on the image only, so it is
computed once per image and shared by every phrase.

One refinement step is a sparse matrix (48 weights per row) times the masks,
all masks and windows at once: about three times faster on the CPU than
gathering the 48 shifted copies.
"""

from __future__ import annotations

import warnings

import torch

PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)
PAMR_ITERATIONS = 10


def pamr_offsets(dilations: tuple[int, ...] = PAMR_DILATIONS) -> list[tuple[int, int]]:
    """The (dy, dx) neighbour offsets: for each dilation, the 8 of {-d, 0, d}^2 other than (0, 0)."""
    return [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]


def neighbour_index(
    height: int, width: int, offsets: list[tuple[int, int]], device: torch.device | None = None
) -> torch.Tensor:
    """(K, H * W): the flat index of each pixel's neighbour at each offset, clamped to the image (replicate)."""
    rows = torch.arange(height, device=device)[:, None]
    columns = torch.arange(width, device=device)[None]
    flat = [(rows + dy).clamp(0, height - 1) * width + (columns + dx).clamp(0, width - 1) for dy, dx in offsets]
    return torch.stack(flat).flatten(1)


def pamr_affinity(guide: torch.Tensor, dilations: tuple[int, ...] = PAMR_DILATIONS) -> torch.Tensor:
    """The neighbour weights (B, 48, H, W) of a guide image (B, 3, H, W); they sum to 1 over the 48.

    sigma: per channel, the sample standard deviation of the 9 values of
    {-d, 0, d}^2 (centre included) over all dilations; the affinity of
    neighbour k is softmax_k of -mean_c |J_c(p) - J_c(p + o_k)| / (1e-8 + 0.1 sigma_c(p)).
    """
    batch, channels, height, width = guide.shape
    index = neighbour_index(height, width, pamr_offsets(dilations), guide.device)
    flat = guide.float().flatten(2)  # (B, 3, HW)
    neighbours = flat[..., index]  # (B, 3, 48, HW)
    centre = flat[:, :, None]
    samples = torch.cat([neighbours, centre.expand(-1, -1, len(dilations), -1)], dim=2)
    sigma = samples.std(dim=2, correction=1, keepdim=True)
    distance = (neighbours - centre).abs() / (1e-8 + 0.1 * sigma)
    return torch.softmax(-distance.mean(dim=1), dim=1).view(batch, -1, height, width)


def pamr_refine(
    masks: torch.Tensor,
    affinity: torch.Tensor,
    iterations: int = PAMR_ITERATIONS,
    dilations: tuple[int, ...] = PAMR_DILATIONS,
) -> torch.Tensor:
    """Masks (B, N, H, W) refined ``iterations`` times with :func:`pamr_affinity`'s weights (B, 48, H, W).

    The B images' steps are one block-diagonal sparse matrix of B H W rows,
    each holding a pixel's 48 weights at its neighbours' columns.
    """
    batch, count, height, width = masks.shape
    pixels = height * width
    index = neighbour_index(height, width, pamr_offsets(dilations), masks.device)  # (K, HW)
    offsets = index.shape[0]
    image_start = torch.arange(batch, device=masks.device)[:, None, None] * pixels
    columns = (index.T[None] + image_start).flatten()  # (B, HW, K) row-major
    values = affinity.float().flatten(2).transpose(1, 2).flatten()
    rows = torch.arange(0, batch * pixels * offsets + 1, offsets, device=masks.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support is in beta", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Sparse invariant checks", category=UserWarning)
        step = torch.sparse_csr_tensor(rows, columns, values, size=(batch * pixels, batch * pixels))
    x = masks.float().permute(0, 2, 3, 1).reshape(batch * pixels, count)
    for _ in range(iterations):
        x = step @ x
    return x.view(batch, height, width, count).permute(0, 3, 1, 2)
