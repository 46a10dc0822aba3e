"""Real-or-fake studies in SQLite (WAL): images under opaque ids, raters, votes; the answer key never
leaves this module except in results for the evaluator."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ganforge.metrics.hype import Vote, most_fooling, run_scores
from ganforge.sample import encode_png

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, admin_key TEXT NOT NULL, created REAL NOT NULL,
    real_per_rater INTEGER NOT NULL, fake_per_rater INTEGER NOT NULL, protocol TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id), run TEXT NOT NULL,
    truth TEXT NOT NULL CHECK (truth IN ('real', 'fake')), tutorial INTEGER NOT NULL, png BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS images_by_study ON images(study_id, run, truth, tutorial);
CREATE TABLE IF NOT EXISTS raters (
    id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id), name TEXT NOT NULL,
    created REAL NOT NULL, UNIQUE (study_id, name));
CREATE TABLE IF NOT EXISTS assignments (
    rater_id TEXT NOT NULL REFERENCES raters(id), position INTEGER NOT NULL,
    image_id TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (rater_id, position), UNIQUE (rater_id, image_id));
CREATE TABLE IF NOT EXISTS votes (
    rater_id TEXT NOT NULL REFERENCES raters(id), image_id TEXT NOT NULL REFERENCES images(id),
    answer TEXT NOT NULL CHECK (answer IN ('real', 'fake')), ms INTEGER, created REAL NOT NULL,
    PRIMARY KEY (rater_id, image_id));
"""

TOKEN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # the shape of every id this module hands out
NAME = re.compile(r"^[^\x00-\x1f\x7f<>]{1,64}$")  # printable, no markup characters
MAX_PER_RATER = 500
TUTORIAL_PER_KIND = 2  # labelled examples of each kind shown before a study starts
# A CSV cell a spreadsheet would read as a formula (OWASP, CSV injection) starts with one of these, or with
# a full-width or small form of one (NFKC folds those: ＝ ﹦ -> =), once leading whitespace is skipped;
# ; and | as well (a cell separator in some locales, DDE), and the minus sign.
FORMULA_START = frozenset("=+-@;|\u2212")


class StudyError(ValueError):
    """A request the store refuses; `status` is the HTTP status the web app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class StudyRun:
    """One run's share of a study: its generated and real image pools (uint8 [N, C, H, W])."""

    name: str
    fake: torch.Tensor
    real: torch.Tensor
    protocol: dict[str, Any]  # where the images came from: checkpoint, step, real dataset and split


def _token(nbytes: int = 12) -> str:
    while True:  # never a leading "-": an id is then never changed by the CSV export's formula guard
        token = secrets.token_urlsafe(nbytes)
        if token[0] != "-":
            return token


def check_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not TOKEN.match(value):
        raise StudyError(f"malformed {what} id '{str(value)[:80]}'", 404)
    return value


def _png(img: torch.Tensor) -> bytes:
    return encode_png(img.permute(1, 2, 0).numpy())


def pad_png(data: bytes, size: int) -> bytes:
    """`data` grown to exactly `size` + 12 bytes by a private ancillary chunk before IEND (decoders
    skip it). Every image of a study gets the same length, so a compressed size cannot hint at
    which images are real."""
    import struct
    import zlib

    fill = size - len(data)
    if fill < 0 or data[-12:-8] != b"\x00\x00\x00\x00" or data[-8:-4] != b"IEND":
        raise ValueError("pad_png: not a PNG that ends in IEND, or already longer than the target")
    chunk = b"paDd" + b"\x00" * fill  # ancillary, private, safe-to-copy: ignored by every viewer
    padding = struct.pack(">I", fill) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data[:-12] + padding + data[-12:]


def _schema_of(con: sqlite3.Connection) -> set[tuple]:
    """What a database defines (tables, indexes, views, triggers, with their SQL); SQLite's statistics
    tables (ANALYZE) aside."""
    rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'")
    return set(rows.fetchall())


