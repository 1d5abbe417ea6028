"""Differentiable physics of the PINN in PyTorch: overlap constraint, far field, Poisson loss.

`fly64.learning.spec` states the physics and the translation convention that every
backend implements. Here bilinear interpolation, being separable, is a pair of matrix
products: a translation by (dx, dy) is `Ty @ image @ Tx.T` with "hat" matrices
`T[i, j] = max(0, 1 - |j - source(i)|)`, where `source(i)` is the input coordinate that
output pixel i samples (i - dy for rows, j - dx for columns). Input pixels outside the
image have no column in T, so they count as zero. This equals
`torch.nn.functional.grid_sample` (bilinear, zero padding, `align_corners=False`), as the
tests check, and unlike `grid_sample` its backward pass is deterministic on every device.
"""

import math

import torch

from fly64.learning.spec import OVERLAP_WEIGHT_FLOOR, POISSON_EPSILON


def hat_matrix(source_shift: torch.Tensor, out_size: int, in_size: int) -> torch.Tensor:
    """Return bilinear interpolation matrices for outputs that sample the input at `i + source_shift`.

    Args:
        source_shift: float (...,) shift in pixels; output pixel i samples input
            coordinate `i + source_shift`.
        out_size, in_size: lengths of the output and input axes.

    Returns:
        float (..., out_size, in_size) with `T[..., i, j] = max(0, 1 - |j - i - shift|)`.
    """
    device, dtype = source_shift.device, source_shift.dtype
    out_index = torch.arange(out_size, device=device, dtype=dtype)
    in_index = torch.arange(in_size, device=device, dtype=dtype)
    source = out_index[:, None] + source_shift[..., None, None]
    return torch.clamp(1.0 - torch.abs(in_index - source), min=0.0)


def translate(image: torch.Tensor, dx_px: torch.Tensor, dy_px: torch.Tensor) -> torch.Tensor:
    """Translate real images (..., H, W) by (dx, dy) pixels with bilinear interpolation and zero fill.

    `dx_px` and `dy_px` have the leading shape of `image` (one shift per image).
    """
    height, width = image.shape[-2:]
    rows = hat_matrix(-dy_px, height, height)
    columns = hat_matrix(-dx_px, width, width)
    return rows @ image @ columns.transpose(-1, -2)


def overlap_constraint(real: torch.Tensor, imag: torch.Tensor, offsets_px: torch.Tensor, canvas_pad_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average a group's patches on a shared canvas and cut them out again.

    Args:
        real, imag: float (B, C, N, N) real and imaginary parts of the patches.
        offsets_px: float (B, C, 2) members' (x, y) offsets from the group centre, in pixels.
        canvas_pad_px: canvas margin; it must exceed max |offset| for no content to fall
            off the canvas. Larger margins give the same result.

    Returns:
        (real, imag), float (B, C, N, N) each, the constrained patches.
    """
    patch_size = real.shape[-1]
    canvas_size = patch_size + 2 * canvas_pad_px
    offsets_px = offsets_px.to(real.dtype)
    offset_x, offset_y = offsets_px[..., 0], offsets_px[..., 1]

    # Canvas pixel i samples patch coordinate i - pad - offset, patch pixel i samples
    # canvas coordinate i + pad + offset.
    place_rows = hat_matrix(-(canvas_pad_px + offset_y), canvas_size, patch_size)
    place_columns = hat_matrix(-(canvas_pad_px + offset_x), canvas_size, patch_size)
    cut_rows = hat_matrix(canvas_pad_px + offset_y, patch_size, canvas_size)
    cut_columns = hat_matrix(canvas_pad_px + offset_x, patch_size, canvas_size)

    parts = torch.stack([real, imag], dim=2)  # (B, C, 2, N, N)
    placed = place_rows[:, :, None] @ parts @ place_columns[:, :, None].transpose(-1, -2)
    # A placed ones-mask is the outer product of the row sums of the two hat matrices.
    weights = place_rows.sum(-1)[..., :, None] * place_columns.sum(-1)[..., None, :]

    canvas = placed.sum(dim=1) / torch.clamp(weights.sum(dim=1), min=OVERLAP_WEIGHT_FLOOR)[:, None]
    cut = cut_rows[:, :, None] @ canvas[:, None] @ cut_columns[:, :, None].transpose(-1, -2)
    return cut[:, :, 0], cut[:, :, 1]


def required_canvas_pad_px(offsets_px: torch.Tensor) -> int:
    """Return the smallest canvas margin, ceil(max |offset|) + 1, that keeps all patches on the canvas."""
    if offsets_px.numel() == 0:
        return 0
    largest = float(offsets_px.abs().max())
    return 0 if largest == 0.0 else math.ceil(largest) + 1


def far_field_intensity(real: torch.Tensor, imag: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Return |fftshift(fft2(patch * probe, norm="ortho"))|² for patches (..., N, N).

    Args:
        real, imag: float (..., N, N) parts of the object patches.
        probe: complex (N, N) probe.

    Returns:
        float (..., N, N) far-field intensity with the zero frequency at pixel (N//2, N//2).
        With the orthonormal FFT its sum equals sum(|patch * probe|²) (Parseval).
    """
    exit_wave = torch.complex(real, imag) * probe
    far_field = torch.fft.fftshift(torch.fft.fft2(exit_wave, norm="ortho"), dim=(-2, -1))
    return far_field.real.square() + far_field.imag.square()


def poisson_nll(predicted_counts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Return the Poisson negative log-likelihood, mean of `lambda - n * log(lambda + eps)` over all pixels.

    The constant `log(n!)` is left out, so the value can be negative.
    """
    return torch.mean(predicted_counts - counts * torch.log(predicted_counts + POISSON_EPSILON))
