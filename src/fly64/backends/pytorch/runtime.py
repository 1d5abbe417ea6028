"""Process-wide PyTorch settings of a job: threads, device, memory layout, determinism."""

import dataclasses
import logging

import torch

from fly64.errors import InputError

logger = logging.getLogger(__name__)

# Chosen with `python -m fly64.backends.pytorch.benchmark --groups 64 --repeats 2` (torch
# 2.14.1, 2-core AMD EPYC shared with other jobs, N = 64, batch 16). Compact preset, fastest
# rounds in groups/s: baseline gs1 90 with 1 thread and channels-last, 70 with 1 thread
# contiguous, 13 to 37 with 2 threads; PINN gs2 64, 54 and 11 to 13. Two threads collapse
# whenever another process takes a core, and channels-last was faster in most configurations.
DEFAULT_CPU_THREADS = 1
DEFAULT_CHANNELS_LAST = True


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a job runs.

    Attributes:
        device: `cpu` or `cuda`.
        accelerator: Lightning's accelerator name, `cpu` or `gpu`.
        threads: intra-op CPU threads.
        channels_last: whether convolutions run in channels-last memory layout.
    """

    device: str
    accelerator: str
    threads: int
    channels_last: bool


def configure_runtime(device: str, threads: int, channels_last: bool | None) -> Runtime:
    """Choose the device and set torch's thread count for this process.

    Args:
        device: `auto` (CUDA when available, else CPU), `cpu` or `gpu`.
        threads: CPU threads; 0 uses `DEFAULT_CPU_THREADS`.
        channels_last: None uses `DEFAULT_CHANNELS_LAST`.

    Raises:
        InputError: `gpu` is requested but CUDA is not available.
    """
    if device == "gpu" and not torch.cuda.is_available():
        raise InputError("training.device = 'gpu' but no CUDA device is available; use 'auto' or 'cpu'")
    use_cuda = device == "gpu" or (device == "auto" and torch.cuda.is_available())

    threads = threads or DEFAULT_CPU_THREADS
    torch.set_num_threads(threads)
    runtime = Runtime(
        device="cuda" if use_cuda else "cpu",
        accelerator="gpu" if use_cuda else "cpu",
        threads=threads,
        channels_last=DEFAULT_CHANNELS_LAST if channels_last is None else channels_last,
    )
    logger.info(
        "torch %s on %s, %d CPU thread(s), channels_last %s",
        torch.__version__, runtime.device, threads, runtime.channels_last,
    )
    return runtime
