"""The class roster: who may use the classroom gateway, and with which key.

One SQLite file holds the members (students and instructors) and, for each, a hash of their key;
never the key itself. A key is shown exactly once, when it is made (``add_student``, ``rotate``,
``import_csv``), and the instructor hands it out. A student then sets it where their client sends it
as ``Authorization: Bearer <key>``: ``OLLAMA_API_KEY`` for the ``ollama`` client, ``api_key`` for the
``openai`` client. The gateway asks :meth:`Roster.authenticate` who a key belongs to::

    roster = Roster("class.sqlite")
    key = roster.add_student("alice")       # "llmx_..." : give it to Alice, it is not stored
    roster.authenticate(key)                # Member(name='alice', role='student', ...)
    roster.revoke("alice")
    roster.authenticate(key)                # None

Every call opens its own connection, so one ``Roster`` is safe from several threads, and the
instructor's command line can add students while the gateway runs (SQLite's WAL mode lets readers
and a writer work at once).
"""

from __future__ import annotations

import contextlib
import csv
import hmac
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

_REMEMBERED = 4096  # key hashes authenticate() remembers between changes of the roster
KEY_PREFIX = "llmx_"  # recognisable in a notebook, a log or a secret scanner; never a valid Ollama name
STUDENT, INSTRUCTOR, WORKER = "student", "instructor", "worker"  # workers pull tasks from the task queue
NAME_RULE = "1-32 lowercase letters, digits, '-' or '_', starting with a letter, digit or '_'"
# A member's name is the namespace of their models ("alice/mymodel"), so it must be a valid Ollama
# namespace (protocol.parse_name) as well: no leading "-", no "." and nothing outside ASCII.
_NAME = re.compile(r"[a-z0-9_][a-z0-9_-]{0,31}")
# "library" is the namespace of Ollama's base models: a student by that name would own them all.
RESERVED_NAMES = frozenset({"library"})


class RosterError(ValueError):
    """A roster operation that cannot be done: a bad or duplicate name, an unknown member."""


@dataclass(frozen=True)
class Member:
    """One person on the roster. ``revoked`` is when their key was revoked, or ``None``."""

    name: str
    role: str  # STUDENT or INSTRUCTOR
    created: datetime
    revoked: datetime | None = None

    @property
    def is_instructor(self) -> bool:
        """Instructors pass the gateway's policy unchanged."""
        return self.role == INSTRUCTOR


