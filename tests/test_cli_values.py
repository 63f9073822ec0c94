"""KEY=VALUE flags: `st-fast poison --param` and `st-fast train --defence-param` share one rule."""

import re

import pytest

from st_fast.commands.poison import _params
from st_fast.commands.train import parse_defence_params
from st_fast.commands.values import parse_key_values, parse_value
from st_fast.errors import UserError


@pytest.mark.parametrize("text, value", [
    ("64", 64), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True), ("null", None),
    ("[1, 3.5]", [1, 3.5]), ("8/255", 8 / 255), ("linf", "linf"), ("a/b", "a/b"), ("1/0", "1/0"),
])
def test_values_are_json_then_a_fraction_then_text(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("parse", [_params, parse_defence_params])
def test_both_flags_parse_alike(parse):
    assert parse(["eps=8/255", "kl-targets=[1, 3]", "norm=linf"]) == \
        {"eps": 8 / 255, "kl_targets": [1, 3], "norm": "linf"}


@pytest.mark.parametrize("items, message", [
    (["width"], "--x wants KEY=VALUE (e.g. width=64), got 'width'"),
    (["=3"], "wants KEY=VALUE"),
    (["targets=[1, 3"], "--x targets: '[1, 3' is not a value"),
])
def test_bad_items_are_one_line(items, message):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        parse_key_values(items, "--x", "width=64")
    assert "\n" not in str(err.value)
