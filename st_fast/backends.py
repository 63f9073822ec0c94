"""One registry for every fast path: its backends, how each is detected, which one runs.

A fast path (``FastPath``) is one operation with several implementations, e.g. the exact
t-SNE iterations (C++ CPU op, Triton kernels, torch reference). Each ``Backend`` declares

* ``runs_on``: can it take tensors of a device type (cheap, asked per call: it may read the
  environment, as Triton's interpreter switch);
* ``detect``: can it exist on this machine (package importable, extension builds)? Run on
  first need (only for a device it runs on), once per process, and cached; a csrc/ extension
  is built here (``built=True``);
* ``takes`` / ``fallback``: limits on the inputs (dtype, layout, size) and the backend that
  takes the inputs it does not.

``select`` returns a ``Choice``: the backend and why; callers keep it (nothing here remembers
what ran last). When "auto" passes over a built backend whose build failed, a warning says
why, once per process. The owners of the fast paths (cluster, augment, optim) declare them on
import; nothing here imports them. ``st-fast doctor`` prints the registry.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from .errors import UserError

Reason = str | None  # None: usable; otherwise why not
NOT_CHECKED = "not checked (built on first use)"  # status(build=False) of an unbuilt extension

_PATHS: dict[str, FastPath] = {}


class BackendUnavailableWarning(UserWarning):
    """A backend "auto" would have used cannot run here; said once per process and backend."""


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    detect: Callable[[], Reason] | None = None  # once per process (may build)
    runs_on: Callable[[str], Reason] | None = None  # per call: device type -> reason
    takes: Callable[..., Reason] | None = None  # per call: the inputs -> reason
    fallback: str | None = None  # takes what ``takes`` refuses
    built: bool = False  # compiled on demand from csrc/


class Choice(NamedTuple):
    name: str
    why: str  # "requested", or "auto: ..." with what was skipped and why


def device_type(device) -> str:
    """ "cpu", "cuda", ... of a torch.device or a device string."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def only_on(*types: str) -> Callable[[str], Reason]:
    """A ``runs_on`` for backends that take tensors of these device types only."""
    wanted = " or ".join(t.upper() for t in types)
    return lambda t: None if t in types else f"needs {wanted} tensors"


def _device_missing(kind: str) -> Reason:
    if kind != "cuda":
        return None
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU is visible"


