"""Physics engine: probe, object, scan, patches and the forward model, in NumPy and SciPy.

No module here imports the study package, and only the probe reader opens files. Positions
are float64 (n, 2) patch centres in object pixels with columns (x, y); the patch
convention is documented in `fly64.physics.patches`.
"""
