"""Names in registries: one rule for aliases and for the message an unknown name gets."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import UserError


def canonical(name: str, names: Iterable[str], aliases: dict[str, str], kind: str, strict: bool = True) -> str:
    """The registered name for ``name`` or one of its aliases (case and _ / - do not matter);
    ``strict=False`` returns an unknown name unchanged, for a validator to report."""
    names = list(names)
    key = str(name).lower().replace("_", "-")
    key = aliases.get(key, key)
    if key in names:
        return key
    if not strict:
        return name
    raise UserError(f"unknown {kind} {name!r}; choose one of: {', '.join(names)}")
