"""The classroom roster: keys made once, stored only as hashes, checked in constant time; CSV in and out."""

from __future__ import annotations

import csv
import hmac
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from llm_experiment.classroom import roster as roster_module
from llm_experiment.classroom.roster import KEY_PREFIX, Roster, RosterError, bearer_key, check_name


@pytest.fixture
def roster(tmp_path: Path) -> Roster:
    return Roster(tmp_path / "class.sqlite")


def database_bytes(path: Path) -> bytes:
    """Everything SQLite keeps for the roster: the file, its write-ahead log and shared memory."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_a_new_key_authenticates_its_member(roster: Roster) -> None:
    key = roster.add_student("alice")
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 32
    member = roster.authenticate(key)
    assert member is not None and (member.name, member.role, member.revoked) == ("alice", "student", None)
    assert not member.is_instructor
    teacher = roster.authenticate(roster.add_instructor("teacher"))
    assert teacher is not None and teacher.is_instructor


@pytest.mark.parametrize("key", [None, "", "llmx_", "llmx_wrong", "not-a-key", KEY_PREFIX + "x" * 500, 42,
                                 "llmx_\ud800", "llmx_ключ", "llmx_\x00"])
def test_unknown_and_malformed_keys_fail(roster: Roster, key: object) -> None:
    roster.add_student("alice")
    assert roster.authenticate(key) is None  # type: ignore[arg-type]


def test_a_key_differing_in_one_character_fails(roster: Roster) -> None:
    key = roster.add_student("alice")
    other = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert roster.authenticate(other) is None


def test_keys_are_never_stored_in_plain_text(roster: Roster) -> None:
    keys = [roster.add_student(f"s{i}") for i in range(5)] + [roster.add_instructor("teacher")]
    keys.append(roster.rotate("s0"))
    stored = database_bytes(roster.path)
    assert stored  # the roster did write its file
    for key in keys:
        assert key.encode() not in stored
        assert key[len(KEY_PREFIX):].encode() not in stored  # nor the random part alone
        assert roster.authenticate(key) is not None or key == keys[0]  # s0's first key was rotated away


def test_keys_are_compared_in_constant_time(roster: Roster, monkeypatch: pytest.MonkeyPatch) -> None:
    key = roster.add_student("alice")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(roster_module.hmac, "compare_digest", spy)
    assert roster.authenticate(key) is not None
    assert len(calls) == 1 and isinstance(calls[0][0], bytes) and len(calls[0][0]) == 32  # SHA-256 digests


def test_the_salt_is_kept_so_keys_work_after_reopening(roster: Roster) -> None:
    key = roster.add_student("alice")
    again = Roster(roster.path)
    member = again.authenticate(key)
    assert member is not None and member.name == "alice"


def test_two_rosters_hash_with_different_salts(tmp_path: Path) -> None:
    one, two = Roster(tmp_path / "one.sqlite"), Roster(tmp_path / "two.sqlite")
    assert one._hash("llmx_same") != two._hash("llmx_same")


def test_the_file_is_in_wal_mode_and_private(roster: Roster) -> None:
    with sqlite3.connect(roster.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(os.stat(roster.path).st_mode) == 0o600


@pytest.mark.parametrize("name", ["alice", "a", "bob-2", "_x", "s_01", "x" * 32, "0day"])
def test_valid_names(roster: Roster, name: str) -> None:
    assert check_name(name) == name
    roster.add_student(name)
    assert [m.name for m in roster.list()] == [name]


@pytest.mark.parametrize("name, words", [
    ("Alice", 'try "alice"'), ("", "lowercase"), ("x" * 33, "1-32"), ("-x", "starting with"), ("a.b", "lowercase"),
    ("ali ce", "lowercase"), ("élodie", "lowercase"), ("alice/x", "lowercase"), ("../x", "lowercase"),
    (" bob ", 'try "bob"'), ("library", "reserved"),
])
def test_invalid_names_are_refused_with_the_rule(roster: Roster, name: str, words: str) -> None:
    with pytest.raises(RosterError, match=words):
        roster.add_student(name)
    assert roster.list() == []


def test_a_duplicate_name_is_a_clear_error(roster: Roster) -> None:
    roster.add_student("alice")
    with pytest.raises(RosterError, match=r'"alice" is already on the roster: use rotate\("alice"\)'):
        roster.add_student("alice")
    with pytest.raises(RosterError, match="already on the roster"):
        roster.add_instructor("alice")


def test_revoked_keys_fail(roster: Roster) -> None:
    key = roster.add_student("alice")
    roster.revoke("alice")
    assert roster.authenticate(key) is None
    (alice,) = roster.list()
    assert alice.revoked is not None
    roster.revoke("alice")  # twice is harmless and keeps the first time
    assert roster.list()[0].revoked == alice.revoked
    with pytest.raises(RosterError, match='no member named "bob"'):
        roster.revoke("bob")


def test_rotate_replaces_the_key_and_readmits(roster: Roster) -> None:
    old = roster.add_student("alice")
    roster.revoke("alice")
    new = roster.rotate("alice")
    assert new != old
    assert roster.authenticate(old) is None
    member = roster.authenticate(new)
    assert member is not None and member.revoked is None
    with pytest.raises(RosterError, match="no member"):
        roster.rotate("nobody")


def test_list_keeps_the_order_added(roster: Roster) -> None:
    for name in ["zoe", "adam", "mia"]:
        roster.add_student(name)
    roster.add_instructor("teacher")
    assert [(m.name, m.role) for m in roster.list()] == [
        ("zoe", "student"), ("adam", "student"), ("mia", "student"), ("teacher", "instructor")]
    assert all(m.created.tzinfo is not None for m in roster.list())


# CSV ---------------------------------------------------------------------------------------------

def read_keys(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_import_csv_adds_students_and_writes_their_keys(roster: Roster, tmp_path: Path) -> None:
    names = tmp_path / "names.csv"
    names.write_text("\ufeffname\nalice\n\n  bob  \ncarol,carol@example.org\n", encoding="utf-8")  # BOM, blank row
    out = tmp_path / "keys.csv"
    assert roster.import_csv(names, out) == 3
    rows = read_keys(out)
    assert rows[0] == ["name", "key"] and [r[0] for r in rows[1:]] == ["alice", "bob", "carol"]
    for name, key in rows[1:]:
        member = roster.authenticate(key)
        assert member is not None and member.name == name and member.role == "student"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # the only copy of the keys: the owner's eyes only
    for _, key in rows[1:]:
        assert key.encode() not in database_bytes(roster.path)


def test_import_csv_without_a_header(roster: Roster, tmp_path: Path) -> None:
    names = tmp_path / "names.csv"
    names.write_text("alice\nbob\n")
    assert roster.import_csv(names, tmp_path / "keys.csv") == 2


def test_import_csv_refuses_to_overwrite_keys(roster: Roster, tmp_path: Path) -> None:
    names, out = tmp_path / "names.csv", tmp_path / "keys.csv"
    names.write_text("alice\n")
    out.write_text("keys handed out last week\n")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        roster.import_csv(names, out)
    assert out.read_text() == "keys handed out last week\n" and roster.list() == []
    assert roster.import_csv(names, out, overwrite=True) == 1
    assert read_keys(out)[1][0] == "alice"


@pytest.mark.parametrize("text, words", [
    ("name\nalice\nBob\n", 'name 2: invalid member name .Bob.: .* try "bob"'),
    ("alice\nbob\nalice\n", "more than once: alice"),
    ("alice\nlibrary\n", "reserved"),
])
def test_import_csv_adds_nobody_when_a_name_is_bad(roster: Roster, tmp_path: Path, text: str, words: str) -> None:
    names, out = tmp_path / "names.csv", tmp_path / "keys.csv"
    names.write_text(text)
    with pytest.raises(RosterError, match=words):
        roster.import_csv(names, out)
    assert roster.list() == [] and not out.exists()


def test_import_csv_adds_nobody_when_a_name_is_taken(roster: Roster, tmp_path: Path) -> None:
    roster.add_student("bob")
    names, out = tmp_path / "names.csv", tmp_path / "keys.csv"
    names.write_text("alice\nbob\n")
    with pytest.raises(RosterError, match="already on the roster: bob"):
        roster.import_csv(names, out)
    assert [m.name for m in roster.list()] == ["bob"] and not out.exists()  # no file of keys that do not work


def test_many_threads_at_once(roster: Roster) -> None:
    keys: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            key = roster.add_student(f"s{i}")
            keys[f"s{i}"] = key
            for _ in range(5):
                member = roster.authenticate(key)
                assert member is not None and member.name == f"s{i}"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(roster.list()) == 16


@pytest.mark.parametrize("header, key", [
    ("Bearer llmx_abc", "llmx_abc"), ("bearer   llmx_abc ", "llmx_abc"), ("Basic dXNlcg==", None),
    ("Bearer", None), ("", None), (None, None),
])
def test_bearer_key(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


def test_a_change_from_another_process_counts_at_once_despite_the_remembered_keys(tmp_path):
    """authenticate() remembers members between changes of the file; any change, by anyone, forgets them."""
    # Two Roster objects on one file: their connections are as separate as two processes'.
    gateway, instructor = Roster(tmp_path / "c.sqlite"), Roster(tmp_path / "c.sqlite")
    key = instructor.add_student("alice")
    assert gateway.authenticate(key).name == "alice"
    assert gateway.authenticate(key).name == "alice"  # remembered
    instructor.revoke("alice")
    assert gateway.authenticate(key) is None
    new_key = instructor.rotate("alice")
    assert gateway.authenticate(key) is None and gateway.authenticate(new_key).name == "alice"
    late = instructor.add_student("bob")  # a key unknown a moment ago (and remembered as unknown) works at once
    assert gateway.authenticate(late).name == "bob"


def test_wrong_keys_cannot_grow_the_remembered_table_without_bound(tmp_path):
    roster = Roster(tmp_path / "c.sqlite")
    key = roster.add_student("alice")
    for n in range(roster_module._REMEMBERED + 10):
        assert roster.authenticate(f"llmx_wrong{n}") is None
    assert len(roster._found) <= roster_module._REMEMBERED
    assert roster.authenticate(key).name == "alice"
