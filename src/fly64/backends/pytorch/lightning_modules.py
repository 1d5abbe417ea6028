"""Lightning modules, data module and callbacks of PyTorch training.

Each model kind has its own `LightningModule` (model, loss, Adam with a learning rate
halved on plateau). `GroupDataModule` serves training arrays in batches of groups, in the
backend-neutral order of `fly64.learning.seeding.epoch_order`. The
callbacks record per-epoch losses, keep the best weights in memory and measure training
throughput; none of them writes files.
"""

import copy
import logging
import math
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from fly64.backends.pytorch.models import BaselineAutoencoder, PinnAutoencoder
from fly64.backends.pytorch.physics import poisson_nll
from fly64.errors import JobFailedError
from fly64.learning.data import TrainingArrays
from fly64.learning.seeding import epoch_order

logger = logging.getLogger(__name__)

# Epochs without improvement of the monitored loss before the learning rate halves.
PLATEAU_PATIENCE_EPOCHS = 2
LEARNING_RATE_FACTOR = 0.5


class _TrainingModule(L.LightningModule):
    """Common optimiser, logging and finiteness checks; subclasses define `compute_loss`."""

    def __init__(self, model: torch.nn.Module, learning_rate: float, monitor: str, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.monitor = monitor
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def network_input(self, amplitude: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return amplitude.contiguous(memory_format=torch.channels_last)
        return amplitude

    def compute_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise JobFailedError(
                f"training loss became {float(loss.detach())} at epoch {self.current_epoch + 1}, batch {batch_index + 1}; "
                "lower training.learning_rate"
            )
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=LEARNING_RATE_FACTOR, patience=PLATEAU_PATIENCE_EPOCHS
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor}}


class PinnModule(_TrainingModule):
    """Trains `PinnAutoencoder` on batches (amplitude, counts, offsets_px) with the Poisson NLL."""

    def compute_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        amplitude, counts, offsets_px = batch
        predicted_counts, _, _ = self.model(self.network_input(amplitude), offsets_px)
        return poisson_nll(predicted_counts, counts)


class BaselineModule(_TrainingModule):
    """Trains `BaselineAutoencoder` on batches (amplitude, target amplitude, target phase).

    Loss: mean absolute error of the amplitude plus that of the phase (radians).
    """

    def compute_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        amplitude, target_amplitude, target_phase = batch
        predicted_amplitude, predicted_phase = self.model(self.network_input(amplitude))
        amplitude_error = torch.mean(torch.abs(predicted_amplitude - target_amplitude))
        phase_error = torch.mean(torch.abs(predicted_phase - target_phase))
        return amplitude_error + phase_error


def training_tensors(model: torch.nn.Module, arrays: TrainingArrays) -> list[torch.Tensor]:
    """Return the tensors one dataset item is made of, for the model's kind.

    PINN: amplitude, counts, offsets_px. Baseline: amplitude, |patches|, angle(patches).

    Raises:
        JobFailedError: a baseline dataset has no ground-truth patches.
    """
    amplitude = torch.from_numpy(arrays.amplitude)
    if isinstance(model, PinnAutoencoder):
        return [amplitude, torch.from_numpy(arrays.counts), torch.from_numpy(arrays.offsets_px)]
    if isinstance(model, BaselineAutoencoder):
        if arrays.patches is None:
            raise JobFailedError("the supervised baseline needs ground-truth patches (key Y) in its training data")
        patches = torch.from_numpy(arrays.patches)
        return [amplitude, patches.abs(), patches.angle()]
    raise TypeError(f"no training data layout for {type(model).__name__}")


class EpochOrderSampler(Sampler[int]):
    """Yield training group indices in `epoch_order(seed, epoch, n_groups)`.

    Lightning calls `set_epoch` with the 0-based epoch before each training epoch, as it
    does for distributed samplers. Each epoch therefore has its own order, the one the
    TensorFlow backend also uses.
    """

    def __init__(self, n_groups: int, seed: int) -> None:
        self.n_groups = n_groups
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_groups

    def __iter__(self):
        return iter(epoch_order(self.seed, self.epoch, self.n_groups).tolist())


class GroupDataModule(L.LightningDataModule):
    """Serve training and validation groups; training batches follow `EpochOrderSampler`."""

    def __init__(self, train: list[torch.Tensor], validation: list[torch.Tensor], batch_size: int, seed: int) -> None:
        super().__init__()
        self.train = TensorDataset(*train)
        self.validation = TensorDataset(*validation)
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        sampler = EpochOrderSampler(len(self.train), self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.validation, batch_size=self.batch_size, shuffle=False)


class EpochHistory(L.Callback):
    """Record and log each epoch's mean training and validation loss and the elapsed time.

    `history` contains one dict per finished epoch: `epoch` (1-based), `train_loss`,
    `val_loss` (None without validation data) and `learning_rate`.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._sums = {"train": 0.0, "val": 0.0}
        self._counts = {"train": 0, "val": 0}
        self._started = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums = {"train": 0.0, "val": 0.0}
        self._counts = {"train": 0, "val": 0}

    def _add(self, split: str, loss: Any, batch: list[torch.Tensor]) -> None:
        if isinstance(loss, dict):
            loss = loss["loss"]
        size = int(batch[0].shape[0])
        self._sums[split] += float(loss.detach()) * size
        self._counts[split] += size

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._add("train", outputs, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._add("val", outputs, batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train_loss = self._sums["train"] / max(self._counts["train"], 1)
        val_loss = self._sums["val"] / self._counts["val"] if self._counts["val"] else None
        learning_rate = trainer.optimizers[0].param_groups[0]["lr"]
        self.history.append(
            {"epoch": trainer.current_epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "learning_rate": learning_rate}
        )
        logger.info(
            "epoch %d/%d: loss %.6g, val loss %s, learning rate %.3g, %.1f s elapsed",
            trainer.current_epoch + 1, trainer.max_epochs, train_loss,
            "n/a" if val_loss is None else f"{val_loss:.6g}", learning_rate, time.perf_counter() - self._started,
        )
        if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
            raise JobFailedError(
                f"loss became non-finite in epoch {trainer.current_epoch + 1} (train {train_loss}, validation {val_loss}); "
                "lower training.learning_rate"
            )


class BestWeights(L.Callback):
    """Keep a copy of the model's weights from the epoch with the lowest monitored loss, and restore it when fitting ends."""

    def __init__(self, history: EpochHistory) -> None:
        self._history = history
        self.best_epoch = 0
        self.best_loss = math.inf
        self._state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._history.history:
            return
        latest = self._history.history[-1]
        loss = latest["val_loss"] if latest["val_loss"] is not None else latest["train_loss"]
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_epoch = latest["epoch"]
            self._state = copy.deepcopy(pl_module.model.state_dict())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._state is not None:
            pl_module.model.load_state_dict(self._state)
            logger.info("Restored the weights of epoch %d (monitored loss %.6g)", self.best_epoch, self.best_loss)


class Throughput(L.Callback):
    """Sum the wall time of training steps (forward, backward, optimiser) and the groups they processed.

    The first `skip_first_steps` steps of the fit are left out; they include one-time
    allocations.
    """

    def __init__(self, skip_first_steps: int = 0) -> None:
        self.seconds = 0.0
        self.samples = 0
        self.skip_first_steps = skip_first_steps
        self._steps_seen = 0
        self._step_started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # CUDA runs asynchronously; wait for the step to finish before reading the clock.
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._steps_seen += 1
        if self._steps_seen <= self.skip_first_steps:
            return
        self.seconds += time.perf_counter() - self._step_started
        self.samples += int(batch[0].shape[0])

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0
