"""PyTorch/Lightning backend: the PINN and the supervised baseline.

Modules: `models` (network and autoencoders), `physics` (overlap constraint, forward
model, Poisson loss), `lightning_modules` and `training` (fitting), `inference`,
`bundle` (writing and safe loading), `runtime` (threads and device), `job` (the job entry
point `run_job`) and `benchmark` (training throughput). Importing this package imports
no framework.
"""
