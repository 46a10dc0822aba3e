"""`ganforge serve`'s defences: damaged checkpoints as JSON errors, a port in use found before the
server starts, the admin key and the cap on studies, formula-safe CSV exports, and study databases
that are not ganforge's (not SQLite, another program's, a crafted schema)."""

from __future__ import annotations

import csv
import io
import shutil
import socket
import sqlite3

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from ganforge.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from ganforge.serve.app import (  # noqa: E402
    ServeError,
    check_admin_key,
    check_port,
    create_app,
    open_runs,
    studies_url,
)
from ganforge.serve.store import StudyError, StudyRun, StudyStore, csv_cell  # noqa: E402
from tests.conftest import served_runs  # noqa: E402

ADMIN_KEY = "security-test-key-0123456789"
AS_ADMIN = {"X-Admin-Key": ADMIN_KEY}
STUDY = {"name": "s", "runs": ["0"], "real_per_rater": 2, "fake_per_rater": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return served_runs(tmp_path_factory.mktemp("serve-security"))


@pytest.fixture
def client(runs, tmp_path):
    app = create_app(open_runs(runs), StudyStore(tmp_path / "studies.db"), admin_key=ADMIN_KEY, max_studies=3)
    with TestClient(app) as c:
        yield c


def refused(response, status: int, words: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body["status"] == status and words in body["error"], body
    assert "Traceback" not in response.text
    return body


# -- checkpoints that cannot be loaded --------------------------------------------------------------


def test_a_non_default_checkpoint_that_does_not_load_is_a_json_error(runs, tmp_path):
    run = tmp_path / "plain"
    shutil.copytree(runs[1], run)
    ckpts = run / "checkpoints"
    (ckpts / "empty.pt").write_bytes(b"")
    (ckpts / "cut.pt").write_bytes((ckpts / "step_0000003.pt").read_bytes()[:4000])
    # intact and checksummed, but its weights do not fit its config (another version or architecture)
    state = dict(load_checkpoint(ckpts / "step_0000003.pt"))
    for name in ("G", "G_ema"):
        if name in state:
            state[name] = dict(list(state[name].items())[1:])
    save_checkpoint(ckpts / "unfit.pt", state)
    with TestClient(create_app(open_runs([run]), StudyStore(tmp_path / "s.db"))) as c:
        for ckpt, words in (("empty.pt", "an empty file, 0 bytes"), ("cut.pt", "damaged or truncated"),
                            ("unfit.pt", "its weights do not fit its configuration")):  # fmt: skip
            for path in (f"/api/runs/0/grid.png?n=4&checkpoint={ckpt}",
                         f"/api/runs/0/interpolation.png?seed_a=1&seed_b=2&checkpoint={ckpt}"):  # fmt: skip
                body = refused(c.get(path), 422, f"run 0 (plain): cannot load checkpoint '{ckpt}'")
                assert words in body["error"], body
        assert c.get("/api/runs/0/grid.png?n=4&checkpoint=step_0000006.pt").status_code == 200  # the others serve


def test_an_unexpected_error_is_json_too(runs, tmp_path, monkeypatch):
    from ganforge.sample import TrainedGenerator

    def broken(self, *args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(TrainedGenerator, "sample", broken)
    app = create_app(open_runs(runs[:1]), StudyStore(tmp_path / "s.db"))
    with TestClient(app, raise_server_exceptions=False) as c:
        body = refused(c.get("/api/runs/0/grid.png?n=4"), 500, "internal error (TypeError)")
        assert "a bug" not in body["error"]  # the details go to the log, not to whoever asked


# -- the port ---------------------------------------------------------------------------------------


def test_check_port_finds_a_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError) as e:
            check_port("127.0.0.1", port)
        assert str(e.value) == f"port {port} on 127.0.0.1 is in use (another ganforge serve?); pass --port N"
    check_port("127.0.0.1", port)  # free again
    with pytest.raises(ServeError, match="cannot bind"):
        check_port("192.0.2.1", port)  # TEST-NET-1: never this machine's address
    with pytest.raises(ServeError, match="not an address or host name"):
        check_port("no-such-host.invalid", port)


# -- the admin key and the cap on studies -----------------------------------------------------------


def test_listing_and_creating_studies_need_the_admin_key(client):
    for headers in ({}, {"X-Admin-Key": "wrong-key-0123456789"}, {"X-Admin-Key": ""}):
        refused(client.get("/api/studies", headers=headers), 403, "admin key")
        refused(client.post("/api/studies", json=STUDY, headers=headers), 403, "admin key")
    assert client.app.state.store.count() == 0  # nothing was drawn or stored
    assert client.get("/api/studies", headers=AS_ADMIN).json()["studies"] == []
    assert client.get("/studies").status_code == 200  # the page itself is static: it asks for the key


def test_raters_and_results_need_no_admin_key(client):
    made = client.post("/api/studies", json=STUDY, headers=AS_ADMIN).json()
    study = made["id"]
    assert client.get(f"/rate/{study}").status_code == 200
    assert client.get(f"/api/studies/{study}").json() == {"id": study, "name": "s"}  # the rater page's title
    refused(client.get("/api/studies/AAAAAAAAAAA"), 404, "no study")
    assert len(client.get(f"/api/studies/{study}/tutorial").json()["examples"]) == 4
    state = client.post(f"/api/studies/{study}/raters", json={"name": "rita"}).json()
    while state["next"]:
        state = client.post(f"/api/raters/{state['rater']}/votes", json={"image": state["next"], "answer": "real"}).json()
    assert state["answered"] == 4
    assert client.get(f"/api/studies/{study}/results?key={made['admin_key']}").json()["votes"] == 4
    refused(client.get(f"/api/studies/{study}/results?key=%C3%A9t%C3%A9"), 403, "evaluator key")  # non-ASCII
    refused(client.get(f"/api/studies/{study}/results", headers=AS_ADMIN), 403, "evaluator key")  # not this key


def test_the_number_of_studies_is_capped(client):
    for i in range(3):
        assert client.post("/api/studies", json={**STUDY, "name": f"s{i}"}, headers=AS_ADMIN).status_code == 201
    refused(client.post("/api/studies", json=STUDY, headers=AS_ADMIN), 409,
            "holds 3 studies, the most this server keeps (3)")  # fmt: skip
    listed = client.get("/api/studies", headers=AS_ADMIN).json()
    assert len(listed["studies"]) == 3 and listed["max_studies"] == 3
    pool = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(StudyError, match="the most this server keeps"):  # checked again where images are stored
        client.app.state.store.create_study("x", [StudyRun("r", pool, pool, {})], 2, 2, max_studies=3)
    assert client.app.state.store.count() == 3


def test_the_admin_key_is_random_unless_chosen(runs, tmp_path):
    store = StudyStore(tmp_path / "s.db")
    served = open_runs(runs[:1])
    a, b = create_app(served, store), create_app(served, store)
    assert len(a.state.admin_key) >= 16 and a.state.admin_key != b.state.admin_key
    assert studies_url(a, "http://localhost:8000/") == f"http://localhost:8000/studies?key={a.state.admin_key}"
    assert create_app(served, store, admin_key=ADMIN_KEY).state.admin_key == ADMIN_KEY
    for weak in ("short", "has spaces in it, 1234", "é" * 20):
        with pytest.raises(ServeError, match="16 to 128 characters"):
            check_admin_key(weak)


# -- CSV export -------------------------------------------------------------------------------------

FORMULAS = ["=1+1", "+1", "-1", "@SUM(1)", ";=4+4", "|calc", "\uff1d1+1", "\uff0b1", "\uff0d1", "\uff20SUM(1)",
            "\ufe661+1", "\u22121"]  # fmt: skip


@pytest.mark.parametrize("text", FORMULAS + ["\t=1", "\r=1", "\n=1", " =1+1", "\u3000=1"])
def test_csv_cells_that_start_like_a_formula_are_quoted(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["alice", "a;=4+4", "a=1", "1.5", "", None, 0, "'=1"])
def test_other_csv_cells_are_kept(text):
    assert csv_cell(text) == ("" if text is None else str(text))


def test_the_votes_csv_guards_every_payload(client):
    made = client.post("/api/studies", json={**STUDY, "real_per_rater": 1, "fake_per_rater": 1}, headers=AS_ADMIN).json()
    names = FORMULAS + ["a;=4+4", "plain"]
    for name in names:
        rater = client.post(f"/api/studies/{made['id']}/raters", json={"name": name}).json()
        client.post(f"/api/raters/{rater['rater']}/votes", json={"image": rater["next"], "answer": "fake"})
    text = client.get(f"/api/studies/{made['id']}/votes.csv?key={made['admin_key']}").text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][0] == "rater" and len(rows) == 1 + len(names)
    raters = {row[0] for row in rows[1:]}
    assert raters == {"'" + n for n in FORMULAS} | {"a;=4+4", "plain"}
    assert all(line.startswith('"') for line in text.splitlines())  # every cell quoted: a ; never splits one
    assert all(row[2] == csv_cell(row[2]) for row in rows[1:])  # image ids are never altered


# -- study databases --------------------------------------------------------------------------------


def test_a_file_that_is_not_sqlite_is_refused_unchanged(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database at all\n" * 100)
    with pytest.raises(StudyError, match=r"notes.db is not a ganforge study database \(not SQLite\): "):
        StudyStore(path)
    assert path.read_bytes() == b"not a database at all\n" * 100


def test_another_programs_sqlite_database_is_refused_unchanged(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(StudyError, match="without ganforge's tables .it holds customers"):
        StudyStore(path)
    with sqlite3.connect(path) as con:  # nothing of ganforge's was written into it
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["customers"]
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        # a trigger would run inside every vote: here an endless recursive query
        ("CREATE TRIGGER slow AFTER INSERT ON votes BEGIN SELECT COUNT(*) FROM (WITH RECURSIVE c(x) AS "
         "(SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c); END", "trigger slow"),
        ("CREATE VIEW everything AS SELECT * FROM studies", "view everything"),
        ("ALTER TABLE studies ADD COLUMN extra TEXT", "table studies"),
        ("DROP TABLE votes", "table votes"),
    ],
)  # fmt: skip
def test_a_crafted_schema_is_refused(tmp_path, sql, words):
    path = tmp_path / "studies.db"
    StudyStore(path)
    with sqlite3.connect(path) as con:
        con.execute(sql)
    with pytest.raises(StudyError, match=f"not a ganforge study database of this version: its schema differs in .*{words}"):
        StudyStore(path)


def test_new_empty_and_existing_databases_open(tmp_path):
    (tmp_path / "empty.db").write_bytes(b"")
    for path in (tmp_path / "new" / "studies.db", tmp_path / "empty.db"):
        StudyStore(path)
        assert StudyStore(path).studies() == []  # a second open finds its own schema


def test_a_damaged_study_row_is_a_study_error(client):
    made = client.post("/api/studies", json=STUDY, headers=AS_ADMIN).json()
    with sqlite3.connect(client.app.state.store.path) as con:
        con.execute("UPDATE studies SET protocol = 'not json' WHERE id = ?", (made["id"],))
    refused(client.get("/api/studies", headers=AS_ADMIN), 500, "is damaged in the database")
    refused(client.get(f"/api/studies/{made['id']}/results?key={made['admin_key']}"), 500, "is damaged")
