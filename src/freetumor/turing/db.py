"""Reader tokens and answers of a Visual Turing Test study, in SQLite.

Tokens are random (``secrets.token_urlsafe``) and stored only as SHA-256 hashes; answers are
written in their own transaction (WAL journal), so they survive a server kill.

Example:
    >>> import tempfile
    >>> study = tempfile.mkdtemp()
    >>> token = add_reader(study, "reader one")
    >>> reader_for_token(study, token)["name"]
    'reader one'
    >>> save_answer(study, reader_for_token(study, token)["id"], "0123456789abcdef", "real", 4)
    >>> [(a["case_id"], a["answer"], a["confidence"]) for a in answers(study)]
    [('0123456789abcdef', 'real', 4)]
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError, InputError

DB_NAME = "readers.sqlite"
ANSWERS = ("real", "synthetic")
CONFIDENCE = (1, 5)  # 1 = guessing, 5 = certain

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reads (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id TEXT NOT NULL,
    answer TEXT NOT NULL CHECK (answer IN ('real', 'synthetic')),
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    updated TEXT NOT NULL,
    PRIMARY KEY (reader_id, case_id)
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def connect(study: str | os.PathLike) -> sqlite3.Connection:
    """Open (and create) the study's database."""
    path = Path(study) / DB_NAME
    if not Path(study).is_dir():
        raise InputError(study, "is not a study folder")
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None)  # autocommit; explicit transactions
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(_SCHEMA)
    return con


def add_reader(study: str | os.PathLike, name: str) -> str:
    """Create a reader; return their token (shown once, stored hashed)."""
    name = str(name).strip()
    if not name or len(name) > 100:
        raise ConfigError("reader name must be 1-100 characters")
    token = secrets.token_urlsafe(24)
    con = connect(study)
    try:
        con.execute("INSERT INTO readers (name, token_sha256, created) VALUES (?, ?, ?)",
                    (name, token_hash(token), _now()))
    except sqlite3.IntegrityError:
        raise ConfigError(f"a reader named {name!r} already exists in {study}") from None
    finally:
        con.close()
    return token


def readers(study: str | os.PathLike) -> list[dict]:
    con = connect(study)
    try:
        return [dict(r) for r in con.execute("SELECT id, name, created FROM readers ORDER BY id")]
    finally:
        con.close()


def reader_for_token(study: str | os.PathLike, token: str | None) -> dict | None:
    """The reader a token belongs to, or ``None``."""
    if not token or len(token) > 200:
        return None
    con = connect(study)
    try:
        row = con.execute("SELECT id, name FROM readers WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
        return dict(row) if row else None
    finally:
        con.close()


def save_answer(study: str | os.PathLike, reader_id: int, case_id: str, answer: str, confidence: int) -> None:
    """Insert or replace one reader's answer for one case (validated)."""
    if answer not in ANSWERS:
        raise ConfigError(f"answer must be one of {', '.join(ANSWERS)}")
    if isinstance(confidence, bool) or not isinstance(confidence, int) or not CONFIDENCE[0] <= confidence <= CONFIDENCE[1]:
        raise ConfigError(f"confidence must be an integer {CONFIDENCE[0]}-{CONFIDENCE[1]}")
    con = connect(study)
    try:
        con.execute("INSERT INTO reads (reader_id, case_id, answer, confidence, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (reader_id, case_id) DO UPDATE SET answer = excluded.answer, "
                    "confidence = excluded.confidence, updated = excluded.updated",
                    (int(reader_id), str(case_id), answer, int(confidence), _now()))
    finally:
        con.close()


def answers(study: str | os.PathLike, reader_id: int | None = None) -> list[dict]:
    """All answers (with reader names), or one reader's."""
    con = connect(study)
    try:
        q = ("SELECT r.reader_id, d.name AS reader, r.case_id, r.answer, r.confidence, r.updated "
             "FROM reads r JOIN readers d ON d.id = r.reader_id")
        args: tuple = ()
        if reader_id is not None:
            q += " WHERE r.reader_id = ?"
            args = (int(reader_id),)
        return [dict(r) for r in con.execute(q + " ORDER BY r.reader_id, r.case_id", args)]
    finally:
        con.close()
