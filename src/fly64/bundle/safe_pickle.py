"""Pickled plain data (`.dill` members of a bundle), written with dill and read without running code.

A bundle's `manifest.dill` and `params.dill` hold plain data only: dicts with string keys,
lists, tuples, strings, ints, floats, bools and None, nested. Such data pickles without
any global reference, so the reader admits none: a pickle that names any class or
function (the only way a pickle can call code) is rejected before anything runs.
"""

import io
import pickle
from typing import Any

import dill
import numpy as np

from fly64.errors import BundleError

# Plain metadata is a few kilobytes; a larger pickle is damaged or hostile.
MAX_PLAIN_PICKLE_BYTES = 1024 * 1024
# Protocol 4 (Python 3.4+) is readable by every Python that fly64 supports.
PICKLE_PROTOCOL = 4
MAX_NESTING_DEPTH = 32
# Plain metadata has hundreds of elements (a long loss history a few thousand).
MAX_PLAIN_ELEMENTS = 100_000

PLAIN_SCALARS = (str, int, float, bool, type(None))


def plain_copy(value: Any, where: str = "value") -> Any:
    """Return `value` as plain data, with NumPy scalars converted to Python scalars.

    Raises:
        TypeError: naming the path (for example `value['losses'][2]`) of the first element
            that is not plain data, or when nesting exceeds 32 levels or the value has more
            than 100,000 elements.
    """
    return _plain_copy(value, (where,), [MAX_PLAIN_ELEMENTS])


def _plain_copy(value: Any, path: tuple[str, ...], budget: list[int]) -> Any:
    # A pickle can reference one list from many places, so a small file can describe a
    # huge tree. The element budget stops the walk over such a tree early.
    budget[0] -= 1
    if budget[0] < 0:
        raise TypeError(f"{_path_text(path)}: value has more than {MAX_PLAIN_ELEMENTS} elements")
    if len(path) > MAX_NESTING_DEPTH + 1:
        raise TypeError(f"{_path_text(path)} is nested more than {MAX_NESTING_DEPTH} levels deep")

    if isinstance(value, np.generic) and not isinstance(value, (np.void, np.object_)):
        value = value.item()
    if type(value) in PLAIN_SCALARS:
        return value
    # Subclasses (torch's version string, IntEnum members) would pickle as references to
    # their class, so they become the base type.
    for base in (bool, str, int, float):
        if isinstance(value, base):
            return base(value)

    if isinstance(value, dict):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{_path_text(path)} has key {key!r} of type {type(key).__name__}; expected str keys")
            copy[key] = _plain_copy(item, path + (f"[{key!r}]",), budget)
        return copy
    if isinstance(value, (list, tuple)):
        items = [_plain_copy(item, path + (f"[{index}]",), budget) for index, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(
        f"{_path_text(path)} has type {type(value).__name__}; expected plain data "
        "(dict, list, tuple, str, int, float, bool, None)"
    )


def _path_text(path: tuple[str, ...]) -> str:
    return "".join(path)


def dumps_plain(value: Any) -> bytes:
    """Pickle plain data with dill, after checking and converting it with `plain_copy`.

    Equal values give equal bytes.

    Raises:
        TypeError: `value` contains something other than plain data.
    """
    return dill.dumps(plain_copy(value), protocol=PICKLE_PROTOCOL)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that rejects every global reference, so no class or function can be loaded."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise BundleError(
            f"{self._source}: pickle references {module}.{name}; only plain data "
            "(dict, list, tuple, str, int, float, bool, None) is accepted, so the file is rejected"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise BundleError(f"{self._source}: pickle uses a persistent id, which plain data never needs")


def loads_plain(data: bytes, source: str, max_bytes: int = MAX_PLAIN_PICKLE_BYTES) -> Any:
    """Unpickle plain data without running any code from it.

    Args:
        data: the pickle bytes (a `.dill` file written by `dumps_plain` or by dill/pickle).
        source: names the data in error messages, for example `bundle.zip:manifest.dill`.
        max_bytes: larger inputs are rejected before unpickling.

    Returns:
        The plain value (dicts, lists, tuples, str, int, float, bool, None).

    Raises:
        BundleError: naming `source`, when the input is too large, malformed, references
            any global (class, function, module), or yields something other than plain data.
    """
    if len(data) > max_bytes:
        raise BundleError(f"{source}: pickle is {len(data)} bytes; plain metadata is expected below {max_bytes} bytes")
    try:
        value = _PlainUnpickler(data, source).load()
    except BundleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as error:
        raise BundleError(f"{source}: not a readable pickle of plain data ({type(error).__name__}: {error})") from None
    try:
        return plain_copy(value, where=source)
    except TypeError as error:
        raise BundleError(f"{source}: pickle contains data that is not plain ({error})") from None

