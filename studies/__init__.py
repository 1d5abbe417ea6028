"""Studies composed from the fly64 engine."""
