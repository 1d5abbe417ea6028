"""Classical iterative reconstruction (pty-chi LSQML), the reference for the learned models.

`reconstruct_lsqml` runs in the calling process. pty-chi changes torch's process-wide
defaults, so the study should call it through `fly64.classical.worker`, which runs it in
a process of its own: `python -m fly64.classical.worker SPEC.json RESULT.json`, or
`fly64.classical.worker.run_worker` from Python. The worker is not imported here, so that
`python -m` runs it without a second copy of the module.
"""

from fly64.classical.ptychi_lsqml import ClassicalResult, estimate_scale_factor, reconstruct_lsqml

__all__ = ["ClassicalResult", "estimate_scale_factor", "reconstruct_lsqml"]
