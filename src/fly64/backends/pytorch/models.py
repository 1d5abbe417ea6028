"""PyTorch modules of the PINN and the supervised baseline, built from a `ModelSpec`.

- `ObjectNetwork`: the encoder and the two decoders (layout in `fly64.learning.spec`),
  mapping normalised amplitudes (B, C, N, N) to patch amplitude and phase.
- `DiffractionToObject`: the network plus, for the PINN at gridsize > 1, the overlap
  constraint. This is the bundle's `diffraction_to_obj` model.
- `PinnAutoencoder`: `DiffractionToObject` followed by the probe and the far-field forward
  model with a trained intensity scale; its output is predicted photon counts.
- `BaselineAutoencoder`: `DiffractionToObject` alone, trained against ground-truth patches.

The two autoencoders are the bundle's `autoencoder` model.
"""

import math

import torch
from torch import nn

from fly64.backends.pytorch.physics import far_field_intensity, overlap_constraint
from fly64.learning.spec import ModelSpec


def _conv_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]


def _decoder(spec: ModelSpec) -> nn.Sequential:
    layers: list[nn.Module] = []
    previous = spec.encoder_filters[-1]
    for filters in spec.decoder_filters:
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers += _conv_relu(previous, filters) + _conv_relu(filters, filters)
        previous = filters
    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers.append(nn.Conv2d(previous, spec.channels, kernel_size=3, padding=1))
    return nn.Sequential(*layers)


class ObjectNetwork(nn.Module):
    """Encoder and amplitude and phase decoders.

    Input: float32 (B, C, N, N) normalised amplitudes. Output: float32 amplitude in (0, 1)
    and phase in (-pi, pi), each (B, C, N, N).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = spec.channels
        for filters in spec.encoder_filters:
            layers += _conv_relu(previous, filters) + _conv_relu(filters, filters)
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            previous = filters
        self.encoder = nn.Sequential(*layers)
        self.amplitude_decoder = _decoder(spec)
        self.phase_decoder = _decoder(spec)

    def forward(self, amplitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(amplitude)
        object_amplitude = torch.sigmoid(self.amplitude_decoder(features))
        object_phase = math.pi * torch.tanh(self.phase_decoder(features))
        return object_amplitude, object_phase


class DiffractionToObject(nn.Module):
    """Map normalised amplitudes and member offsets to object patches.

    `forward(amplitude (B, C, N, N), offsets_px (B, C, 2), canvas_pad_px=None)` returns the
    real and imaginary parts (B, C, N, N) of the patches. The overlap constraint applies
    to the PINN at gridsize > 1 only; `canvas_pad_px` None uses the spec's margin.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.network = ObjectNetwork(spec)
        self.applies_overlap_constraint = spec.kind == "pinn" and spec.gridsize > 1

    def forward(
        self, amplitude: torch.Tensor, offsets_px: torch.Tensor, canvas_pad_px: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        object_amplitude, object_phase = self.network(amplitude)
        real = object_amplitude * torch.cos(object_phase)
        imag = object_amplitude * torch.sin(object_phase)
        if self.applies_overlap_constraint:
            pad = self.spec.canvas_pad_px if canvas_pad_px is None else canvas_pad_px
            real, imag = overlap_constraint(real, imag, offsets_px, pad)
        return real, imag


class PinnAutoencoder(nn.Module):
    """The PINN: patches from `DiffractionToObject`, times the probe, to predicted counts.

    Predicted counts are `intensity_scale * |fftshift(fft2(patch * probe, norm="ortho"))|²`
    with `intensity_scale = exp(log_intensity_scale)`, a trained parameter. The probe is a
    fixed buffer that is left out of the state dict (the bundle stores it as `probe.npy`).
    """

    def __init__(self, spec: ModelSpec, probe: torch.Tensor, intensity_scale: float) -> None:
        super().__init__()
        if not (math.isfinite(intensity_scale) and intensity_scale > 0):
            raise ValueError(f"intensity_scale = {intensity_scale}; expected a finite positive number")
        self.diffraction_to_obj = DiffractionToObject(spec)
        self.register_buffer("probe", probe.to(torch.complex64), persistent=False)
        self.log_intensity_scale = nn.Parameter(torch.tensor(math.log(intensity_scale), dtype=torch.float32))

    @property
    def intensity_scale(self) -> float:
        return float(torch.exp(self.log_intensity_scale.detach()))

    def forward(self, amplitude: torch.Tensor, offsets_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return predicted counts (B, C, N, N) and the patches' real and imaginary parts."""
        real, imag = self.diffraction_to_obj(amplitude, offsets_px)
        intensity = far_field_intensity(real, imag, self.probe)
        return torch.exp(self.log_intensity_scale) * intensity, real, imag


class BaselineAutoencoder(nn.Module):
    """The supervised baseline: `DiffractionToObject` trained on amplitude and phase targets."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.diffraction_to_obj = DiffractionToObject(spec)

    def forward(self, amplitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the predicted patch amplitude and phase, (B, C, N, N) each."""
        return self.diffraction_to_obj.network(amplitude)
