"""Comparison metrics: registration to the ground truth, Fourier ring correlation and image quality.

Pure NumPy, SciPy and scikit-image; no knowledge of studies or files.
"""

from fly64.metrics.frc import fourier_ring_correlation, frc_resolution
from fly64.metrics.quality import compare_images, json_ready
from fly64.metrics.registration import (
    CropBox,
    PhaseRamp,
    align_to_reference,
    apply_shift,
    bounding_box,
    fit_phase_ramp,
    register_shift,
    remove_phase_offset_and_ramp,
    scanned_region_mask,
)

__all__ = [
    "CropBox",
    "PhaseRamp",
    "align_to_reference",
    "apply_shift",
    "bounding_box",
    "compare_images",
    "fit_phase_ramp",
    "fourier_ring_correlation",
    "frc_resolution",
    "json_ready",
    "register_shift",
    "remove_phase_offset_and_ramp",
    "scanned_region_mask",
]
