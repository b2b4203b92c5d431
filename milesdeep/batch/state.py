"""The run's memory: a small SQLite database beside the outputs, one row per finished file.

A row is written only after every output of the file has been renamed into place, so a run
killed at any moment leaves either a complete row for a file whose outputs are all there, or
no row (and the file is simply done again). A row counts as "done" for a later run only if
the input's size and modification time, the model and the options are all the same and
every output it lists still exists.

The database sits in each output directory as `.milesdeep-state.sqlite` (WAL journal, so a
reader never waits for the writer, and a killed writer loses at most its last transaction).
It is created on the first finished file, never by a run that finished nothing (or, for a
command that must not replace files it did not write, on its first claim: `claim` records
which input an output path belongs to before that output is written, so a later run may
replace the outputs an interrupted run left, and only those, without --overwrite).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milesdeep.errors import MilesDeepError

STATE_NAME = ".milesdeep-state.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS done (
    path BLOB NOT NULL,          -- the input's absolute path, as bytes (any file name fits)
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    model_key TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    command TEXT NOT NULL,
    outputs TEXT NOT NULL,       -- JSON list of output paths
    seconds REAL NOT NULL,       -- seconds of video processed
    finished REAL NOT NULL,      -- Unix time
    PRIMARY KEY (path, model_key, options_hash)
)
"""