def _expected_schema() -> set[tuple]:
    con = sqlite3.connect(":memory:")
    try:
        con.executescript(SCHEMA)
        return _schema_of(con)
    finally:
        con.close()


class StudyStore:
    def __init__(self, path: str | Path):
        """Open a study database, or make a new one (a missing or empty file). Anything else is refused
        with StudyError, unchanged: a file that is not SQLite, a SQLite database of another program, or
        one whose schema differs from this version's in any table, index, view or trigger (an edited or
        crafted file: its SQL would otherwise run inside every query). Only the schema is read: O(1)
        in the database's size."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                found, expected = _schema_of(con), _expected_schema()
                if found and found != expected:
                    raise StudyError(self._foreign(found, expected), 500)
                con.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
                if not found:
                    con.executescript(SCHEMA)
            finally:
                con.close()
        except (OSError, sqlite3.Error) as e:
            code = getattr(e, "sqlite_errorname", "")  # Python 3.11+; the message before
            if code == "SQLITE_NOTADB" or "file is not a database" in str(e):
                raise StudyError(f"{self.path} is not a ganforge study database (not SQLite): {e}; pass the "
                                 "file `ganforge serve --db` wrote, or a new file name", 500) from None  # fmt: skip
            if code == "SQLITE_CORRUPT" or "malformed" in str(e):
                raise StudyError(f"{self.path} is a damaged SQLite database: {e}; pass the file `ganforge serve "
                                 "--db` wrote, or a new file name", 500) from None  # fmt: skip
            raise StudyError(
                f"cannot open the study database '{self.path}' ({e}); choose a writable file with --db", 500
            ) from None

    def _foreign(self, found: set[tuple], expected: set[tuple]) -> str:
        ours = {name for kind, name, _, _ in expected if kind == "table"}
        tables = sorted(name for kind, name, _, _ in found if kind == "table")
        if not ours & set(tables):
            listed = ", ".join(tables[:8]) + (", ..." if len(tables) > 8 else "") or "no tables"
            return (f"{self.path} is not a ganforge study database: a SQLite database without ganforge's tables "
                    f"(it holds {listed[:300]}); pass the file `ganforge serve --db` wrote, or a new file name")
        differ = sorted(f"{kind} {name[:40]}" for kind, name, _, _ in found ^ expected)
        return (f"{self.path} is not a ganforge study database of this version: its schema differs in "
                f"{', '.join(differ[:8])}{', ...' if len(differ) > 8 else ''} (edited, or written by another "
                "program); pass the file `ganforge serve --db` wrote, or a new file name")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # one connection per call: requests run in a thread pool, and sqlite3 connections are per thread
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast commits
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA trusted_schema=OFF")  # no SQL functions from the schema (it is checked, too)
            yield con
        except sqlite3.Error as e:  # a file damaged since it was opened, a lock held past the timeout
            raise StudyError(f"the study database '{self.path}' failed: {e}", 500) from None
        finally:
            con.close()

    # -- the evaluator -------------------------------------------------------------------------

    def count(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]

    def check_room(self, max_studies: Optional[int], con: Optional[sqlite3.Connection] = None) -> None:
        """Refuse (409) a new study when the database holds `max_studies` already (None: no limit)."""
        if max_studies is None:
            return
        held = con.execute("SELECT COUNT(*) FROM studies").fetchone()[0] if con else self.count()
        if held >= max_studies:
            raise StudyError(f"the study database holds {held} studies, the most this server keeps "
                             f"({max_studies}): start `ganforge serve` with another --db, or a higher "
                             "--max-studies", 409)  # fmt: skip

    def create_study(self, name: str, runs: list[StudyRun], real_per_rater: int, fake_per_rater: int,
                     max_studies: Optional[int] = None) -> dict[str, str]:  # fmt: skip
        """Store every image of the study under a fresh opaque id; returns the study id and the
        evaluator's key (which the results need). Refused when the database holds `max_studies`."""
        name = check_name(name, "study name")
        if not runs:
            raise StudyError("a study needs at least one run")
        if len({r.name for r in runs}) != len(runs):
            raise StudyError("each run may appear in a study only once")
        for count, what in ((real_per_rater, "real_per_rater"), (fake_per_rater, "fake_per_rater")):
            if not 1 <= count <= MAX_PER_RATER:
                raise StudyError(f"{what} must be between 1 and {MAX_PER_RATER}, got {count}")
        for r in runs:
            for pool, need, kind in ((r.fake, fake_per_rater, "generated"), (r.real, real_per_rater, "real")):
                if len(pool) < need + TUTORIAL_PER_KIND:
                    raise StudyError(
                        f"run '{r.name}': {len(pool)} {kind} images, but each rater needs {need} plus "
                        f"{TUTORIAL_PER_KIND} for the tutorial; lower the count per rater"
                    )
        study, key = _token(8), _token(18)
        protocol = {"tutorial_per_kind": TUTORIAL_PER_KIND, "runs": {r.name: r.protocol for r in runs}}
        rows = []
        for i, r in enumerate(runs):
            for truth, pool in (("fake", r.fake), ("real", r.real)):
                for j, img in enumerate(pool):
                    # the tutorial's labelled examples: the first run's first images, never rated
                    tutorial = int(i == 0 and j < TUTORIAL_PER_KIND)
                    rows.append([_token(), study, r.name, truth, tutorial, _png(img)])
        longest = max(len(row[5]) for row in rows)
        for row in rows:
            row[5] = pad_png(row[5], longest)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # the count and the insert in one write transaction
            try:
                self.check_room(max_studies, con)
                con.execute(
                    "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (study, name, key, time.time(), real_per_rater, fake_per_rater, json.dumps(protocol)),
                )
                con.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)", rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return {"id": study, "admin_key": key}

    def studies(self) -> list[dict[str, Any]]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT s.id, s.name, s.created, s.real_per_rater, s.fake_per_rater, s.protocol,"
                " (SELECT COUNT(*) FROM raters r WHERE r.study_id = s.id),"
                " (SELECT COUNT(*) FROM votes v JOIN raters r ON v.rater_id = r.id WHERE r.study_id = s.id)"
                " FROM studies s ORDER BY s.created DESC"
            ).fetchall()
        return [
            {"id": r[0], "name": r[1], "created": r[2], "real_per_rater": r[3], "fake_per_rater": r[4],
             "runs": list(_protocol(r[0], r[5])["runs"]), "raters": r[6], "votes": r[7]}
            for r in rows
        ]  # fmt: skip

    def _study(self, con: sqlite3.Connection, study: str) -> tuple:
        row = con.execute("SELECT * FROM studies WHERE id = ?", (check_token(study, "study"),)).fetchone()
        if row is None:
            raise StudyError(f"no study '{study}'", 404)
        return row

    def study_name(self, study: str) -> str:
        with self._connect() as con:
            return self._study(con, study)[1]

    def admin_key(self, study: str) -> str:
        """The evaluator key (for `ganforge study list`, which has the database file anyway)."""
        with self._connect() as con:
            return self._study(con, study)[2]

    def check_key(self, study: str, key: Optional[str]) -> None:
        with self._connect() as con:
            row = self._study(con, study)
        if not key or not secrets.compare_digest(str(key).encode(), str(row[2]).encode()):  # bytes: any text
            raise StudyError("the results need the study's evaluator key (?key=..., shown when it was created)", 403)

    def votes(self, study: str) -> list[dict[str, Any]]:
        with self._connect() as con:
            self._study(con, study)
            return self._votes(con, study)

    @staticmethod
    def _votes(con: sqlite3.Connection, study: str) -> list[dict[str, Any]]:
        rows = con.execute(
            "SELECT r.name, r.id, i.run, i.id, i.truth, v.answer, v.ms, v.created FROM votes v"
            " JOIN raters r ON v.rater_id = r.id JOIN images i ON v.image_id = i.id"
            " WHERE r.study_id = ? ORDER BY v.created",
            (study,),
        ).fetchall()
        keys = ("rater", "rater_id", "run", "image", "truth", "answer", "ms", "time")
        return [dict(zip(keys, r)) for r in rows]

    def results(self, study: str) -> dict[str, Any]:
        """HYPE-infinity per run, with its protocol, from every vote so far."""
        with self._connect() as con:  # one connection: the study, its raters and votes as of one moment
            row = self._study(con, study)
            raters = con.execute("SELECT COUNT(*) FROM raters WHERE study_id = ?", (study,)).fetchone()[0]
            voted = self._votes(con, study)
        votes = [Vote(v["rater_id"], v["run"], v["image"], v["truth"], v["answer"]) for v in voted]
        protocol = _protocol(study, row[6])
        scores = run_scores(votes)
        return {
            "study": study,
            "name": row[1],
            "metric": "HYPE-infinity: human error rate on a balanced real/fake mix, unlimited viewing time "
            "(50% = indistinguishable; Zhou et al. 2019)",
            "protocol": {**protocol, "real_per_rater": row[4], "fake_per_rater": row[5]},
            "raters_joined": raters,
            "votes": len(votes),
            "runs": {name: scores.get(name) for name in protocol["runs"]},
            "most_fooling": most_fooling(votes),
        }

    def votes_csv(self, study: str) -> str:
        """Every vote as CSV, every cell quoted and guarded against spreadsheet formulas (csv_cell)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)  # a separator inside a cell (, ; tab) stays inside it
        writer.writerow(["rater", "run", "image", "truth", "answer", "correct", "ms", "time"])
        for v in self.votes(study):
            writer.writerow([csv_cell(x) for x in (v["rater"], v["run"], v["image"], v["truth"], v["answer"],
                             int(v["truth"] == v["answer"]), v["ms"], f"{v['time']:.3f}")])  # fmt: skip
        return buffer.getvalue()

    # -- raters: nothing below returns which images are real ------------------------------------

    def join(self, study: str, name: str) -> dict[str, Any]:
        """A new rater: their own shuffled draw from each run's pools (real_per_rater + fake_per_rater
        per run), and the labelled tutorial examples."""
        name = check_name(name, "name")
        rater = _token()
        draw = random.SystemRandom()  # unpredictable order: nothing to learn from positions
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = self._study(con, study)
                if con.execute("SELECT 1 FROM raters WHERE study_id = ? AND name = ?", (study, name)).fetchone():
                    raise StudyError(f"the name '{name}' is already taken in this study; choose another", 409)
                images = []
                for run in _protocol(study, row[6])["runs"]:
                    for truth, count in (("real", row[4]), ("fake", row[5])):
                        pool = [r[0] for r in con.execute(
                            "SELECT id FROM images WHERE study_id = ? AND run = ? AND truth = ? AND tutorial = 0",
                            (study, run, truth))]  # fmt: skip
                        images += draw.sample(pool, count)
                draw.shuffle(images)
                con.execute("INSERT INTO raters VALUES (?, ?, ?, ?)", (rater, study, name, time.time()))
                con.executemany("INSERT INTO assignments VALUES (?, ?, ?)", [(rater, i, im) for i, im in enumerate(images)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return self._state(con, rater)

    def tutorial(self, study: str) -> list[dict[str, str]]:
        with self._connect() as con:
            self._study(con, study)
            rows = con.execute(
                "SELECT id, truth FROM images WHERE study_id = ? AND tutorial = 1 ORDER BY truth, id", (study,)
            ).fetchall()
        return [{"image": r[0], "truth": r[1]} for r in rows]

    def state(self, rater: str) -> dict[str, Any]:
        """Where a rater stands: counts and the next image to judge (None when done)."""
        with self._connect() as con:
            return self._state(con, check_token(rater, "rater"))

    def _state(self, con: sqlite3.Connection, rater: str) -> dict[str, Any]:
        row = con.execute(
            "SELECT r.study_id, r.name, s.name FROM raters r JOIN studies s ON r.study_id = s.id WHERE r.id = ?",
            (rater,),
        ).fetchone()
        if row is None:
            raise StudyError(f"no rater '{rater}'", 404)
        total, answered, nxt = con.execute(
            "SELECT COUNT(*), COUNT(v.image_id), MIN(CASE WHEN v.image_id IS NULL THEN a.position END)"
            " FROM assignments a LEFT JOIN votes v ON v.rater_id = a.rater_id AND v.image_id = a.image_id"
            " WHERE a.rater_id = ?",
            (rater,),
        ).fetchone()
        if nxt is not None:
            nxt = con.execute(
                "SELECT image_id FROM assignments WHERE rater_id = ? AND position = ?", (rater, nxt)
            ).fetchone()[0]
        return {
            "rater": rater, "name": row[1], "study": row[0], "study_name": row[2],
            "total": total, "answered": answered, "next": nxt,
        }  # fmt: skip

    def vote(self, rater: str, image: str, answer: str, ms: Optional[int] = None) -> dict[str, Any]:
        """Record one answer; each rater answers each of their images exactly once."""
        check_token(rater, "rater")
        check_token(image, "image")
        if answer not in ("real", "fake"):
            raise StudyError(f"answer must be 'real' or 'fake', got '{str(answer)[:20]}'", 422)
        with self._connect() as con:
            if con.execute(
                "SELECT 1 FROM assignments WHERE rater_id = ? AND image_id = ?", (rater, image)
            ).fetchone() is None:
                known = con.execute("SELECT 1 FROM raters WHERE id = ?", (rater,)).fetchone()
                raise StudyError("that image is not one of this rater's images" if known else f"no rater '{rater}'", 404)
            try:
                con.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?)", (rater, image, answer, ms, time.time()))
            except sqlite3.IntegrityError:
                raise StudyError("this image has already been answered; each image is judged once", 409) from None
            return self._state(con, rater)

    def image_png(self, image: str) -> bytes:
        with self._connect() as con:
            row = con.execute("SELECT png FROM images WHERE id = ?", (check_token(image, "image"),)).fetchone()
        if row is None:
            raise StudyError(f"no image '{image}'", 404)
        return row[0]


def csv_cell(value: Any) -> str:
    """A CSV cell that no spreadsheet runs as a formula (OWASP's CSV-injection rule): text that starts
    with = + - @, a tab, CR or LF, or with ; | or a full-width form of any of these (after leading
    whitespace, which some spreadsheets skip), gets a leading single quote; the spreadsheet shows the
    text as written. None is an empty cell."""
    text = "" if value is None else str(value)
    rest = text.lstrip()
    if text[:1] in ("\t", "\r", "\n") or (rest and unicodedata.normalize("NFKC", rest[0])[:1] in FORMULA_START):
        return "'" + text
    return text


def _protocol(study: str, text: Any) -> dict[str, Any]:
    """A study's stored protocol (JSON, never pickle), checked for what the code reads from it."""
    try:
        protocol = json.loads(text)
    except (TypeError, ValueError):
        protocol = None
    if not isinstance(protocol, dict) or not isinstance(protocol.get("runs"), dict):
        raise StudyError(f"study '{study}' is damaged in the database: its protocol is not the JSON this "
                         "version writes", 500)  # fmt: skip
    return protocol


def check_name(value: Any, what: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not NAME.match(text):
        raise StudyError(f"{what} must be 1 to 64 printable characters without < or >, got '{str(value)[:80]}'", 422)
    return text
