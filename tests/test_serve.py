"""`ganforge serve`: the API with FastAPI's test client (generation, study lifecycle, safety), and a
bounded load test against a real server on loopback."""

from __future__ import annotations

import importlib.util
import io
import sqlite3

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from ganforge.cli import main  # noqa: E402
from ganforge.serve.app import create_app, open_runs, serve_in_thread  # noqa: E402
from ganforge.serve.store import StudyStore  # noqa: E402
from tests.conftest import ROOT, served_runs  # noqa: E402

ADMIN_KEY = "test-admin-key-0123456789"
AS_ADMIN = {"X-Admin-Key": ADMIN_KEY}  # listing and creating studies; raters send nothing


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return served_runs(tmp_path_factory.mktemp("serve"))


@pytest.fixture
def client(runs, tmp_path):
    app = create_app(open_runs(runs), StudyStore(tmp_path / "studies.db"), admin_key=ADMIN_KEY)
    with TestClient(app) as c:
        yield c


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def new_study(client, real=3, fake=3, runs=("0", "1"), name="pilot") -> dict:
    r = client.post("/api/studies", json={"name": name, "runs": list(runs), "real_per_rater": real, "fake_per_rater": fake},
                    headers=AS_ADMIN)  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()


def test_runs_and_generation(client):
    listed = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in listed] == ["0", "1"]
    assert listed[0]["num_classes"] == 10 and listed[1]["num_classes"] is None
    assert "final.pt" in listed[0]["checkpoints"] or "last.pt" in listed[0]["checkpoints"]
    a = png(client.get("/api/runs/0/grid.png?seed=3&n=10"))
    b = png(client.get("/api/runs/0/grid.png?seed=3&n=10"))
    assert a.shape == (2 + 30, 2 + 10 * 30)  # one row of 10 classes, 28 px + 2 px padding each
    assert np.array_equal(a, b)  # the same seed gives the same grid
    r = client.get("/api/runs/0/grid.png?n=4&class=7")
    assert int(r.headers["X-Seed"]) >= 0  # a random seed is reported so it can be reproduced
    assert not np.array_equal(png(client.get("/api/runs/0/grid.png?seed=3&n=4&class=1")),
                              png(client.get("/api/runs/0/grid.png?seed=3&n=4&class=2")))  # fmt: skip
    png(client.get("/api/runs/1/grid.png?seed=1&n=9&truncation=0.5"))
    strip = png(client.get("/api/runs/1/interpolation.png?seed_a=1&seed_b=2&frames=6"))
    assert strip.shape == (32, 2 + 6 * 30)
    r = client.get("/api/runs/1/grid.png?seed=1&n=4&download=true")
    assert "attachment" in r.headers["content-disposition"]
    checkpoint = listed[1]["checkpoints"][0]
    png(client.get(f"/api/runs/1/grid.png?seed=1&n=4&checkpoint={checkpoint}"))


def test_pages_and_static_files_are_served(client):
    for path in ("/", "/studies", "/rate/abcdefgh12", "/results/abcdefgh12"):
        r = client.get(path)
        assert r.status_code == 200 and "<!doctype html>" in r.text.lower()
        assert "http://" not in r.text and "https://" not in r.text  # no CDN: works offline
    assert client.get("/static/generate.js").headers["content-type"].startswith("text/javascript")
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/api/runs/9/grid.png", 404, "no run"),
        ("/api/runs/0/grid.png?n=0", 422, "n:"),
        ("/api/runs/0/grid.png?n=100000", 422, "n:"),
        ("/api/runs/0/grid.png?seed=-1", 422, "seed"),
        ("/api/runs/0/grid.png?class=10", 422, "out of range"),
        ("/api/runs/1/grid.png?class=3", 422, "unconditional"),
        ("/api/runs/0/grid.png?truncation=0", 422, "truncation"),
        ("/api/runs/0/grid.png?truncation=0.000000001", 422, "truncation"),  # would stall a redraw loop
        ("/api/runs/0/grid.png?checkpoint=../../../etc/passwd", 404, "no checkpoint"),
        ("/api/runs/0/grid.png?checkpoint=%2Fetc%2Fpasswd", 404, "no checkpoint"),
        ("/api/runs/0/interpolation.png?seed_a=1&seed_b=2&frames=1", 422, "frames"),
        ("/api/runs/0/interpolation.png?seed_a=1", 422, "seed_b"),
        ("/static/../../../../etc/passwd", 404, "not found"),
        ("/static/%2e%2e%2f%2e%2e%2fcli.py", 404, ""),
        ("/static/..%2F..%2Fcli.py", 404, ""),
        ("/api/images/..%2F..%2Fstudies.db", 404, "image"),
        ("/api/images/AAAAAAAAAAAAAAAA", 404, "no image"),
        ("/rate/..%2Fsecret", 404, ""),
        ("/api/raters/nope/votes", 405, ""),
    ],
)
def test_invalid_requests_get_a_json_error(client, path, status, words):
    r = client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text)
    body = r.json()
    assert body["status"] == status and words in body["error"]
    assert "Traceback" not in r.text


