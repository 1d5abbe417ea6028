"""Framework-neutral pieces of model training, shared by every backend (NumPy only).

- `spec`: the network's layers and presets (`ModelSpec`);
- `data`: normalisation, grouping into per-group training arrays, validation split;
- `evaluation`: patch-level correlations and the check for collapsed output;
- `seeding`: the seeded starting weights and batch order both backends use;
- `synthetic`: small simulated datasets for tests and throughput benchmarks.
"""