def check_name(name: str) -> str:
    """``name`` if it may be a member's name, else :class:`RosterError` saying what is wrong."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        hint = ""
        if isinstance(name, str) and _NAME.fullmatch(name.strip().lower()):
            hint = f': try "{name.strip().lower()}"'
        raise RosterError(f"invalid member name {name!r}: use {NAME_RULE}{hint}")
    if name in RESERVED_NAMES:
        raise RosterError(f'"{name}" is reserved: it is the namespace of the base models')
    return name


def bearer_key(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header, or ``None`` if there is none."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class Roster:
    """Members and hashed keys in the SQLite file ``path`` (made, with its secret salt, on first use)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        new = not self.path.exists()
        with self._connect() as conn:
            if new:  # hashes and the salt are nobody else's business (SQLite gives -wal/-shm the same mode)
                os.chmod(self.path, 0o600)
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once, kept in the file
            _allow_workers(conn)
            conn.executescript(_SCHEMA)
            # INSERT OR IGNORE: two processes opening a new roster at once agree on one salt
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)", (secrets.token_bytes(32),))
            self._salt: bytes = conn.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()[0]
        # authenticate() runs on every request: it keeps one connection open and remembers the members it
        # found, until SQLite's data_version says that anyone (another process too) has changed the file.
        self._reader: sqlite3.Connection | None = None
        self._found: dict[bytes, tuple[str, str, str, str | None, bytes] | None] = {}
        self._version: int | None = None
        self._reading = threading.Lock()

    # members -----------------------------------------------------------------------------------

    def add_student(self, name: str) -> str:
        """Add a student; returns their new key. Shown this once: only its hash is kept."""
        return self._add(name, STUDENT)

    def add_instructor(self, name: str) -> str:
        """Add an instructor (the policy lets them do everything); returns their new key."""
        return self._add(name, INSTRUCTOR)

    def add_worker(self, name: str) -> str:
        """Add a worker: a machine that pulls tasks from the task queue (``llm-experiment worker``); returns its key.

        At the classroom gateway a worker key has a student's rights, named after the worker."""
        return self._add(name, WORKER)

    def revoke(self, name: str) -> None:
        """Stop ``name``'s key from working. Revoking twice is harmless; :meth:`rotate` re-admits."""
        with self._connect() as conn:
            found = conn.execute("UPDATE members SET revoked = COALESCE(revoked, ?) WHERE name = ?",
                                 (_now(), name)).rowcount
        if not found:
            raise RosterError(f'no member named "{name}"')

    def rotate(self, name: str) -> str:
        """Give ``name`` a new key (the old one stops working) and lift a revocation; returns the key."""
        key = _new_key()
        with self._connect() as conn:
            found = conn.execute("UPDATE members SET key_hash = ?, revoked = NULL WHERE name = ?",
                                 (self._hash(key), name)).rowcount
        if not found:
            raise RosterError(f'no member named "{name}"')
        return key

    def list(self) -> list[Member]:
        """Every member, revoked ones included, in the order they were added."""
        with self._connect() as conn:
            rows = conn.execute("SELECT name, role, created, revoked FROM members ORDER BY rowid").fetchall()
        return [_member(*row) for row in rows]

    def authenticate(self, key: str | None) -> Member | None:
        """The active member whose key this is, or ``None`` (unknown, malformed or revoked key)."""
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > 100:
            return None
        digest = self._hash(key)
        row = self._lookup(digest)
        # The index lookup finds the row by hash. Comparing again in constant time costs nothing and
        # keeps the rule simple: secrets are never compared with ==. (Timing the lookup can only
        # reveal something about a hash, and a hash of a random 192-bit key gives nothing away.)
        if row is None or not hmac.compare_digest(row[4], digest) or row[3] is not None:
            return None
        return _member(*row[:4])

    def _lookup(self, digest: bytes) -> tuple[str, str, str, str | None, bytes] | None:
        """The member row with this key hash, remembered until the roster file changes."""
        with self._reading:
            if self._reader is None:
                self._reader = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            # data_version changes when any other connection, in any process, commits to the file.
            version = self._reader.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._found.clear()
                self._version = version
            if digest not in self._found:
                if len(self._found) >= _REMEMBERED:  # wrong keys are remembered too: bound the table
                    self._found.clear()
                self._found[digest] = self._reader.execute(
                    "SELECT name, role, created, revoked, key_hash FROM members WHERE key_hash = ?",
                    (digest,)).fetchone()
            return self._found[digest]

    # CSV ---------------------------------------------------------------------------------------

    def import_csv(self, path_in: str | os.PathLike[str], path_out: str | os.PathLike[str], *,
                   overwrite: bool = False) -> int:
        """Add the students named in ``path_in`` and write ``name,key`` rows to ``path_out``; returns how many.

        ``path_in`` has one name per row (the first column; a header ``name`` is skipped, blank rows
        too). All names are checked first: one bad or duplicate name adds nobody. ``path_out`` holds
        the only copy of the keys, so it is made readable by its owner only, and an existing file is
        refused unless ``overwrite`` is true.
        """
        with open(path_in, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM
            rows = [row for row in csv.reader(f) if row and row[0].strip()]
        if rows and rows[0][0].strip().lower() == "name":
            rows = rows[1:]
        names: list[str] = []
        for number, row in enumerate(rows, start=1):
            try:
                names.append(check_name(row[0].strip()))
            except RosterError as e:
                raise RosterError(f"{path_in}, name {number}: {e}") from None
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RosterError(f"{path_in} names these more than once: {', '.join(duplicates)}")

        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path_out, flags, 0o600)
        except FileExistsError:
            raise FileExistsError(f"{path_out} exists; it may hold keys handed out already. "
                                  "Choose another file, or pass overwrite=True (--force) to replace it") from None
        keys = [(name, _new_key()) for name in names]
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as out, self._connect() as conn:
                taken = _taken(conn, names)
                if taken:
                    raise RosterError(f"already on the roster: {', '.join(taken)}")
                conn.executemany("INSERT INTO members (name, role, key_hash, created) VALUES (?, ?, ?, ?)",
                                 [(name, STUDENT, self._hash(key), _now()) for name, key in keys])
                writer = csv.writer(out)
                writer.writerow(["name", "key"])
                writer.writerows(keys)
                out.flush()
                os.fsync(out.fileno())  # the keys are on disk before the roster commits to them
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path_out)  # no half-written file of keys that do not work
            raise
        return len(keys)

    # internals ---------------------------------------------------------------------------------

    def _add(self, name: str, role: str) -> str:
        check_name(name)
        key = _new_key()
        try:
            with self._connect() as conn:
                conn.execute("INSERT INTO members (name, role, key_hash, created) VALUES (?, ?, ?, ?)",
                             (name, role, self._hash(key), _now()))
        except sqlite3.IntegrityError:
            raise RosterError(f'"{name}" is already on the roster: use rotate("{name}") for a new key') from None
        return key

    def _hash(self, key: str) -> bytes:
        # HMAC-SHA256 with the roster's secret salt, not bcrypt/scrypt: those slow hashes protect
        # guessable passwords from offline guessing, but a key has 192 random bits, beyond any
        # guessing at whatever speed. A fast, deterministic hash lets the gateway find a member by
        # hash in one indexed query on every request, where bcrypt would cost ~100 ms per request
        # and, salted per key, could not be looked up at all.
        return hmac.digest(self._salt, key.encode("utf-8", "surrogatepass"), "sha256")  # OpenSSL's one-shot HMAC

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own for one call, committed (or rolled back) and closed at the end."""
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            with conn:  # one transaction
                yield conn
        finally:
            conn.close()


_MEMBERS = """
CREATE TABLE IF NOT EXISTS members (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('student', 'instructor', 'worker')),
    key_hash BLOB NOT NULL UNIQUE,
    created TEXT NOT NULL,
    revoked TEXT
)"""
_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);" + _MEMBERS + ";"


def _allow_workers(conn: sqlite3.Connection) -> None:
    """Rosters made before workers existed only allow two roles: copy their members into today's table."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'members'").fetchone()
    if row is None or "'worker'" in row[0]:
        return
    conn.execute("BEGIN IMMEDIATE")  # one transaction (committed by the caller's `with conn`): all or nothing
    conn.execute("ALTER TABLE members RENAME TO members_before_workers")
    conn.execute(_MEMBERS)
    conn.execute("INSERT INTO members SELECT name, role, key_hash, created, revoked FROM members_before_workers")
    conn.execute("DROP TABLE members_before_workers")


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)  # 24 random bytes: 192 bits, 32 characters


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _member(name: str, role: str, created: str, revoked: str | None) -> Member:
    return Member(name, role, datetime.fromisoformat(created), datetime.fromisoformat(revoked) if revoked else None)


def _taken(conn: sqlite3.Connection, names: list[str]) -> list[str]:
    existing = {row[0] for row in conn.execute("SELECT name FROM members")}
    return [name for name in names if name in existing]
