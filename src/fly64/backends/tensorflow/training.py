"""Fit a Keras model pair with `model.fit`: Adam, learning rate halved on plateau, early stopping.

The settings mirror the PyTorch backend's Lightning training. Adam starts at the spec's
learning rate. `PlateauLearningRate` halves it with PyTorch's `ReduceLROnPlateau` rule,
which differs from Keras's own callback. Early stopping ends the fit after
`early_stopping_patience` epochs without any decrease of the monitored loss and restores
the best epoch's weights. Each epoch takes the training groups in
`fly64.learning.seeding.epoch_order`, the PyTorch backend's order, and keeps the last
partial batch. The monitored loss is the validation loss, or the training loss without
validation data. Nothing is written to disk.
"""

import dataclasses
import logging
import math
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fly64.backends.base import TrainingSettings
from fly64.backends.tensorflow.layers import PoissonNLL, positions_from_offsets
from fly64.backends.tensorflow.models import (
    AMPLITUDE_INPUT,
    OBJECT_AMPLITUDE_OUTPUT,
    OBJECT_PHASE_OUTPUT,
    POSITIONS_INPUT,
    ModelPair,
)
from fly64.errors import JobFailedError
from fly64.learning.data import TrainingArrays
from fly64.learning.seeding import batches_per_epoch, epoch_order
from fly64.learning.spec import ModelSpec

logger = logging.getLogger(__name__)

# The learning rate halves when the monitored loss has not improved for more than
# PLATEAU_PATIENCE_EPOCHS epochs, where an improvement is a relative decrease of more than
# PLATEAU_RELATIVE_THRESHOLD. These are the PyTorch backend's `ReduceLROnPlateau` settings.
PLATEAU_PATIENCE_EPOCHS = 2
PLATEAU_RELATIVE_THRESHOLD = 1e-4
LEARNING_RATE_FACTOR = 0.5
# PyTorch's Adam default (Keras's is 1e-7), so that both backends take the same steps.
ADAM_EPSILON = 1e-8
# Training groups that set the PINN's starting intensity scale, as in the PyTorch backend.
CALIBRATION_GROUPS = 64