# Which input each output path was (or is being) written for: recorded *before* the output is
# written, so it survives a run killed between writing an output and finishing the file.
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    output BLOB PRIMARY KEY,     -- absolute output path, as bytes
    input BLOB NOT NULL          -- absolute input path, as bytes
)
"""


def options_hash(command: str, options: dict[str, Any]) -> str:
    """A stable digest of the options that change a command's outputs."""
    text = json.dumps({"command": command, **options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FileKey:
    """What makes a finished file count as done: the input as it was when it was read, and
    the model and options it was processed with."""

    path: Path  # absolute
    size: int
    mtime_ns: int
    model_key: str
    options_hash: str

    @classmethod
    def of(cls, path: Path, st: os.stat_result, model_key: str, opts_hash: str) -> FileKey:
        return cls(Path(os.path.abspath(path)), st.st_size, st.st_mtime_ns, model_key,
                   opts_hash)


def _db_error(e: sqlite3.Error, path: Path) -> MilesDeepError:
    folder = path.parent
    if not path.exists() and folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        # The outputs could not go there either: say so, not what we keep beside them.
        return MilesDeepError("the output directory is not writable; choose another with -o",
                              folder)
    return MilesDeepError(f"cannot use the run's state database ({e}); check free space and "
                          "permissions, or delete it to start afresh", path)


def _entry(output: Path) -> list[Any]:
    """An output as recorded: its path, size and modification time (a later run with other
    options rewrites the same files, and this row must then no longer count as done)."""
    st = os.stat(output)
    return [os.fsdecode(output), st.st_size, st.st_mtime_ns]


def _path(entry: str | list[Any]) -> Path:
    return Path(entry if isinstance(entry, str) else entry[0])


def _unchanged(entry: str | list[Any]) -> bool:
    """Is the recorded output there as it was written? (Rows of earlier versions hold the
    path alone: there, that it exists.)"""
    try:
        st = os.stat(_path(entry))
    except OSError:
        return False
    return isinstance(entry, str) or (st.st_size, st.st_mtime_ns) == (entry[1], entry[2])


class StateDB:
    """One output directory's state database, opened lazily."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / STATE_NAME
        self._conn: sqlite3.Connection | None = None

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not create and not self.path.exists():
            return None
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.DatabaseError as e:
            raise _db_error(e, self.path) from None
        # Worker processes open the same new database at once. Switching it to WAL needs it
        # to themselves, and SQLite answers "database is locked" at once instead of waiting
        # for that (the busy timeout does not apply): the set-up is tried again meanwhile.
        deadline = time.monotonic() + 30
        while True:
            try:
                self._set_up(conn)
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    conn.close()
                    raise _db_error(e, self.path) from None
                time.sleep(0.02)
            except sqlite3.DatabaseError as e:
                conn.close()
                raise _db_error(e, self.path) from None
        self._conn = conn
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")  # (it stays so: the others skip this)
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            conn.close()
            raise MilesDeepError(f"the state database has schema version {version}, this "
                                 f"program writes {SCHEMA_VERSION}; delete it to start "
                                 "afresh", self.path)
        conn.execute(_SCHEMA)
        conn.execute(_CLAIMS)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def lookup(self, key: FileKey) -> list[Path] | None:
        """The outputs recorded for `key`, if it is done and all of them still exist."""
        try:
            conn = self._connect(create=False)
            if conn is None:
                return None
            row = conn.execute(
                "SELECT size, mtime_ns, outputs FROM done WHERE path=? AND model_key=? AND "
                "options_hash=?", (os.fsencode(key.path), key.model_key, key.options_hash)
            ).fetchone()
        except sqlite3.DatabaseError as e:
            raise _db_error(e, self.path) from None
        if row is None or row[0] != key.size or row[1] != key.mtime_ns:
            return None
        entries = json.loads(row[2])
        return [_path(e) for e in entries] if all(map(_unchanged, entries)) else None

    def record(self, key: FileKey, command: str, outputs: Sequence[Path],
               seconds: float) -> None:
        """Mark `key` done. Call only once every output is in place."""
        try:
            conn = self._connect(create=True)
            assert conn is not None
            conn.execute(
                "INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (os.fsencode(key.path), key.size, key.mtime_ns, key.model_key,
                 key.options_hash, command, json.dumps([_entry(p) for p in outputs]),
                 float(seconds), time.time()),
            )
        except sqlite3.DatabaseError as e:
            raise _db_error(e, self.path) from None

    def claim(self, input_path: Path, outputs: Sequence[Path]) -> None:
        """Record that `outputs` are written for `input_path` (before writing them)."""
        src = os.fsencode(os.path.abspath(input_path))
        try:
            conn = self._connect(create=True)
            assert conn is not None
            conn.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?)",
                             [(os.fsencode(os.path.abspath(o)), src) for o in outputs])
        except sqlite3.DatabaseError as e:
            raise _db_error(e, self.path) from None

    def recorded_for(self, input_path: Path) -> dict[Path, bool]:
        """Every output a finished run recorded for `input_path` (with any model or options),
        and whether it is still there as that run wrote it: the same regular file, size and
        modification time (not a file someone has put at the name since)."""
        try:
            conn = self._connect(create=False)
            if conn is None:
                return {}
            rows = conn.execute("SELECT outputs FROM done WHERE path=?",
                                (os.fsencode(os.path.abspath(input_path)),)).fetchall()
        except sqlite3.DatabaseError as e:
            raise _db_error(e, self.path) from None
        out: dict[Path, bool] = {}
        for (outputs,) in rows:
            for entry in json.loads(outputs):
                a = Path(os.path.abspath(_path(entry)))
                out[a] = out.get(a, False) or (not isinstance(entry, str) and
                                               not os.path.islink(a) and _unchanged(entry))
        return out

    def unclaim(self, input_path: Path, outputs: Sequence[Path]) -> None:
        """Drop `input_path`'s claims on `outputs` (a run that stopped before writing them)."""
        src = os.fsencode(os.path.abspath(input_path))
        try:
            conn = self._connect(create=False)
            if conn is None:
                return
            conn.executemany("DELETE FROM claims WHERE output=? AND input=?",
                             [(os.fsencode(os.path.abspath(o)), src) for o in outputs])
        except sqlite3.DatabaseError as e:
            raise _db_error(e, self.path) from None

    def claimed_by(self, output: Path) -> Path | None:
        """The input `output` was claimed for, if any."""
        try:
            conn = self._connect(create=False)
            if conn is None:
                return None
            row = conn.execute("SELECT input FROM claims WHERE output=?",
                               (os.fsencode(os.path.abspath(output)),)).fetchone()
        except sqlite3.DatabaseError as e:
            raise _db_error(e, self.path) from None
        return Path(os.fsdecode(row[0])) if row is not None else None

    def rows(self) -> list[dict[str, Any]]:
        """Every row (for tests and reports)."""
        conn = self._connect(create=False)
        if conn is None:
            return []
        cur = conn.execute("SELECT path, size, mtime_ns, model_key, options_hash, command, "
                           "outputs, seconds, finished FROM done ORDER BY finished")
        names = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            row = dict(zip(names, r))
            row["path"] = Path(os.fsdecode(row["path"]))
            row["outputs"] = [_path(e) for e in json.loads(row["outputs"])]
            out.append(row)
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class StateBook:
    """The state databases of every output directory a run writes to."""

    def __init__(self) -> None:
        self._dbs: dict[Path, StateDB] = {}

    def db(self, directory: Path) -> StateDB:
        directory = Path(os.path.abspath(directory))
        if directory not in self._dbs:
            self._dbs[directory] = StateDB(directory)
        return self._dbs[directory]

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
