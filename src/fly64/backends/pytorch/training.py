"""Build and fit a PyTorch model with Lightning, deterministically, without writing files."""

import dataclasses
import logging
import math
import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping

from fly64.backends.base import TrainingSettings
from fly64.backends.pytorch.lightning_modules import (
    BaselineModule,
    BestWeights,
    EpochHistory,
    GroupDataModule,
    PinnModule,
    Throughput,
    training_tensors,
)
from fly64.backends.pytorch.models import BaselineAutoencoder, ObjectNetwork, PinnAutoencoder
from fly64.backends.pytorch.physics import far_field_intensity
from fly64.backends.pytorch.runtime import Runtime
from fly64.errors import JobFailedError
from fly64.learning.data import TrainingArrays
from fly64.learning.seeding import batches_per_epoch, initial_convolutions
from fly64.learning.spec import ModelSpec

logger = logging.getLogger(__name__)

# Training groups whose photons calibrate the PINN's initial intensity scale.
CALIBRATION_GROUPS = 64


@dataclasses.dataclass
class TrainingOutcome:
    """A fitted autoencoder (best epoch's weights, on the CPU) and its training figures.

    Attributes:
        model: `PinnAutoencoder` or `BaselineAutoencoder` in eval mode.
        history: per-epoch dicts `epoch`, `train_loss`, `val_loss`, `learning_rate`.
        best_epoch: the epoch (1-based) whose weights `model` has.
        train_seconds: wall time of the whole fit, validation included.
        samples_per_second: groups per second over the training steps alone.
    """

    model: torch.nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    train_seconds: float
    samples_per_second: float

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def build_model(spec: ModelSpec, probe: np.ndarray, seed: int, intensity_scale: float = 1.0) -> torch.nn.Module:
    """Seed every generator and create the autoencoder for `spec.kind` with the seed's starting weights.

    The convolutions start from `fly64.learning.seeding.initial_convolutions`, the
    weights the TensorFlow backend starts from with the same seed.

    Args:
        probe: complex (N, N) probe, used by the PINN only.
        intensity_scale: the PINN's intensity scale (photons per unit intensity) until
            `calibrate_intensity_scale` sets it from data.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    if spec.kind == "pinn":
        model = PinnAutoencoder(spec, torch.from_numpy(np.asarray(probe, dtype=np.complex64)), intensity_scale)
    else:
        model = BaselineAutoencoder(spec)
    set_initial_weights(model.diffraction_to_obj.network, spec, seed)
    return model


@torch.no_grad()
def set_initial_weights(network: ObjectNetwork, spec: ModelSpec, seed: int) -> None:
    """Copy the seed's backend-neutral starting kernels and biases into the network's convolutions."""
    convolutions = [module for module in network.modules() if isinstance(module, torch.nn.Conv2d)]
    initial = initial_convolutions(spec, seed)
    if len(convolutions) != len(initial):
        raise RuntimeError(f"the network has {len(convolutions)} convolutions, the spec {len(initial)}")
    for convolution, weights in zip(convolutions, initial):
        if tuple(convolution.weight.shape) != weights.kernel.shape:
            raise RuntimeError(
                f"convolution {weights.name} has kernel shape {tuple(convolution.weight.shape)}, "
                f"the spec {weights.kernel.shape}"
            )
        convolution.weight.copy_(torch.from_numpy(weights.kernel))
        convolution.bias.copy_(torch.from_numpy(weights.bias))


@torch.no_grad()
def calibrate_intensity_scale(model: PinnAutoencoder, arrays: TrainingArrays) -> float:
    """Set the untrained PINN's intensity scale so that its predicted counts total the measured counts.

    Uses the first `CALIBRATION_GROUPS` groups: scale = sum(counts) / sum(|far field|²) of
    the network's current output. Returns the scale.

    Raises:
        JobFailedError: the groups hold no photons or the untrained output has no intensity.
    """
    groups = slice(0, CALIBRATION_GROUPS)
    amplitude = torch.from_numpy(arrays.amplitude[groups])
    offsets_px = torch.from_numpy(arrays.offsets_px[groups])
    real, imag = model.diffraction_to_obj(amplitude, offsets_px)
    predicted_total = float(far_field_intensity(real, imag, model.probe).double().sum())
    measured_total = float(np.sum(arrays.counts[groups], dtype=np.float64))
    if not (predicted_total > 0 and measured_total > 0 and math.isfinite(predicted_total)):
        raise JobFailedError(
            f"cannot calibrate the intensity scale: measured {measured_total} photons, "
            f"untrained model intensity {predicted_total}; expected both finite and > 0"
        )

    scale = measured_total / predicted_total
    model.log_intensity_scale.fill_(math.log(scale))
    logger.info("Initial intensity scale %.6g photons per unit intensity", scale)
    return scale


def fit_model(
    model: torch.nn.Module,
    train: TrainingArrays,
    validation: TrainingArrays,
    settings: TrainingSettings,
    runtime: Runtime,
    seed: int,
    skip_first_steps: int = 0,
) -> TrainingOutcome:
    """Train `model` with Adam, halving the learning rate on plateaus and stopping early.

    `skip_first_steps` training steps at the start are left out of the throughput figure.

    The monitored loss is the validation loss, or the training loss when `validation`
    has no groups. Training on the CPU is deterministic: equal seeds, data and settings
    give equal weights.

    Raises:
        JobFailedError: a loss became non-finite.
    """
    has_validation = validation.n_groups > 0
    monitor = "val_loss" if has_validation else "train_loss"
    module_class = PinnModule if isinstance(model, PinnAutoencoder) else BaselineModule
    module = module_class(model, settings.learning_rate, monitor, runtime.channels_last)
    data = GroupDataModule(
        training_tensors(model, train), training_tensors(model, validation), settings.batch_size, seed
    )

    history = EpochHistory()
    best_weights = BestWeights(history)
    throughput = Throughput(skip_first_steps)
    early_stopping = EarlyStopping(
        monitor=monitor, patience=settings.early_stopping_patience, mode="min",
        check_on_train_epoch_end=not has_validation,
    )
    _quiet_lightning_logs()
    trainer = L.Trainer(
        accelerator=runtime.accelerator,
        devices=1,
        max_epochs=settings.epochs,
        callbacks=[history, best_weights, throughput, early_stopping],
        # NOTE: training has not run on CUDA yet. There an operation without a deterministic
        # kernel warns instead of failing the job.
        deterministic=True if runtime.accelerator == "cpu" else "warn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if has_validation else 0,
        log_every_n_steps=max(1, min(50, batches_per_epoch(train.n_groups, settings.batch_size))),
    )

    logger.info(
        "Training %s: %d training and %d validation groups, batch %d, up to %d epochs",
        type(model).__name__, train.n_groups, validation.n_groups, settings.batch_size, settings.epochs,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Data already sits in memory, so loader worker processes would only add overhead.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Lightning 2.6 calls an API that torch 2.14 deprecates; nothing for a user to act on.
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        trainer.fit(module, datamodule=data)
    train_seconds = time.perf_counter() - started

    model = module.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    logger.info(
        "Trained %d epoch(s) in %.1f s, %.1f groups/s in training steps, best epoch %d",
        len(history.history), train_seconds, throughput.samples_per_second, best_weights.best_epoch,
    )
    return TrainingOutcome(
        model=model,
        history=history.history,
        best_epoch=best_weights.best_epoch,
        train_seconds=train_seconds,
        samples_per_second=throughput.samples_per_second,
    )


def _quiet_lightning_logs() -> None:
    """Keep Lightning's start-up notices out of the job log and print its records once.

    Its INFO notices (accelerators found, a cloud logger advertised) repeat what the
    runtime already logs. Lightning also attaches console handlers of its own, which
    double every record once the application has configured the root logger. In that
    case its records go through the root handlers alone.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            framework_logger = logging.getLogger(name)
            framework_logger.handlers.clear()
            framework_logger.propagate = True
