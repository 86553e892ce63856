"""JSON bytes as Go's encoding/json writes them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_experiment.engine.wire import dumps, go_float


@pytest.mark.parametrize(("value", "go"), [
    (100000.0, "100000"), (1e-05, "0.00001"), (1e-06, "0.000001"), (1e-07, "1e-7"), (-2.5e-09, "-2.5e-9"),
    (1e20, "100000000000000000000"), (1e21, "1e+21"), (0.0, "0"), (3.0, "3"), (0.1, "0.1"), (1e-100, "1e-100"),
    (1.2345678901234568e16, "12345678901234568"),
])
def test_floats_as_go_writes_them(value, go):
    assert go_float(value) == go


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_floats_read_back_as_the_same_number(value):
    assert float(go_float(value)) == value


def test_dumps_uses_go_floats_and_escapes():
    expected = '{"x":[1,2,{"y":0.00001}],"s":"\\u003ca\\u0026b\\u003e"}'
    assert dumps({"x": [1.0, 2, {"y": 1e-05}], "s": "<a&b>"}) == expected
    assert json.loads(dumps({"n": 1e-7})) == {"n": 1e-7}