def test_study_lifecycle_and_votes(client, tmp_path):
    made = new_study(client)
    study, key = made["id"], made["admin_key"]
    assert made["results_url"].endswith(key) and made["rate_url"] == f"/rate/{study}"
    listed = client.get("/api/studies", headers=AS_ADMIN).json()["studies"]
    assert listed[0]["id"] == study and "admin_key" not in str(listed)
    tutorial = client.get(f"/api/studies/{study}/tutorial").json()["examples"]
    assert sorted(x["truth"] for x in tutorial) == ["fake", "fake", "real", "real"]  # labelled on purpose

    alice = client.post(f"/api/studies/{study}/raters", json={"name": "alice"}).json()
    assert alice["total"] == 2 * (3 + 3) and alice["answered"] == 0  # 3 real + 3 fake for each of 2 runs
    assert client.post(f"/api/studies/{study}/raters", json={"name": "alice"}).status_code == 409
    tutorial_ids = {x["image"] for x in tutorial}
    seen = []
    state = alice
    while state["next"]:
        assert state["next"] not in tutorial_ids  # tutorial images are never rated
        png(client.get(f"/api/images/{state['next']}"))
        seen.append(state["next"])
        state = client.post(f"/api/raters/{alice['rater']}/votes", json={"image": state["next"], "answer": "real"}).json()
    assert state["answered"] == 12 and len(set(seen)) == 12
    again = client.post(f"/api/raters/{alice['rater']}/votes", json={"image": seen[0], "answer": "fake"})
    assert again.status_code == 409 and "already" in again.json()["error"]

    # a second rater answers everything wrong: "real" for fakes... which the store knows, not the rater
    con = sqlite3.connect(tmp_path / "studies.db")
    truth = dict(con.execute("SELECT id, truth FROM images WHERE study_id = ?", (study,)).fetchall())
    bob = client.post(f"/api/studies/{study}/raters", json={"name": "bob"}).json()
    state = bob
    while state["next"]:
        wrong = "real" if truth[state["next"]] == "fake" else "fake"
        state = client.post(f"/api/raters/{bob['rater']}/votes", json={"image": state["next"], "answer": wrong}).json()
    stored = con.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    assert stored == 24

    assert client.get(f"/api/studies/{study}/results").status_code == 403
    assert client.get(f"/api/studies/{study}/results?key=wrong").status_code == 403
    report = client.get(f"/api/studies/{study}/results?key={key}").json()
    for run in ("cond", "plain"):
        s = report["runs"][run]
        # alice said "real" to all: wrong on the 3 fakes; bob wrong on all 6
        assert s["answers"] == 12 and s["raters"] == 2
        assert s["error_rate"] == pytest.approx(9 / 12)
        assert s["false_real_rate"] == pytest.approx(1.0) and s["false_fake_rate"] == pytest.approx(0.5)
    assert report["most_fooling"][0]["fooled_rate"] == 1.0
    assert report["protocol"]["runs"]["cond"]["real"] == "mnist-5k:test"
    csv_text = client.get(f"/api/studies/{study}/votes.csv?key={key}").text
    assert csv_text.count("\n") == 25 and csv_text.startswith('"rater","run","image","truth","answer","correct"')


