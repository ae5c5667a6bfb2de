"""Reading pickled ``.npy`` weight files (the E-LPIPS layout, ``np.save(path, {...})``) without running
their code: :func:`read_npy_dict` interprets the pickle with a parser that only knows numpy arrays, dicts,
lists, strings and numbers, and refuses anything else with :class:`UnsafeFileError`.

>>> import numpy as np
>>> from percept.safe_npy import read_npy_dict
>>> np.save("lin.npy", {"lin0": np.ones(3, dtype=np.float32)})
>>> read_npy_dict("lin.npy")
{'lin0': array([1., 1., 1.], dtype=float32)}
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np


class UnsafeFileError(ValueError):
    """A weights file is not in the plain layout this project reads: it would need to construct arbitrary
    Python objects (run code) to load, or it is not a dict of numeric arrays. Nothing in it was executed."""


#: largest ``.npy`` weights file read (the published E-LPIPS files are 8-24 KB)
NPY_MAX_BYTES = 64 << 20
_NUMERIC_CODE = re.compile(r"^(f2|f4|f8|i1|i2|i4|i8|u1|u2|u4|u8|b1)$")


class _Restricted:
    """Base of the stand-ins handed to the unpickler: they accept no ``BUILD`` state unless they say so."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafeFileError(f"unexpected object state for {type(self).__name__}")


class _Call(_Restricted):
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class _Token(_Restricted):
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_NDARRAY = _Token("numpy.ndarray")


class _Dtype(_Restricted):
    """A numeric dtype (or the object dtype of the 0-d holder that ``np.save`` pickles)."""

    __slots__ = ("code", "order")

    def __init__(self, code, align=0, copy=1):
        if not isinstance(code, str) or not (_NUMERIC_CODE.match(code) or code in ("O4", "O8")):
            raise UnsafeFileError(f"dtype {code!r} is not a plain numeric type")
        self.code, self.order = code, "|"

    @property
    def is_object(self) -> bool:
        return self.code.startswith("O")

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "=") or any(
            v is not None for v in state[2:5]
        ):
            raise UnsafeFileError("a structured or unusual dtype")
        self.order = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype((self.order if self.order in "<>" else "=") + self.code)


class _Array(_Restricted):
    """``numpy.ndarray`` as pickled: numeric data become an array; the only object array allowed is the
    0-d holder of the top-level object (what ``np.save`` writes for a dict)."""

    __slots__ = ("value", "holder")

    def __init__(self):
        self.value, self.holder = None, False

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafeFileError("an array with an unexpected pickled state")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(dtype, _Dtype) or not isinstance(shape, tuple) or not all(
            isinstance(n, int) and n >= 0 for n in shape
        ):
            raise UnsafeFileError("an array with an unexpected shape or dtype")
        if dtype.is_object:
            if shape != () or not isinstance(data, list) or len(data) != 1:
                raise UnsafeFileError("an array of Python objects (only numeric arrays are read)")
            self.value, self.holder = data[0], True
            return
        self.value = _from_bytes(data, dtype, shape, "F" if fortran else "C")


def _from_bytes(data, dtype: _Dtype, shape: tuple, order: str) -> np.ndarray:
    if not isinstance(data, bytes | bytearray):
        raise UnsafeFileError("array data that are not raw bytes")
    dt = dtype.numpy()
    if len(data) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
        raise UnsafeFileError("array data of the wrong length for their shape")
    return np.frombuffer(bytes(data), dtype=dt).reshape(shape, order=order).copy()


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise UnsafeFileError("an object that is not a numpy array")
    return _Array()


def _frombuffer(buffer, dtype, shape, order):
    if not isinstance(dtype, _Dtype) or dtype.is_object or order not in ("C", "F"):
        raise UnsafeFileError("an array with an unexpected dtype or order")
    array = _Array()
    array.value = _from_bytes(buffer, dtype, tuple(shape), order)
    return array


def _latin1(text, encoding):
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafeFileError("an unexpected use of _codecs.encode")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    **{(m, "_reconstruct"): _Call(_reconstruct) for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _Call(_frombuffer) for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Call(_Dtype),
    ("_codecs", "encode"): _Call(_latin1),
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the handful of names a pickled dict of numpy arrays uses, to stand-ins written here;
    numpy's and Python's real callables are never reachable, so a crafted file cannot run code."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeFileError(f"it refers to {module}.{name}, which a weights file never needs") from None

    def persistent_load(self, pid):
        raise UnsafeFileError("it uses persistent ids")


def read_npy_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.npy`` file that holds a pickled dict of numeric arrays (the E-LPIPS weights layout, written
    by ``np.save(path, {...})``) **without unpickling it**: the pickle is interpreted by a parser that only
    knows numpy arrays, dicts, lists, strings and numbers.

    Raises :class:`MissingAssetError` for a missing file and :class:`UnsafeFileError` (naming the file) for
    anything else: another layout, object arrays, references to any other Python name (a crafted file that
    would run code), truncated data, or a file over :data:`NPY_MAX_BYTES`.
    """
    from percept.assets import MissingAssetError  # assets imports this module

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingAssetError(f"weights file {path} not found")
    size = path.stat().st_size
    if size > NPY_MAX_BYTES:
        raise UnsafeFileError(f"{path}: {size} bytes is too large for a weights .npy (at most {NPY_MAX_BYTES})")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise UnsafeFileError(f".npy format version {version}")
            if not dtype.hasobject or shape != ():
                raise UnsafeFileError(f"it holds a plain array of shape {shape}, not a pickled dict of arrays")
            loaded = _SafeUnpickler(f, encoding="latin1").load()
    except UnsafeFileError as err:
        raise UnsafeFileError(f"{path} was not loaded: {err}. Use the published weights file") from None
    except (ValueError, EOFError, OSError, pickle.UnpicklingError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, OverflowError) as err:  # fmt: skip
        raise UnsafeFileError(f"{path} is not a readable .npy weights file ({type(err).__name__}: {err})") from None
    if not isinstance(loaded, _Array) or not loaded.holder or not isinstance(loaded.value, dict):
        raise UnsafeFileError(f"{path} does not hold a dict of arrays")
    out = {}
    for key, value in loaded.value.items():
        if not isinstance(key, str) or not isinstance(value, _Array) or not isinstance(value.value, np.ndarray):
            raise UnsafeFileError(f"{path}: entry {key!r} is not a numeric array")
        out[key] = value.value
    return out
