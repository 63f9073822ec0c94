"""Config fields declared once: type, default, allowed values and help text.

A config is a dataclass whose fields are made with :func:`option`. From that one declaration

* :func:`validate` checks every field when the config is built (``__post_init__``), with a
  one-line :class:`UserError` that names the field and what it allows;
* :func:`add_arguments` makes the argparse flags (help text, default shown, choices listed);
* ``from_dict`` (YAML, config.json) goes through the same constructor, so the same checks.

Why a small helper rather than pydantic: the declarations carry the CLI's help and choices
too, choices come from the registries (datasets, architectures, methods, ...) at validation
time, and the messages stay one line in the CLI's own words; no dependency for ~100 lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable, Iterable

from .errors import UserError

_NONE = type(None)


def option(default, help: str, *, choices: Iterable | Callable[[], Iterable] | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, flag: str | None = None, cli: bool = True):
    """A dataclass field with its rule. ``choices`` may be a function (a registry's keys,
    looked up when validating, so declaring a field imports nothing); ``flag`` overrides the
    CLI flag name; ``cli=False`` keeps the field off the command line."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt,
            "flag": flag, "cli": cli}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> list | None:
    c = f.metadata.get("choices")
    if c is None:
        return None
    return list(c() if callable(c) else c)


def _types(cls) -> dict[str, tuple[type, bool]]:
    """field name -> (base type, None allowed), from the (string) annotations."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        args = typing.get_args(hint)
        optional = _NONE in args
        base = next((a for a in args if a is not _NONE), hint) if args else hint
        out[name] = (base, optional)
    return out


def _describe(base: type, f: dataclasses.Field, optional: bool) -> str:
    m = f.metadata
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(base, base.__name__)
    bounds = [f"{op} {m[k]:g}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if m.get(k) is not None]
    text = kind + (" " + " and ".join(bounds) if bounds else "")
    choices = choices_of(f)
    if choices is not None:
        text = "one of " + ", ".join("none" if c is None else str(c) for c in choices)
    return text + (" (or none)" if optional and choices is None else "")


def check_value(cls_name: str, f: dataclasses.Field, base: type, optional: bool, value) -> None:
    def bad():
        raise UserError(f"{f.name} must be {_describe(base, f, optional)}, got {value!r} ({cls_name})")

    if value is None:
        if optional or (choices_of(f) or [0]).count(None):
            return
        bad()
    if base is bool:
        if not isinstance(value, bool):
            bad()
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad()
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad()
    elif base is str:
        if not isinstance(value, str):
            bad()
    m = f.metadata
    if base in (int, float):
        if ((m.get("ge") is not None and value < m["ge"]) or (m.get("gt") is not None and value <= m["gt"])
                or (m.get("le") is not None and value > m["le"]) or (m.get("lt") is not None and value >= m["lt"])):
            bad()
    choices = choices_of(f)
    if choices is not None and value not in choices:
        bad()


def validate(obj) -> None:
    """Check every declared field of dataclass ``obj`` (called from ``__post_init__``)."""
    types = _types(type(obj))
    for f in dataclasses.fields(obj):
        if "help" not in f.metadata:
            continue
        base, optional = types[f.name]
        check_value(type(obj).__name__, f, base, optional, getattr(obj, f.name))


def from_dict(cls, d: dict, source: str = ""):
    """``cls(**d)`` with unknown keys named; errors carry ``source`` (a file, a YAML key)."""
    if not isinstance(d, dict):
        raise UserError(f"{source or cls.__name__}: expected a mapping of fields, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(f"{source + ': ' if source else ''}unknown {cls.__name__} field(s): "
                        f"{', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**d)
    except UserError as err:
        raise UserError(f"{source}: {err}" if source else str(err)) from None


# ---------------------------------------------------------------- the command line

def _parse_none(base: type):
    def parse(text: str):
        if text.lower() == "none":
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__} or none, got {text!r}") from None
    parse.__name__ = base.__name__
    return parse


def add_arguments(group, cls, skip: Iterable[str] = (), defaults: dict | None = None) -> None:
    """One flag per declared field of ``cls`` (``--field-name``), help with the default shown."""
    types = _types(cls)
    skip, defaults = set(skip), defaults or {}
    for f in dataclasses.fields(cls):
        m = f.metadata
        if f.name in skip or not m.get("cli", False):
            continue
        base, optional = types[f.name]
        default = defaults.get(f.name, f.default)
        flag = m.get("flag") or "--" + f.name.replace("_", "-")
        choices = choices_of(f)
        show = "none" if default is None else default
        if base is bool:
            if default:
                no = "--no-" + flag[2:]
                group.add_argument(no, dest=f.name, action="store_false", default=True,
                                   help=f"{m['help']} (default: on; this flag turns it off)")
            else:
                group.add_argument(flag, dest=f.name, action="store_true", default=False,
                                   help=f"{m['help']} (default: off)")
            continue
        kwargs = {"dest": f.name, "default": default}
        if choices is not None:
            names = ["none" if c is None else str(c) for c in choices]
            # the config checks the choice (aliases allowed, one-line message), not argparse
            kwargs.update(metavar="{" + ",".join(names) + "}",
                          type=(lambda s: None if s == "none" else s) if None in choices else base,
                          help=f"{m['help']}; one of: {', '.join(names)} (default: {show})")
        else:
            kwargs.update(type=_parse_none(base) if optional else base, metavar=f.name.upper(),
                          help=f"{m['help']} ({_describe(base, f, optional)}; default: {show})")
        group.add_argument(flag, **kwargs)


def from_args(cls, args: argparse.Namespace, **overrides):
    """Build ``cls`` from the parsed flags it declared (plus ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
