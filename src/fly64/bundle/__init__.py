"""Model bundles: a framework-neutral ZIP archive of manifest, parameters and weights.

`archive` writes and validates the ZIP; `safe_pickle` reads its `.dill` members as plain
data without running code. Backends add and load their own weights files.
"""

from fly64.bundle.archive import (
    BUNDLE_VERSION,
    MODEL_NAMES,
    BundleContents,
    bundle_digest,
    read_bundle,
    write_bundle,
)
from fly64.bundle.safe_pickle import dumps_plain, loads_plain

__all__ = [
    "BUNDLE_VERSION",
    "MODEL_NAMES",
    "BundleContents",
    "bundle_digest",
    "dumps_plain",
    "loads_plain",
    "read_bundle",
    "write_bundle",
]
