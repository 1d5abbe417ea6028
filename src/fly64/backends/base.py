"""The interface every backend implements: the training job's spec and the loaded model.

A backend package `fly64.backends.<name>` provides two modules:

- `job`, with `run_job(spec: dict) -> dict`: train one model as `JobSpec` describes, write
  its bundle, and return the result figures (see `RESULT_KEYS`);
- `bundle`, with `load_bundle(source, verify=True) -> LoadedModel`: load a bundle that
  this backend wrote, where `source` is a path or a `fly64.bundle.BundleContents`.

Both are imported lazily, so a missing framework only matters when it is used.
"""

import abc
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from fly64.bundle.archive import BundleContents
from fly64.errors import BundleError, InputError
from fly64.learning.data import normalisation_factor
from fly64.learning.spec import MODEL_KINDS, PRESETS, ModelSpec

logger = logging.getLogger(__name__)

BACKENDS = ("pytorch", "tensorflow")
DEVICES = ("auto", "cpu", "gpu")
VERIFICATION_MEMBER = "verification.npz"
INFERENCE_MODEL = "diffraction_to_obj"
TRAINING_MODEL = "autoencoder"
# Maximum |difference| between a reloaded model's output and the stored verification output.
# Outputs are bounded by 1 in amplitude, and 1e-4 allows for another device or thread count.
VERIFICATION_TOLERANCE = 1e-4