def test_rater_responses_never_reveal_the_answer_key(client, tmp_path):
    study = new_study(client, real=4, fake=4, runs=("0",))["id"]
    con = sqlite3.connect(tmp_path / "studies.db")
    truth = dict(con.execute("SELECT id, truth FROM images WHERE study_id = ? AND tutorial = 0", (study,)).fetchall())
    rater = client.post(f"/api/studies/{study}/raters", json={"name": "carol"})
    state, bodies, headers = rater.json(), [rater.text], []
    while state["next"]:
        image = client.get(f"/api/images/{state['next']}")
        assert np.asarray(Image.open(io.BytesIO(image.content))).shape == (28, 28)  # the padding is invisible
        headers.append((truth[state["next"]], sorted(image.headers.items())))
        r = client.post(f"/api/raters/{state['rater']}/votes", json={"image": state["next"], "answer": "fake"})
        bodies.append(r.text)
        state = r.json()
    text = " ".join(bodies)
    assert "real" not in text and "truth" not in text  # the word never appears: only ids and counts
    assert set(state) == {"rater", "name", "study", "study_name", "total", "answered", "next"}
    real_headers = {str(h) for t, h in headers if t == "real"}
    fake_headers = {str(h) for t, h in headers if t == "fake"}
    assert real_headers == fake_headers and len(real_headers) == 1  # alike, down to the byte length
    assert client.get(f"/api/studies/{study}/results?key=").status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "", "runs": ["0"]}, 422, "name"),
        ({"name": "x", "runs": []}, 422, "runs"),
        ({"name": "x", "runs": ["7"]}, 404, "no run"),
        ({"name": "x", "runs": ["0", "0"]}, 400, "only once"),
        ({"name": "x", "runs": ["0"], "real_per_rater": 0}, 422, "real_per_rater"),
        ({"name": "x", "runs": ["0"], "fake_per_rater": 501}, 422, "fake_per_rater"),
        ({"name": "x", "runs": ["0"], "real_per_rater": 300, "fake_per_rater": 300}, 422, "fewer than"),  # mnist-5k test: 500
        ({"name": "x", "runs": ["0"], "real_per_rater": 10, "fake_per_rater": 50}, 422, "must be equal"),
        ({"name": "x", "runs": ["0"], "truncation": 1e-9}, 422, "truncation"),
        ({"name": "x", "runs": ["0"], "seed": 0}, 422, "seed"),  # the pools' seeds are secret
        ({"name": "<script>", "runs": ["0"]}, 422, "printable"),
        ({"name": "x", "runs": ["0"], "admin_key": "mine"}, 422, "admin_key"),
    ],
)
def test_invalid_studies_are_refused(client, body, status, words):
    r = client.post("/api/studies", json=body, headers=AS_ADMIN)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_invalid_rater_input_is_refused(client):
    study = new_study(client, real=2, fake=2, runs=("1",))["id"]
    rater = client.post(f"/api/studies/{study}/raters", json={"name": "dave"}).json()
    votes = f"/api/raters/{rater['rater']}/votes"
    cases = [
        (client.post(f"/api/studies/{study}/raters", json={"name": "a\u0000b"}), 422),
        (client.post(f"/api/studies/{study}/raters", json={"name": "x" * 65}), 422),
        (client.post("/api/studies/AAAAAAAAAAA/raters", json={"name": "eve"}), 404),
        (client.post(votes, json={"image": rater["next"], "answer": "maybe"}), 422),
        (client.post(votes, json={"image": "AAAAAAAAAAAAAAAA", "answer": "real"}), 404),  # not theirs
        (client.post(votes, json={"image": "../../etc/passwd", "answer": "real"}), 404),
        (client.post("/api/raters/AAAAAAAAAAAAAAAA/votes", json={"image": rater["next"], "answer": "real"}), 404),
        (client.post(votes, content=b"{not json", headers={"content-type": "application/json"}), 422),
        (client.post(votes, json={"image": rater["next"], "answer": "real", "x": "y" * 20000}), 413),
        (client.post(votes, content=(b"x" * 1000 for _ in range(40)),  # chunked: no Content-Length
                     headers={"content-type": "application/json"}), 413),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]
    assert client.get(f"/api/raters/{rater['rater']}").json()["answered"] == 0  # nothing got through


