"""Inference on held-out data: stitching predicted patches into objects, and the worker process.

`stitching` is framework-neutral NumPy. `worker` (`python -m fly64.inference.worker`)
loads bundles through `fly64.backends`, which imports a deep-learning framework, so
import it only in the worker process.
"""

from fly64.inference.stitching import (
    DEFAULT_CENTRAL_FRACTION,
    DEFAULT_FILL_VALUE,
    DEFAULT_MIN_WEIGHT,
    PatchStitcher,
    StitchedObject,
    central_window,
    stitch_patches_windowed,
)

__all__ = [
    "DEFAULT_CENTRAL_FRACTION",
    "DEFAULT_FILL_VALUE",
    "DEFAULT_MIN_WEIGHT",
    "PatchStitcher",
    "StitchedObject",
    "central_window",
    "stitch_patches_windowed",
]