class FastPath:
    """One operation and its backends; ``auto`` maps a device type ("*": mixed) to the order
    "auto" tries. Backends outside that order run only when asked for by name."""

    def __init__(
        self, name: str, title: str, auto: Mapping[str, tuple[str, ...]], register: bool = True
    ):
        if register and name in _PATHS:
            raise ValueError(f"fast path {name!r} is declared twice")
        self.name = name
        self.title = title  # starts every message, e.g. "FusedSGD"
        self.auto = dict(auto)
        self.backends: dict[str, Backend] = {}
        self._detected: dict[str, Reason] = {}
        self._reported: set[str] = set()
        self._lock = threading.RLock()
        if register:  # unregistered paths: for tests
            _PATHS[name] = self

    def add(self, name: str, summary: str, **declaration) -> Backend:
        backend = self.backends[name] = Backend(name, summary, **declaration)
        return backend

    # ------------------------------------------------------------------ availability

    def status(self, name: str, *, build: bool = True) -> Reason:
        """Why ``name`` cannot exist here (None: it can); detected once, then cached.
        ``build=False`` does not start a build: an unbuilt extension reads "not checked"."""
        with self._lock:
            if name not in self._detected:
                backend = self.backends[name]
                if backend.built and not build:
                    return NOT_CHECKED
                try:
                    reason = backend.detect() if backend.detect else None
                except Exception as exc:  # a detector that breaks is a reason, not a crash
                    reason = f"detection failed: {type(exc).__name__}: {exc}"
                self._detected[name] = reason
            return self._detected[name]

    def reason(self, name: str, device="cpu", *, build: bool = True) -> Reason:
        """Why ``name`` cannot take tensors on ``device`` here; None if it can."""
        return self._why_not(name, device_type(device), build)[0]

    def _why_not(self, name: str, kind: str, build: bool = True) -> tuple[Reason, bool]:
        """(reason, whether it is the backend's own detection that failed)."""
        backend = self.backends[name]
        # cheapest first: a backend that cannot take this device is never built for it
        elsewhere = _device_missing(kind) or (backend.runs_on(kind) if backend.runs_on else None)
        if elsewhere:
            return elsewhere, False
        detected = self.status(name, build=build)
        return detected, detected is not None

    def explain(self, device="cpu", *, build: bool = True) -> dict[str, Reason]:
        """Every backend -> None if it can run on ``device`` here, else why not."""
        return {name: self.reason(name, device, build=build) for name in self.backends}

    def available(self, device="cpu") -> list[str]:
        """Backends usable on ``device``: "auto"'s order first, then the others."""
        order = list(self.auto.get(device_type(device), ()))
        order += [n for n in self.backends if n not in order]
        return [n for n in order if self.reason(n, device) is None]

    # ------------------------------------------------------------------ selection

    def select(
        self,
        prefer: str = "auto",
        devices: Iterable = ("cpu",),
        *,
        order: Iterable[str] | None = None,
        skip: Mapping[str, str] | None = None,
    ) -> Choice:
        """The backend to run for tensors on ``devices``: ``prefer`` if it can (UserError with
        the reason if not), or with "auto" the first usable of ``order`` (default: this
        path's order for the device type) that ``skip`` does not rule out."""
        kinds = sorted({device_type(d) for d in devices}) or ["cpu"]
        if prefer != "auto":
            return self._requested(prefer, kinds)
        if order is None:
            order = self.auto.get(kinds[0] if len(kinds) == 1 else "*", self.auto.get("*", ()))
        skipped, failed_builds = [], []
        for name in order:
            if skip and name in skip:
                skipped.append(f"{name}: {skip[name]}")
                continue
            reason, detection = next(
                (r for k in kinds if (r := self._why_not(name, k))[0]), (None, False)
            )
            if reason is None:
                for failed, why in failed_builds:
                    self._report(failed, f"backend {failed!r} cannot run: {why}; using {name!r}")
                why = "auto: first usable for " + "+".join(kinds)
                return Choice(name, why + (f" (skipped {'; '.join(skipped)})" if skipped else ""))
            skipped.append(f"{name}: {reason}")
            if detection and self.backends[name].built:
                failed_builds.append((name, reason))
        raise UserError(f"{self.title}: no backend can run here ({'; '.join(skipped)})")

    def _requested(self, name: str, kinds: list[str]) -> Choice:
        if name not in self.backends:
            raise UserError(
                f"{self.title} backend {name!r} is unknown; choose auto or one of "
                f"{', '.join(self.backends)}"
            )
        for kind in kinds:
            reason = self.reason(name, kind)
            if reason is not None:
                raise UserError(
                    f"{self.title} backend {name!r} cannot run here: {reason} "
                    f"(usable here: {', '.join(self.available(kind)) or 'none'}; 'auto' picks one)"
                )
        return Choice(name, "requested")

    def fit(self, name: str, **inputs) -> str:
        """``name``, or the first of its fallbacks that takes ``inputs`` (e.g. a dtype)."""
        backend = self.backends[name]
        while backend.takes is not None and (reason := backend.takes(**inputs)) is not None:
            if backend.fallback is None:
                raise UserError(f"{self.title} backend {backend.name!r}: {reason}")
            backend = self.backends[backend.fallback]
        return backend.name

    # ------------------------------------------------------------------ failures

    def mark_failed(self, name: str, reason: str) -> None:
        """A backend that broke while running (e.g. a kernel that does not compile for this
        GPU): later selections skip it, and the warning says so once."""
        with self._lock:
            self._detected[name] = reason
        self._report(name, f"backend {name!r} failed: {reason}; it is skipped from now on")

    def _report(self, name: str, message: str) -> None:
        with self._lock:
            if name in self._reported:
                return
            self._reported.add(name)
        warnings.warn(
            f"{self.title}: {message}",
            BackendUnavailableWarning,
            stacklevel=4,
        )

    @contextmanager
    def disabled(self, name: str, reason: str = "disabled") -> Iterator[None]:
        """Treat ``name`` as unavailable for ``reason`` inside the block (tests, pinning);
        its once-per-process report is fresh inside and restored after."""
        with self._lock:
            saved = self._detected.get(name, _UNSET), name in self._reported
            self._detected[name] = reason
            self._reported.discard(name)
        try:
            yield
        finally:
            with self._lock:
                if saved[0] is _UNSET:
                    self._detected.pop(name, None)
                else:
                    self._detected[name] = saved[0]
                if saved[1]:
                    self._reported.add(name)
                else:
                    self._reported.discard(name)

    # ------------------------------------------------------------------ description

    def describe(self, devices: Iterable[str] = ("cpu", "cuda"), *, build: bool = True) -> dict:
        """A plain dict (for ``st-fast doctor --json``): the backends and where each runs."""
        devices = list(devices)
        return {
            "name": self.name,
            "title": self.title,
            "auto": {k: list(v) for k, v in self.auto.items()},
            "backends": [
                {
                    "name": b.name,
                    "summary": b.summary,
                    "built": b.built,
                    "detected": self.status(b.name, build=build),
                    "devices": {d: self.reason(b.name, d, build=build) for d in devices},
                }
                for b in self.backends.values()
            ],
        }


_UNSET = object()


def fast_paths() -> list[FastPath]:
    """Every declared fast path, in declaration order (import the owners first)."""
    return list(_PATHS.values())


def get(name: str) -> FastPath:
    try:
        return _PATHS[name]
    except KeyError:
        raise UserError(f"no fast path {name!r}; declared: {', '.join(_PATHS)}") from None
