"""fly64: simulation, training and comparison engine for ptychography deep-learning studies."""

__version__ = "0.1.0"
