"""iter_ndjson: one JSON object per line, however the bytes are cut into chunks."""

from __future__ import annotations

import io
import json

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment import OllamaError, iter_ndjson
from llm_experiment.ndjson import show_progress

# JSON objects with any unicode text (accents, CJK, emoji: 2- to 4-byte UTF-8 characters).
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20))
objects = st.dictionaries(st.text(max_size=8).filter(lambda k: k != "error"), scalars, max_size=4)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given byte positions (empty chunks allowed, as a socket may give)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=200, deadline=None)
@given(objs=st.lists(objects, max_size=6), blank_lines=st.booleans(), final_newline=st.booleans(), data=st.data())
def test_any_chunking_gives_the_same_objects(objs, blank_lines, final_newline, data):
    lines = [json.dumps(o, ensure_ascii=False) + "\n" for o in objs]
    if blank_lines:
        lines = [line + " \n\r\n" for line in lines]  # blank and whitespace-only lines are skipped
    stream = "".join(lines).encode()
    if not final_newline:
        stream = stream.rstrip(b"\r\n ")  # the last line may come without its newline
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))

    assert list(iter_ndjson(split_at(stream, cuts))) == objs


def test_a_character_split_between_chunks():
    # "é" is two bytes, c3 a9: the first chunk ends between them.
    chunks = [b'{"response": "caf\xc3', b'\xa9"}\n{"done"', b": true}"]
    assert list(iter_ndjson(chunks)) == [{"response": "café"}, {"done": True}]


def test_error_line_raises_after_the_objects_before_it():
    chunks = [b'{"response": "Hel"}\n{"response": "lo"}\n{"error": "model runner crashed"}\n{"response": "!"}\n']
    received = []
    with pytest.raises(OllamaError) as info:
        for obj in iter_ndjson(chunks):
            received.append(obj)
    assert received == [{"response": "Hel"}, {"response": "lo"}]
    assert info.value.status == -1
    assert info.value.message == "model runner crashed"


def test_a_line_that_is_not_json_raises():
    with pytest.raises(OllamaError) as info:
        list(iter_ndjson([b'{"response": "a"}\n<html>Bad Gateway</html>\n']))
    assert "not JSON" in info.value.message


def test_reads_a_requests_response():
    response = requests.models.Response()
    response.status_code = 200
    response.url = "http://127.0.0.1:11434/api/generate"
    response.raw = io.BytesIO('{"response": "日本"}\n{"error": "out of memory"}\n'.encode())

    objects_seen = []
    with pytest.raises(OllamaError) as info:
        objects_seen.extend(iter_ndjson(response))
    assert objects_seen == [{"response": "日本"}]
    assert info.value.status == -1 and info.value.url == response.url


PULL = [{"status": "pulling manifest"},
        {"status": "pulling abc", "digest": "sha256:abc", "total": 2_000_000, "completed": 0},
        {"status": "pulling abc", "digest": "sha256:abc", "total": 2_000_000, "completed": 2_000_000},
        {"status": "verifying sha256 digest"}, {"status": "success"}]


def test_show_progress_draws_a_bar_in_place_and_a_line_per_step():
    shown: list[str] = []
    show_progress(PULL, shown.append)
    assert "".join(shown) == ("  pulling manifest\n"
                              f"\r  pulling abc [{' ' * 30}]   0% of 2 MB"
                              f"\r  pulling abc [{'#' * 30}] 100% of 2 MB"
                              "\n  verifying sha256 digest\n  success\n")


def test_show_progress_ends_the_bar_when_the_stream_fails():
    def statuses():
        yield from PULL[:2]
        raise OllamaError("connection lost", status=-1)

    shown: list[str] = []
    with pytest.raises(OllamaError):
        show_progress(statuses(), shown.append)
    assert shown[-1] == "\n"  # the error will not be printed after the bar on the same line
