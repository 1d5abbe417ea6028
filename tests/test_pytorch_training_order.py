"""PyTorch training starts from the seed's shared weights and takes batches in the shared order."""

import lightning as L
import numpy as np
import pytest
import torch

from fly64.backends.pytorch.lightning_modules import GroupDataModule
from fly64.backends.pytorch.models import ObjectNetwork
from fly64.backends.pytorch.training import build_model
from fly64.learning.seeding import epoch_order, initial_convolutions
from fly64.learning.spec import ModelSpec
from fly64.learning.synthetic import disc_probe

N_GROUPS = 21
BATCH_SIZE = 8
EPOCHS = 3
SEED = 4


class BatchRecorder(L.LightningModule):
    """Train nothing; record the group indices of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[list[int]] = []

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        self.batches.append(batch[0].tolist())
        return (self.weight**2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_batches_follow_epoch_order():
    indices = torch.arange(N_GROUPS)
    data = GroupDataModule([indices], [indices[:0]], BATCH_SIZE, SEED)
    recorder = BatchRecorder()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(recorder, datamodule=data)

    expected = []
    for epoch in range(EPOCHS):
        order = epoch_order(SEED, epoch, N_GROUPS).tolist()
        expected += [order[start:start + BATCH_SIZE] for start in range(0, N_GROUPS, BATCH_SIZE)]
    assert recorder.batches == expected


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(32, 1, "baseline", "compact"), ModelSpec(32, 2, "pinn", "compact", canvas_pad_px=4), ModelSpec(64, 1, "pinn", "reference")],
    ids=lambda spec: f"{spec.kind}-gs{spec.gridsize}-{spec.preset}",
)
def test_layout_matches_pytorch_convolutions(spec):
    network = ObjectNetwork(spec)
    convolutions = [module for module in network.modules() if isinstance(module, torch.nn.Conv2d)]
    channels = [(module.in_channels, module.out_channels) for module in convolutions]
    assert channels == [(in_channels, out_channels) for _, in_channels, out_channels in spec.convolution_layout()]


def test_build_model_starts_from_shared_weights():
    spec = ModelSpec(32, 2, "pinn", "compact", canvas_pad_px=4)
    model = build_model(spec, disc_probe(32), seed=9)
    first_convolution = model.diffraction_to_obj.network.encoder[0]
    last_convolution = model.diffraction_to_obj.network.phase_decoder[-1]
    shared = initial_convolutions(spec, 9)
    assert np.array_equal(first_convolution.weight.detach().numpy(), shared[0].kernel)
    assert np.array_equal(last_convolution.bias.detach().numpy(), shared[-1].bias)