RESULT_KEYS = (
    "status", "backend", "model_kind", "gridsize", "epochs_run", "final_train_loss",
    "final_val_loss", "loss_history", "train_seconds", "samples_per_second", "n_train_groups",
    "n_val_groups", "n_test_groups", "amplitude_correlation", "phase_correlation",
    "intensity_scale", "norm_factor", "device", "threads", "seed",
)


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """The `training` table of a job spec.

    Attributes:
        epochs: maximum training epochs.
        batch_size: groups per optimisation step.
        learning_rate: Adam's initial learning rate, halved when the monitored loss stalls.
        validation_fraction: share of training groups held out for validation, in [0, 1).
        early_stopping_patience: epochs without validation improvement before stopping.
        max_train_groups: cap on training groups (a seeded subset); 0 keeps all.
        threads: CPU threads; 0 lets the backend choose.
        device: `auto` (GPU when present), `cpu` or `gpu`.
        model_preset: `compact` or `reference` (see `fly64.learning.spec`).
        channels_last: None lets the backend choose; True or False forces the memory
            layout of convolutions where the backend supports both.
    """

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    early_stopping_patience: int = 5
    max_train_groups: int = 0
    threads: int = 0
    device: str = "auto"
    model_preset: str = "compact"
    channels_last: bool | None = None


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One training job, parsed and validated from the JSON spec the job runner writes.

    Attributes:
        backend: `pytorch` or `tensorflow`.
        model_kind: `pinn` or `baseline`.
        gridsize: group side; C = gridsize² patterns per group.
        neighbor_count: K, neighbourhood size for gridsize-2 grouping (K >= C).
        seed: seeds grouping, splitting, initialisation and shuffling.
        train_data_path, test_data_path: NPZ datasets.
        bundle_path: where the bundle (`wts.h5.zip`) goes.
        training: the training settings.
        provenance: free-form plain data copied into the bundle's `manifest.json`.
    """

    backend: str
    model_kind: str
    gridsize: int
    neighbor_count: int
    seed: int
    train_data_path: Path
    test_data_path: Path
    bundle_path: Path
    training: TrainingSettings
    provenance: dict[str, Any]

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "JobSpec":
        """Validate a job spec dict.

        Unknown keys are logged at WARNING and ignored, so a newer runner can add keys.

        Raises:
            InputError: a required key is missing or a value has the wrong type or range;
                the message names the key (for example `training.epochs`).
        """
        if not isinstance(spec, dict):
            raise InputError(f"job spec is a {type(spec).__name__}; expected a JSON object")
        known = {field.name for field in dataclasses.fields(cls)}
        _warn_unknown(spec, known, prefix="")

        training_table = spec.get("training", {})
        if not isinstance(training_table, dict):
            raise InputError(f"job spec key training is a {type(training_table).__name__}; expected an object")
        # The study config's training table also names the backend; it is the job's own key.
        _warn_unknown(training_table, {field.name for field in dataclasses.fields(TrainingSettings)} | {"backend"}, "training.")
        training = TrainingSettings(
            epochs=_integer(training_table, "epochs", TrainingSettings.epochs, minimum=1, prefix="training."),
            batch_size=_integer(training_table, "batch_size", TrainingSettings.batch_size, minimum=1, prefix="training."),
            learning_rate=_positive_float(training_table, "learning_rate", TrainingSettings.learning_rate),
            validation_fraction=_fraction(training_table, "validation_fraction", TrainingSettings.validation_fraction),
            early_stopping_patience=_integer(
                training_table, "early_stopping_patience", TrainingSettings.early_stopping_patience, minimum=1, prefix="training."
            ),
            max_train_groups=_integer(training_table, "max_train_groups", 0, minimum=0, prefix="training."),
            threads=_integer(training_table, "threads", 0, minimum=0, prefix="training."),
            device=_choice(training_table, "device", TrainingSettings.device, DEVICES, prefix="training."),
            model_preset=_choice(training_table, "model_preset", TrainingSettings.model_preset, PRESETS, prefix="training."),
            channels_last=_optional_bool(training_table, "channels_last"),
        )

        gridsize = _integer(spec, "gridsize", None, minimum=1)
        neighbor_count = _integer(spec, "neighbor_count", 7, minimum=1)
        if gridsize > 1 and neighbor_count < gridsize**2:
            raise InputError(
                f"job spec key neighbor_count (K = {neighbor_count}) must be ≥ C = gridsize² = {gridsize**2}"
            )
        provenance = spec.get("provenance", {})
        if not isinstance(provenance, dict):
            raise InputError(f"job spec key provenance is a {type(provenance).__name__}; expected an object")

        return cls(
            backend=_choice(spec, "backend", None, BACKENDS),
            model_kind=_choice(spec, "model_kind", None, MODEL_KINDS),
            gridsize=gridsize,
            neighbor_count=neighbor_count,
            seed=_integer(spec, "seed", None, minimum=0),
            train_data_path=Path(_string(spec, "train_data_path")),
            test_data_path=Path(_string(spec, "test_data_path")),
            bundle_path=Path(_string(spec, "bundle_path")),
            training=training,
            provenance=provenance,
        )


class LoadedModel(abc.ABC):
    """A bundle's inference model (`diffraction_to_obj`), loaded by its backend.

    Arrays are channels first for every backend: amplitudes (B, C, N, N), offsets
    (B, C, 2) and patches (B, C, N, N).
    """

    def __init__(self, contents: BundleContents) -> None:
        self.contents = contents
        self.manifest: dict[str, Any] = contents.manifest
        self.params: dict[str, Any] = contents.params[INFERENCE_MODEL]
        try:
            self.spec = ModelSpec.from_params(self.params, source=f"{contents.path}:{INFERENCE_MODEL}")
        except InputError as error:
            raise BundleError(str(error)) from None

    @property
    def path(self) -> Path:
        return self.contents.path

    @property
    def norm_factor(self) -> float:
        """Normalisation factor of the training data (see `fly64.learning.data`)."""
        return float(self.params["norm_factor"])

    @property
    def intensity_scale(self) -> float:
        """Photons per unit of far-field intensity learned in training (1.0 for the baseline)."""
        return float(self.params["intensity_scale"])

    def predict(
        self,
        amplitude: np.ndarray,
        offsets_px: np.ndarray | None = None,
        norm_factor: float | None = None,
        batch_size: int = 64,
    ) -> np.ndarray:
        """Reconstruct object patches from measured amplitudes.

        Args:
            amplitude: float (B, C, N, N) raw measured amplitudes (square roots of counts),
                C and N as in the bundle.
            offsets_px: float (B, C, 2) members' (x, y) offsets from their group centre in
                pixels; None means zeros, allowed for gridsize 1 only.
            norm_factor: divides the amplitudes before the network. None computes
                `normalisation_factor(amplitude)` over the given array, which is right when
                it contains a whole dataset; pass the dataset's factor when predicting in parts.
            batch_size: groups per forward pass (bounds memory).

        Returns:
            complex64 (B, C, N, N) patches; for the PINN at gridsize > 1, after the overlap
            constraint.

        Raises:
            InputError: shapes differ from the bundle's N and C, offsets are missing for
                gridsize > 1, or values are not finite.
        """
        amplitude = np.asarray(amplitude, dtype=np.float32)
        channels, patch_size = self.spec.channels, self.spec.patch_size
        if amplitude.ndim != 4 or amplitude.shape[1:] != (channels, patch_size, patch_size):
            raise InputError(
                f"amplitude has shape {amplitude.shape}; the bundle {self.path} expects (B, {channels}, {patch_size}, {patch_size})"
            )
        if offsets_px is None:
            if self.spec.gridsize > 1:
                raise InputError(f"offsets_px are required for gridsize {self.spec.gridsize} (bundle {self.path})")
            offsets_px = np.zeros((amplitude.shape[0], channels, 2), dtype=np.float32)
        offsets_px = np.asarray(offsets_px, dtype=np.float32)
        if offsets_px.shape != (amplitude.shape[0], channels, 2):
            raise InputError(f"offsets_px has shape {offsets_px.shape}; expected ({amplitude.shape[0]}, {channels}, 2)")
        if not (np.all(np.isfinite(amplitude)) and np.all(np.isfinite(offsets_px))):
            raise InputError("amplitude or offsets_px contain NaN or infinite values")
        if batch_size < 1:
            raise InputError(f"batch_size = {batch_size} is invalid; expected at least 1")

        if norm_factor is None:
            norm_factor = normalisation_factor(amplitude)
        normalised = amplitude / np.float32(norm_factor)

        parts = [
            self.predict_normalised(normalised[start : start + batch_size], offsets_px[start : start + batch_size])
            for start in range(0, amplitude.shape[0], batch_size)
        ]
        if not parts:
            return np.zeros((0, channels, patch_size, patch_size), dtype=np.complex64)
        return np.concatenate(parts, axis=0)

    @abc.abstractmethod
    def predict_normalised(self, amplitude: np.ndarray, offsets_px: np.ndarray) -> np.ndarray:
        """Run one batch of normalised float32 (b, C, N, N) amplitudes; return complex64 (b, C, N, N)."""

    def verify(self, tolerance: float = VERIFICATION_TOLERANCE) -> float:
        """Check the model against the batch stored in the bundle at training time.

        Returns:
            The maximum |difference| between the stored output and this model's output.

        Raises:
            BundleError: the verification member is missing or malformed, or the
                difference exceeds `tolerance`, which means the weights or the code
                changed since the bundle was written.
        """
        arrays = self.contents.load_arrays(VERIFICATION_MEMBER)
        missing = [key for key in ("amplitude", "offsets_px", "norm_factor", "expected") if key not in arrays]
        if missing:
            raise BundleError(f"{self.path}: {VERIFICATION_MEMBER} lacks array(s) {', '.join(missing)}")
        try:
            predicted = self.predict(arrays["amplitude"], arrays["offsets_px"], norm_factor=float(arrays["norm_factor"]))
        except InputError as error:
            raise BundleError(f"{self.path}: {VERIFICATION_MEMBER} does not fit the model ({error})") from None
        if predicted.shape != arrays["expected"].shape:
            raise BundleError(
                f"{self.path}: verification output has shape {predicted.shape}, stored {arrays['expected'].shape}"
            )
        deviation = float(np.max(np.abs(predicted - arrays["expected"]))) if predicted.size else 0.0
        if not deviation <= tolerance:
            raise BundleError(
                f"{self.path}: reloaded model differs from the stored verification output by {deviation:.3g} "
                f"(tolerance {tolerance:.1g}); the weights do not reproduce the trained model"
            )
        logger.debug("%s: verification batch reproduced within %.3g", self.path, deviation)
        return deviation


def _warn_unknown(table: dict[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        logger.warning("Ignoring unknown job spec key(s): %s", ", ".join(prefix + key for key in unknown))


def _integer(table: dict[str, Any], key: str, default: int | None, minimum: int, prefix: str = "") -> int:
    if key not in table:
        if default is None:
            raise InputError(f"job spec lacks key {prefix}{key}")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"job spec key {prefix}{key} = {value!r} is invalid; expected an integer ≥ {minimum}")
    return value


def _positive_float(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"job spec key training.{key} = {value!r} is invalid; expected a finite number > 0")
    return float(value)


def _fraction(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InputError(f"job spec key training.{key} = {value!r} is invalid; expected a number in [0, 1)")
    return float(value)


def _choice(table: dict[str, Any], key: str, default: str | None, choices: tuple[str, ...], prefix: str = "") -> str:
    if key not in table:
        if default is None:
            raise InputError(f"job spec lacks key {prefix}{key}; expected one of {', '.join(choices)}")
        return default
    value = table[key]
    if value not in choices:
        raise InputError(f"job spec key {prefix}{key} = {value!r} is invalid; expected one of {', '.join(choices)}")
    return value


def _optional_bool(table: dict[str, Any], key: str) -> bool | None:
    value = table.get(key)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"job spec key training.{key} = {value!r} is invalid; expected true, false or null")
    return value


def _string(table: dict[str, Any], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"job spec key {key} = {value!r} is invalid; expected a non-empty path string")
    return value