@dataclasses.dataclass
class TrainingOutcome:
    """Training figures of a fitted model pair; the pair keeps the best epoch's weights.

    Attributes:
        history: per-epoch dicts `epoch` (1-based), `train_loss`, `val_loss` (None
            without validation data) and `learning_rate`.
        best_epoch: the epoch whose weights the models hold (1-based).
        train_seconds: wall time of the whole fit, validation and tracing included.
        samples_per_second: groups per second over the training steps alone.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    train_seconds: float
    samples_per_second: float

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def channels_last(array: np.ndarray) -> np.ndarray:
    """Move axis 1 of a (B, C, N, N) array last, giving a contiguous (B, N, N, C) array."""
    return np.ascontiguousarray(np.moveaxis(array, 1, -1))


def model_inputs(spec: ModelSpec, arrays: TrainingArrays) -> dict[str, np.ndarray]:
    """Return the Keras inputs of `arrays`: `amplitude` (G, N, N, C) and, except for the baseline autoencoder, `positions` (G, 1, 2, C)."""
    inputs = {AMPLITUDE_INPUT: channels_last(arrays.amplitude)}
    if spec.kind == "pinn":
        inputs[POSITIONS_INPUT] = positions_from_offsets(arrays.offsets_px)
    return inputs


def model_targets(spec: ModelSpec, arrays: TrainingArrays) -> Any:
    """Return the autoencoder's targets: counts (G, N, N, C) for the PINN, or ground-truth amplitude and phase for the baseline.

    Raises:
        JobFailedError: the baseline's data has no ground-truth patches.
    """
    if spec.kind == "pinn":
        return channels_last(arrays.counts)
    if arrays.patches is None:
        raise JobFailedError("the supervised baseline needs ground-truth patches (key Y) in its training data")
    return {
        OBJECT_AMPLITUDE_OUTPUT: channels_last(np.abs(arrays.patches).astype(np.float32)),
        OBJECT_PHASE_OUTPUT: channels_last(np.angle(arrays.patches).astype(np.float32)),
    }


def training_dataset(spec: ModelSpec, arrays: TrainingArrays, batch_size: int, seed: int, epochs: int) -> tf.data.Dataset:
    """Return the batches of all `epochs` epochs in sequence, each epoch in its `epoch_order`.

    `model.fit` needs `steps_per_epoch=batches_per_epoch(n_groups, batch_size)` with it:
    Keras then keeps one iterator over the epochs instead of restarting the dataset.
    """
    orders = np.stack([epoch_order(seed, epoch, arrays.n_groups) for epoch in range(epochs)])
    # Tensors made here are captured by reference; NumPy arrays would be copied into the graph.
    inputs, targets = tf.nest.map_structure(tf.convert_to_tensor, (model_inputs(spec, arrays), model_targets(spec, arrays)))

    def gather(indices: tf.Tensor) -> tuple[Any, Any]:
        return tf.nest.map_structure(lambda array: tf.gather(array, indices), (inputs, targets))

    batches = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    )
    return batches.map(gather)


def validation_dataset(spec: ModelSpec, arrays: TrainingArrays, batch_size: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((model_inputs(spec, arrays), model_targets(spec, arrays))).batch(batch_size)


def calibrate_intensity_scale(pair: ModelPair, spec: ModelSpec, arrays: TrainingArrays) -> float:
    """Set the untrained PINN's intensity scale so that its predicted counts total the measured counts.

    Uses the first `CALIBRATION_GROUPS` groups: scale = sum(counts) / sum(|far field|²) of
    the network's current output. Returns the scale.

    Raises:
        JobFailedError: the groups contain no photons or the untrained output has no intensity.
    """
    groups = arrays.take(np.arange(min(CALIBRATION_GROUPS, arrays.n_groups)))
    current_scale = pair.trained_intensity_scale()
    predicted_counts = pair.autoencoder(model_inputs(spec, groups), training=False)
    predicted_total = float(np.sum(np.asarray(predicted_counts, dtype=np.float64))) / current_scale
    measured_total = float(np.sum(groups.counts, dtype=np.float64))
    if not (predicted_total > 0 and measured_total > 0 and math.isfinite(predicted_total)):
        raise JobFailedError(
            f"cannot calibrate the intensity scale: measured {measured_total} photons, "
            f"untrained model intensity {predicted_total}; expected both finite and > 0"
        )

    scale = measured_total / predicted_total
    pair.intensity_scale.log_intensity_scale.assign(math.log(scale))
    logger.info("Initial intensity scale %.6g photons per unit intensity", scale)
    return scale


def compile_autoencoder(pair: ModelPair, spec: ModelSpec, learning_rate: float) -> None:
    """Compile the autoencoder with Adam and its kind's loss.

    PINN: `PoissonNLL` of the measured counts. Baseline: mean absolute error of the
    amplitude plus that of the phase in radians, the sum Keras reports as `loss`.
    """
    if spec.kind == "pinn":
        loss: Any = PoissonNLL()
    else:
        loss = {OBJECT_AMPLITUDE_OUTPUT: "mean_absolute_error", OBJECT_PHASE_OUTPUT: "mean_absolute_error"}
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, epsilon=ADAM_EPSILON)
    pair.autoencoder.compile(optimizer=optimizer, loss=loss)


def fit_models(
    pair: ModelPair,
    spec: ModelSpec,
    train: TrainingArrays,
    validation: TrainingArrays,
    settings: TrainingSettings,
    seed: int,
    skip_first_steps: int = 0,
) -> TrainingOutcome:
    """Train `pair.autoencoder` in place and leave the best epoch's weights in both models.

    The throughput figure leaves out the steps that trace the training function and the
    first `skip_first_steps` steps of the fit.

    Raises:
        JobFailedError: a loss became non-finite.
    """
    has_validation = validation.n_groups > 0
    monitor = "val_loss" if has_validation else "loss"
    compile_autoencoder(pair, spec, settings.learning_rate)

    history = EpochHistory(settings.epochs)
    throughput = Throughput(train.n_groups, settings.batch_size, skip_first_steps)
    callbacks = [
        history,
        throughput,
        PlateauLearningRate(monitor),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode="min", patience=settings.early_stopping_patience, restore_best_weights=True
        ),
    ]
    train_data = training_dataset(spec, train, settings.batch_size, seed, settings.epochs)
    validation_data = validation_dataset(spec, validation, settings.batch_size) if has_validation else None

    logger.info(
        "Training %s autoencoder: %d training and %d validation groups, batch %d, up to %d epochs",
        spec.kind, train.n_groups, validation.n_groups, settings.batch_size, settings.epochs,
    )
    started = time.perf_counter()
    pair.autoencoder.fit(
        train_data,
        validation_data=validation_data,
        epochs=settings.epochs,
        steps_per_epoch=batches_per_epoch(train.n_groups, settings.batch_size),
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )
    train_seconds = time.perf_counter() - started

    best_epoch = _best_epoch(history.history)
    logger.info(
        "Trained %d epoch(s) in %.1f s, %.1f groups/s in training steps, best epoch %d",
        len(history.history), train_seconds, throughput.samples_per_second, best_epoch,
    )
    return TrainingOutcome(
        history=history.history,
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        samples_per_second=throughput.samples_per_second,
    )


def _best_epoch(history: list[dict[str, Any]]) -> int:
    """Return the 1-based epoch with the lowest monitored loss; the first one wins ties, as in `EarlyStopping`."""
    if not history:
        return 0
    losses = [entry["val_loss"] if entry["val_loss"] is not None else entry["train_loss"] for entry in history]
    return int(np.argmin(losses)) + 1


class EpochHistory(keras.callbacks.Callback):
    """Record and log each epoch's training and validation loss, learning rate and elapsed time.

    Raises `JobFailedError` at the end of an epoch whose loss is not finite.
    """

    def __init__(self, max_epochs: int) -> None:
        super().__init__()
        self.max_epochs = max_epochs
        self.history: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    def on_train_begin(self, logs=None) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise JobFailedError(
                f"training loss became {float(loss)} at epoch {len(self.history) + 1}, batch {batch + 1}; "
                "lower training.learning_rate"
            )

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        train_loss = float(logs["loss"])
        val_loss = float(logs["val_loss"]) if "val_loss" in logs else None
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.history.append(
            {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "learning_rate": learning_rate}
        )
        logger.info(
            "epoch %d/%d: loss %.6g, val loss %s, learning rate %.3g, %.1f s elapsed",
            epoch + 1, self.max_epochs, train_loss, "n/a" if val_loss is None else f"{val_loss:.6g}",
            learning_rate, time.perf_counter() - self._started,
        )
        if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
            raise JobFailedError(
                f"loss became non-finite in epoch {epoch + 1} (train {train_loss}, validation {val_loss}); "
                "lower training.learning_rate"
            )


class PlateauLearningRate(keras.callbacks.Callback):
    """Multiply the learning rate by `factor` when the monitored loss stops improving, as PyTorch does.

    This follows `torch.optim.lr_scheduler.ReduceLROnPlateau` in mode "min" with
    threshold mode "rel" and no cooldown (torch 2.14). An epoch improves when its loss is
    below `best * (1 - threshold)`. The rate drops once more than `patience` epochs in a
    row have not improved, and the count then restarts. Keras's `ReduceLROnPlateau`
    (Keras 3.15) instead drops it after `patience` such epochs, with an absolute
    `min_delta`, so with the same settings it halves the rate one epoch earlier.
    A drop smaller than 1e-8 is skipped, as in PyTorch.
    """

    def __init__(
        self,
        monitor: str,
        factor: float = LEARNING_RATE_FACTOR,
        patience: int = PLATEAU_PATIENCE_EPOCHS,
        threshold: float = PLATEAU_RELATIVE_THRESHOLD,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.best = math.inf
        self.bad_epochs = 0

    def on_train_begin(self, logs=None) -> None:
        self.best = math.inf
        self.bad_epochs = 0

    def on_epoch_end(self, epoch, logs=None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is None:
            logger.warning("learning-rate schedule: %s is missing from epoch %d's logs", self.monitor, epoch + 1)
            return
        current = float(current)
        if current < self.best * (1.0 - self.threshold):
            self.best = current
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.bad_epochs = 0
            optimizer = self.model.optimizer
            old_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            new_rate = old_rate * self.factor
            if old_rate - new_rate > 1e-8:
                optimizer.learning_rate = new_rate
                logger.info("epoch %d: learning rate lowered to %.3g", epoch + 1, new_rate)


class Throughput(keras.callbacks.Callback):
    """Sum the wall time of training steps and the groups they processed.

    Keras does not pass a batch's size to callbacks, so it follows from the batch index:
    full batches of `batch_size` groups and a last partial batch. In the first epoch, the
    first step of each batch size traces the `tf.function`, which takes seconds on a busy
    CPU. Those steps and the first `skip_first_steps` steps of the fit are left out of
    the figure, unless no other step ran.
    """

    def __init__(self, n_groups: int, batch_size: int, skip_first_steps: int = 0) -> None:
        super().__init__()
        self.n_groups = n_groups
        self.batch_size = batch_size
        self.skip_first_steps = skip_first_steps
        self._steps_seen = 0
        self.seconds = 0.0
        self.samples = 0
        self.left_out_seconds = 0.0
        self.left_out_samples = 0
        self._epoch = 0
        self._step_started = 0.0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        # Reading the loss waits for the step to finish, also on a GPU.
        if logs and "loss" in logs:
            float(logs["loss"])
        seconds = time.perf_counter() - self._step_started
        groups = min(self.batch_size, self.n_groups - batch * self.batch_size)
        traces = self._epoch == 0 and (batch == 0 or groups < self.batch_size)
        self._steps_seen += 1
        if traces or self._steps_seen <= self.skip_first_steps:
            self.left_out_seconds += seconds
            self.left_out_samples += groups
        else:
            self.seconds += seconds
            self.samples += groups

    @property
    def samples_per_second(self) -> float:
        """Groups per second over the steps that were not left out, or over all steps when every step was."""
        if self.samples and self.seconds > 0:
            return self.samples / self.seconds
        total_seconds = self.seconds + self.left_out_seconds
        return (self.samples + self.left_out_samples) / total_seconds if total_seconds > 0 else 0.0
