"""Reading and writing files safely: nothing read runs code, nothing written is half-written.

* :func:`load_torch_file` reads torch files with ``weights_only=True`` (tensors and plain
  containers only; a pickle that would build other objects is refused, never run) and turns
  every failure into one line naming the file and what it is, never torch's advice to retry
  the unsafe way.
* :func:`restricted_unpickle` reads the official CIFAR python batches (a pickle format)
  allowing only the numpy and builtin names such a batch contains.
* ``atomic_*`` write to a temporary file beside the target and rename it over the target;
  the result gets the mode ``open()`` would give (0666 minus the umask), not mkstemp's 0600.
* :func:`check_writable` says, before expensive work, whether an output path can be written.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

# ---------------------------------------------------------------- reading

def load_torch_file(path: str | os.PathLike, what: str, map_location="cpu", hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors. ``what`` names the kind of
    file for the message ("checkpoint", "poisoned-set file", ...); ``hint`` says what to do."""
    path = Path(path)
    hint = f"; {hint}" if hint else ""
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a {what}")
    try:
        open(path, "rb").close()
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "unsupported global" in str(err).lower():
            raise UserError(f"{path}: not a valid {what}: it holds Python objects that an st_fast "
                            f"{what} never contains, and loading them could run code, so it was "
                            f"not loaded{hint}") from None
        raise UserError(f"{path}: not a valid {what} (not a torch file, or damaged){hint}") from None
    except Exception as err:  # any parse failure of an untrusted file: say what it is, one line
        raise UserError(f"{path}: not a valid {what} (not a torch file, or truncated: "
                        f"{type(err).__name__}){hint}") from None


# Everything an official CIFAR-10/100 python batch pickles: a dict of bytes/str keys, numpy
# uint8 data, lists of ints and strings.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("_codecs", "encode"),   # how protocol 2 stores bytes: a pure function, runs nothing
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def restricted_unpickle(path: str | os.PathLike, what: str) -> Any:
    """A pickle of builtin containers and numpy arrays only (the CIFAR batch format)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: not a valid {what} ({err}; such a file holds only arrays and "
                        "lists, and loading other objects could run code); delete it and fetch "
                        "it again") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(f"{path}: not a valid {what} (damaged: {type(err).__name__}); delete it "
                        "and fetch it again") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- writing

def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise one line if ``path`` (a file to be written, or a directory to write into) cannot be
    written: a parent that is a file, a read-only or missing-permission directory. Creates
    nothing except the directories ``path`` itself needs (which are checked by creating them)."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            break
    if parent.exists() and not parent.is_dir() and parent != path:
        raise UserError(f"{path}: cannot write the {what} there: {parent} is a file, not a directory")
    if path.is_dir() or not path.suffix:
        target_dir = path
    else:
        target_dir = path.parent
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".st-fast-write-test.", dir=target_dir)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise UserError(f"{path}: cannot write the {what} there: a file stands where a directory "
                        "is needed") from None
    except NotADirectoryError:
        raise UserError(f"{path}: cannot write the {what} there: a parent is a file, not a directory") from None
    except OSError as err:
        raise UserError(f"{target_dir}: cannot write the {what} there ({err.strerror or err}); "
                        "choose another location") from None
    if path.exists() and path.is_file() and not os.access(path, os.W_OK):
        raise UserError(f"{path}: the {what} exists and is not writable")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success.

    A crash mid-write leaves the old file (or none), never a half-written one. The file ends
    with the mode a plain ``open()`` would have given it (so colleagues can read results).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise UserError(f"{path}: cannot write it ({err.strerror or err})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):   # no space, read-only, quota: the path and the reason
            raise UserError(f"{path}: cannot write it ({err.strerror or err}); nothing was "
                            "written") from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text of dict rows; list values are joined with ';' so each row stays one line."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (";".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in val)
                             if isinstance(val, (list, tuple)) else val) for k, val in r.items()})
    return buf.getvalue()


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
