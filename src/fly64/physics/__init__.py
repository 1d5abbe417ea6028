"""Physics engine: probe, object, scan, patches and the forward model, in NumPy and SciPy.

Nothing here knows about studies or files other than the probe's NPZ reader. Positions
are float64 (n, 2) patch centres in object pixels with columns (x, y); the patch
convention is documented in `fly64.physics.patches`.
"""
