"""KEY=VALUE flags (`st-fast poison --param`, `st-fast train --defence-param`): one rule for both.

A value is JSON when it parses as JSON (numbers, true/false, null, lists such as [1.0, 3.0]),
a fraction such as 8/255 (a budget in grey levels), and otherwise the text itself; text that
opens a list or mapping but is not JSON is refused rather than passed on as a string.
"""

from __future__ import annotations

import json

from ..errors import UserError


def parse_value(text: str, what: str = "value"):
    try:
        return json.loads(text)
    except ValueError:
        pass
    num, slash, den = text.partition("/")
    if slash:
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    if text.strip()[:1] in ("[", "{"):
        raise UserError(f"{what}: {text!r} is not a value (a number, a fraction such as 8/255, "
                        f"true/false, or a list such as [1.0, 3.0])")
    return text


def parse_key_values(items: list[str], flag: str, example: str) -> dict:
    """["width=64", "kl-targets=[1, 3]"] -> {"width": 64, "kl_targets": [1, 3]}; one-line errors."""
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"{flag} wants KEY=VALUE (e.g. {example}), got {item!r}")
        params[key] = parse_value(text, f"{flag} {key}")
    return params
