"""TextStream: token bytes in, whole characters out, stop strings cut out."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from llm_experiment.engine.textstream import TextStream


def run(stream: TextStream, tokens: list[bytes]) -> str:
    """Everything the stream releases, as the engine would send it."""
    return "".join(stream.feed(t) for t in tokens) + stream.flush()


def test_tokens_come_out_as_text():
    tokens = [b"Hel", b"lo, ", "wörld".encode(), b"!"]
    assert run(TextStream(), tokens) == "Hello, wörld!"


def test_a_character_split_across_tokens_waits_until_it_is_whole():
    stream = TextStream()
    emoji = "👋".encode()  # four bytes
    assert stream.feed(b"hi " + emoji[:1]) == "hi "
    assert stream.feed(emoji[1:3]) == ""
    assert stream.feed(emoji[3:]) == "👋"
    assert stream.flush() == ""


def test_stop_string_is_cut_out_with_everything_after_it():
    stream = TextStream(stop=["<|im_end|>"])
    out = run(stream, [b"The answer", b" is 4.<|im", b"_end|>", b" Next question"])
    assert out == "The answer is 4."
    assert stream.stopped


def test_text_that_might_start_a_stop_string_is_held_back_until_it_does_not():
    stream = TextStream(stop=["</s>"])
    assert stream.feed(b"a <") == "a "  # "<" could begin "</s>"
    assert stream.feed(b"b") == "<b"  # "<b" cannot
    assert stream.feed(b" </") == " "
    assert stream.flush() == "</"  # generation ended: what was held is released
    assert not stream.stopped


def test_the_earliest_of_several_stop_strings_wins():
    stream = TextStream(stop=["STOP", "\n\n"])
    assert run(stream, [b"one\n\ntwo STOP three"]) == "one"


# Random text, stop strings and token boundaries. Characters of 1, 2 and 4 bytes, so that
# boundaries fall inside characters, and a small alphabet, so that stop strings occur often.
ALPHABET = "ab é👋"


@settings(max_examples=200, deadline=None)
@given(text=st.text(ALPHABET, max_size=30), stops=st.lists(st.text(ALPHABET, min_size=1, max_size=3), max_size=3),
       data=st.data())
def test_output_is_the_text_before_the_first_stop(text, stops, data):
    # A stop string found *inside* another one (not at its start) can end first, so where the
    # text is cut would depend on the tokens (Ollama behaves the same). Leave those cases out.
    assume(not any(a != b and b in a[1:] for a in stops for b in stops))
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    tokens = [raw[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw)], strict=True)]

    found = [text.find(s) for s in stops if s in text]
    expected = text[: min(found)] if found else text

    stream = TextStream(stop=stops)
    assert run(stream, tokens) == expected
    assert stream.stopped == bool(found)
