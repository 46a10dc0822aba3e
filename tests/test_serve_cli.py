import socket
import sqlite3

import pytest

from ganforge.cli import main
from tests.conftest import served_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return served_runs(tmp_path_factory.mktemp("cli"))


def test_serve_prints_the_studies_link_with_its_admin_key(runs, tmp_path, monkeypatch, capsys):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    monkeypatch.setattr("ganforge.serve.app.check_port", lambda host, port: None)
    key = "chosen-admin-key-0123456789"
    assert main(["serve", str(runs[0]), "--db", str(tmp_path / "s.db"), "--admin-key", key, "--max-studies", "7"]) == 0
    out = capsys.readouterr().out
    assert f"http://localhost:8000/studies?key={key}" in out
    assert apps[-1].state.admin_key == key and apps[-1].state.max_studies == 7
    assert main(["serve", str(runs[0]), "--db", str(tmp_path / "s.db")]) == 0
    assert f"/studies?key={apps[-1].state.admin_key}" in capsys.readouterr().out
    assert main(["serve", str(runs[0]), "--db", str(tmp_path / "s.db"), "--admin-key", "short"]) == 1
    assert "16 to 128 characters" in capsys.readouterr().err


def test_serve_on_a_port_in_use_says_so_before_anything_else(runs, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(runs[0]), "--db", str(tmp_path / "s.db"), "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert f"port {port} on 127.0.0.1 is in use (another ganforge serve?); pass --port N" in captured.err
    assert "open http" not in captured.out


def test_study_list_on_a_file_that_is_not_a_study_database(tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"junk" * 100)
    assert main(["study", "list", "--db", str(junk)]) == 1
    assert "is not a ganforge study database (not SQLite)" in capsys.readouterr().err
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    assert main(["study", "results", "AAAAAAAAAAA", "--db", str(other)]) == 1
    assert "without ganforge's tables" in capsys.readouterr().err
