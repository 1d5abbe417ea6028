"""Process-wide TensorFlow settings of a job: threads, device, seeds and determinism.

TensorFlow fixes its thread pools and visible devices when it first runs an op, so
`configure_runtime` must run before any model is built in the process.
"""

import dataclasses
import logging
import os

import keras
import tensorflow as tf

from fly64.errors import InputError

logger = logging.getLogger(__name__)

# Independent ops that may run side by side, such as the two decoders. The thread
# measurements below used 1; other values were not measured.
INTER_OP_THREADS = 1


def available_cpus() -> int:
    """Return the CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Device and CPU threads of a job.

    Attributes:
        device: `cpu` or `gpu`.
        threads: intra-op CPU threads.
    """

    device: str
    threads: int


def configure_runtime(device: str, threads: int, seed: int) -> Runtime:
    """Choose the device, set the thread pools, seed every generator and, on the CPU, request deterministic ops.

    Args:
        device: `auto` (a GPU when one is visible, else the CPU), `cpu` or `gpu`.
        threads: intra-op CPU threads; 0 uses every available CPU (`available_cpus`).
        seed: seeds Python's, NumPy's and TensorFlow's generators (`keras.utils.set_random_seed`).

    Raises:
        InputError: `gpu` is requested but TensorFlow finds no GPU.
        RuntimeError: TensorFlow already ran an op in this process, so its thread pools
            and devices can no longer change.
    """
    # Measured on a 2-core machine shared with other jobs (load about 6): the compact PINN
    # and baseline at N = 64 trained a median 10 to 15 percent faster with 2 threads than
    # with 1, in 4 interleaved rounds of `fly64.backends.tensorflow.benchmark` steps.
    threads = threads or available_cpus()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise InputError("training.device = 'gpu' but TensorFlow finds no GPU; use 'auto' or 'cpu'")
    use_gpu = bool(gpus) and device in ("auto", "gpu")
    if gpus and not use_gpu:
        tf.config.set_visible_devices([], "GPU")

    keras.utils.set_random_seed(seed)
    # NOTE: the GPU path has not run in this project's tests. TensorFlow raises at run time
    # for ops without a deterministic GPU kernel, so determinism is requested on the CPU only.
    if use_gpu:
        logger.warning("Training on the GPU without op determinism; repeated runs may differ in the last bits")
    else:
        tf.config.experimental.enable_op_determinism()

    runtime = Runtime(device="gpu" if use_gpu else "cpu", threads=threads)
    logger.info(
        "TensorFlow %s, Keras %s on %s, %d intra-op thread(s), deterministic ops: %s",
        tf.__version__, keras.__version__, runtime.device, threads, not use_gpu,
    )
    return runtime
