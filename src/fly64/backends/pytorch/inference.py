"""Batched inference of a `DiffractionToObject` network on NumPy arrays."""

import numpy as np
import torch

from fly64.backends.pytorch.models import DiffractionToObject
from fly64.backends.pytorch.physics import required_canvas_pad_px


@torch.no_grad()
def predict_patches(network: DiffractionToObject, amplitude: np.ndarray, offsets_px: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Return complex64 (B, C, N, N) patches for normalised float32 amplitudes (B, C, N, N).

    The network runs in eval mode on its current device, in batches of `batch_size` groups.
    For the overlap constraint the canvas margin grows beyond the trained one when these
    offsets need it, which leaves the result unchanged and keeps every patch on the canvas.
    """
    network.eval()
    device = next(network.parameters()).device
    spec = network.spec
    outputs = []
    for start in range(0, amplitude.shape[0], batch_size):
        amplitude_batch = torch.from_numpy(np.ascontiguousarray(amplitude[start : start + batch_size], dtype=np.float32)).to(device)
        offsets_batch = torch.from_numpy(np.ascontiguousarray(offsets_px[start : start + batch_size], dtype=np.float32)).to(device)
        pad = max(spec.canvas_pad_px, required_canvas_pad_px(offsets_batch))
        real, imag = network(amplitude_batch, offsets_batch, canvas_pad_px=pad)
        outputs.append(torch.complex(real, imag).to(torch.complex64).cpu().numpy())
    if not outputs:
        return np.zeros((0, spec.channels, spec.patch_size, spec.patch_size), dtype=np.complex64)
    return np.concatenate(outputs, axis=0)