def test_study_results_from_the_cli(client, tmp_path, capsys):
    made = new_study(client, real=2, fake=2, runs=("0",), name="cli study")
    rater = client.post(f"/api/studies/{made['id']}/raters", json={"name": "fred"}).json()
    state = rater
    while state["next"]:
        state = client.post(f"/api/raters/{rater['rater']}/votes", json={"image": state["next"], "answer": "fake"}).json()
    db = str(tmp_path / "studies.db")
    assert main(["study", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert made["id"] in out and made["admin_key"] in out
    assert main(["study", "results", made["id"], "--db", db, "--csv", str(tmp_path / "v.csv")]) == 0
    out = capsys.readouterr().out
    assert "cond" in out and "50.0%" in out and "bootstrap" in out  # all "fake": right on fakes, wrong on reals
    assert (tmp_path / "v.csv").read_text().count("\n") == 5
    assert main(["study", "results", "AAAAAAAAAAA", "--db", db]) == 1
    assert "no study" in capsys.readouterr().err
    assert main(["study", "list", "--db", str(tmp_path / "missing.db")]) == 1


def test_serve_refuses_what_it_cannot_serve(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 1
    assert "cannot serve" in capsys.readouterr().err


def test_load_fifty_concurrent_raters(runs, tmp_path):
    """50 raters x 100 votes each against a real server on loopback: every vote stored exactly once."""
    import httpx

    load = _bench_module("serve_load")
    app = create_app(open_runs(runs[:1]), StudyStore(tmp_path / "load.db"), admin_key=ADMIN_KEY)
    with serve_in_thread(app) as base:
        made = httpx.post(f"{base}/api/studies", json={"name": "load", "runs": ["0"], "real_per_rater": 50,
                                                       "fake_per_rater": 50}, headers=AS_ADMIN, timeout=60)  # fmt: skip
        result = load.run_load(base, made.json()["id"], raters=50)
    assert not result["errors"], result["errors"][:3]
    assert result["answered"] == [100] * 50
    con = sqlite3.connect(tmp_path / "load.db")
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT rater_id || image_id) FROM votes").fetchone() == (5000, 5000)


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_command_binds_loopback_and_warns_otherwise(runs, tmp_path, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr("ganforge.serve.app.check_port", lambda host, port: None)  # 8000 may be taken here
    db = str(tmp_path / "s.db")
    assert main(["serve", str(runs[0]), "--db", db]) == 0
    captured = capsys.readouterr()
    assert calls[-1]["host"] == "127.0.0.1" and "warning" not in captured.err
    assert "http://localhost:8000/" in captured.out and "run 0: cond" in captured.out
    assert main(["serve", str(runs[0]), "--db", db, "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 9000
    assert "warning: binding 0.0.0.0" in capsys.readouterr().err


def test_results_after_the_first_vote_and_safe_exports(client, runs, tmp_path):
    made = new_study(client, real=2, fake=2, runs=("0",))
    rater = client.post(f"/api/studies/{made['id']}/raters", json={"name": "=HYPERLINK(1)"}).json()
    client.post(f"/api/raters/{rater['rater']}/votes", json={"image": rater["next"], "answer": "fake"})
    report = client.get(f"/api/studies/{made['id']}/results?key={made['admin_key']}")
    assert report.status_code == 200, report.text  # one kind still unanswered: null, not a NaN error
    s = report.json()["runs"]["cond"]
    assert s["answers"] == 1 and None in (s["false_real_rate"], s["false_fake_rate"])
    csv_text = client.get(f"/api/studies/{made['id']}/votes.csv?key={made['admin_key']}").text
    assert '\n"\'=HYPERLINK(1)",' in csv_text  # a spreadsheet shows the name, it does not run it
    # the pools' seeds are secret: the Generate page's seed 0 (or any small seed) does not show the fakes
    con = sqlite3.connect(tmp_path / "studies.db")
    fakes = {bytes(np.asarray(Image.open(io.BytesIO(row[0]))).tobytes()) for row in con.execute(
        "SELECT png FROM images WHERE study_id = ? AND truth = 'fake'", (made["id"],))}  # fmt: skip
    gen = client.app.state.runs[0].generator(None, "cpu")
    for seed in range(3):
        shown = gen.sample(len(fakes), seed=seed)
        assert not fakes & {bytes(img[0].numpy().tobytes()) for img in shown}
