"""`ganforge serve`'s Translate page and API with FastAPI's test client: a tiny pix2pix run (upload,
test inputs, the checks on uploads, GAN and damaged-checkpoint errors, translation runs on the Generate
and study endpoints) and a tiny CycleGAN run (two directions)."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from ganforge.serve.app import ServeError, create_app, open_runs  # noqa: E402
from ganforge.serve.store import StudyStore  # noqa: E402
from ganforge.serve.uploads import MAX_UPLOAD  # noqa: E402
from tests.conftest import shared_data, tiny  # noqa: E402

ADMIN_KEY = "test-admin-key-0123456789"


def _train(root: Path, name: str, data: dict, **extra) -> Path:
    from ganforge import train
    from ganforge.config import build_config

    overrides = {
        "data": {"limit": 64, "download": False, **data},
        "model": {"g_channels": 8, "d_channels": 8},
        # fp32: bf16 autocast makes instance norm on the CPU about 5x slower
        "train": {"batch_size": 8, "steps": 2, "log_every": 1, "checkpoint_every": 1, "n_samples": 4,
                  "device": "cpu", "precision": "fp32"},
        "run": {"runs_dir": str(root), "name": name},
        **extra,
    }  # fmt: skip
    return train(build_config(overrides=overrides), progress=False)


def pix2pix_run(root: Path) -> Path:
    """pix2pix28 on edges2fashion (Fashion-MNIST, Debian's dataset-fashion-mnist), 2 steps: ~2 s."""
    from ganforge.data import DatasetError

    try:
        return _train(root, "edges", {"name": "edges2fashion"})
    except DatasetError as e:
        pytest.skip(f"edges2fashion needs Fashion-MNIST: {e}")


def cyclegan_run(root: Path) -> Path:
    """cyclegan28 on mnist2mnistm (MNIST and CIFAR-10 from the shared data), 2 steps: ~6 s."""
    data = shared_data()
    if data is None or not (data / "cifar10").is_dir():
        pytest.skip("mnist2mnistm needs MNIST and CIFAR-10: set GANFORGE_DATA (see README)")
    return _train(root, "cycle", {"name": "mnist2mnistm"}, loss={"name": "least-squares", "pool_size": 4})


def gan_run(root: Path) -> Path:
    from ganforge import train
    from ganforge.config import build_config

    overrides = tiny(root, steps=2)
    overrides["run"]["name"] = "gan"
    return train(build_config(overrides=overrides), progress=False)


@pytest.fixture(scope="module")
def data_env():
    """GANFORGE_DATA where the shared data is (the loaders' download is off), for the module."""
    with pytest.MonkeyPatch.context() as mp:
        if shared_data() is not None:
            mp.setenv("GANFORGE_DATA", str(shared_data()))
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_env) -> list[Path]:
    root = tmp_path_factory.mktemp("serve-translate")
    return [gan_run(root), pix2pix_run(root)]  # run 0: a GAN, run 1: pix2pix


@pytest.fixture(scope="module")
def client(runs, tmp_path_factory):
    app = create_app(open_runs(runs), StudyStore(tmp_path_factory.mktemp("db") / "studies.db"), admin_key=ADMIN_KEY)
    with TestClient(app) as c:
        yield c


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def photo(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response, status: int, words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["status"] == status and words in body["error"], body
    assert "Traceback" not in response.text


def test_runs_list_says_which_runs_translate(client):
    gan, p2p = ok(client.get("/api/runs"))["runs"]
    assert not gan["translation"] and "translate_url" not in gan and gan["family"] == "gan"
    assert p2p["translation"] and p2p["family"] == "translation" and p2p["directions"] == ["a2b"]
    assert p2p["translate_url"] == "/translate/1" and "image/png" in p2p["upload"]["types"]
    assert p2p["upload"]["max_bytes"] == MAX_UPLOAD


def test_translate_page_is_served_for_translation_runs_only(client):
    r = client.get("/translate/1")
    assert r.status_code == 200 and "<!doctype html>" in r.text.lower()
    assert "http://" not in r.text and "https://" not in r.text  # no CDN
    assert client.get("/static/translate.js").headers["content-type"].startswith("text/javascript")
    first = client.get("/translate", follow_redirects=False)
    assert first.status_code == 307 and first.headers["location"] == "/translate/1"
    refused(client.get("/translate/0"), 404, "has no Translate page")
    refused(client.get("/translate/0"), 404, "/?run=0")  # and where to go instead
    refused(client.get("/translate/7"), 404, "no run")


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("get", "/api/runs/0/translate?test=0", 422, "translates no images"),
        ("get", "/api/runs/0/test-inputs", 422, "GAN"),
        ("get", "/api/runs/0/test-inputs/0.png", 422, "Generate page"),
        ("post", "/api/runs/0/translate", 422, "translates no images"),
        ("get", "/api/runs/1/translate?test=0&direction=b2a", 422, "a2b only"),
        ("get", "/api/runs/1/test-inputs?direction=b2a", 422, "a2b only"),
        ("get", "/api/runs/1/translate?test=0&direction=sideways", 422, "direction"),
        ("get", "/api/runs/1/translate?test=16", 422, "test"),
        ("get", "/api/runs/1/translate?test=-1", 422, "test"),
        ("get", "/api/runs/1/translate", 422, "test"),
        ("get", "/api/runs/1/test-inputs/16.png", 404, "0..15"),
        ("get", "/api/runs/1/translate?test=0&checkpoint=../../etc/passwd", 404, "no checkpoint"),
        ("get", "/api/runs/1/grid.png", 422, "/translate/1"),  # the Generate page's requests
        ("get", "/api/runs/1/interpolation.png?seed_a=1&seed_b=2", 422, "no latents"),
    ],
)
def test_what_a_run_cannot_do_is_a_clear_error(client, method, path, status, words):
    r = client.post(path, content=png_bytes(photo()), headers={"content-type": "image/png"}) if method == "post" \
        else client.get(path)  # fmt: skip
    refused(r, status, words)


def test_a_study_of_a_translation_run_is_refused_clearly(client):
    r = client.post("/api/studies", json={"name": "s", "runs": ["0", "1"], "real_per_rater": 2, "fake_per_rater": 2},
                    headers={"X-Admin-Key": ADMIN_KEY})  # fmt: skip
    refused(r, 422, "run 1 (edges) is a translation model")


def test_test_inputs_and_their_translation(client):
    info = ok(client.get("/api/runs/1/test-inputs"))
    assert info == {"direction": "a2b", "dataset": "edges2fashion:test", "count": 16}
    gen = client.app.state.runs[1].generator(None, "cpu")
    inputs, _, _ = gen.test_pairs(16)
    thumb = client.get("/api/runs/1/test-inputs/3.png")
    assert thumb.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(thumb.content))), inputs[3, 0].numpy())
    r = ok(client.get("/api/runs/1/translate?test=3"))
    assert r["source"] == "test input 3 of edges2fashion:test" and r["fitted"] == "used as stored"
    assert r["direction"] == "a2b" and r["checkpoint"] == client.app.state.runs[1].default
    assert r["filename"] == "edges-a2b-test3.png"
    assert np.array_equal(decoded(r["input_png"]), inputs[3, 0].numpy())
    assert np.array_equal(decoded(r["output_png"]), gen.translate(inputs[3:4])[0, 0].numpy())
    other = ok(client.get("/api/runs/1/translate?test=3&checkpoint=step_0000001.pt"))
    assert other["checkpoint"] == "step_0000001.pt"


def test_an_upload_is_fitted_and_translated_as_the_cli_does(client, tmp_path, capsys):
    from ganforge.cli import main

    image = photo(48, 64)
    r = ok(client.post("/api/runs/1/translate?name=my%20photo.png", content=png_bytes(image),
                       headers={"content-type": "image/png"}))  # fmt: skip
    assert "resized from 64x48 to 28x28 (shorter side, centre crop)" in r["fitted"]
    assert "colour converted to gray" in r["fitted"]
    assert r["source"] == "uploaded PNG image 'my photo.png', 64x48"
    assert r["filename"] == "edges-a2b-my_photo.png"  # a safe download name
    assert decoded(r["input_png"]).shape == (28, 28) and decoded(r["output_png"]).shape == (28, 28)
    # `ganforge translate` on the same file writes the same output
    (tmp_path / "p.png").write_bytes(png_bytes(image))
    run_dir = client.app.state.runs[1].checkpoints[client.app.state.runs[1].default]
    assert main(["translate", str(run_dir), str(tmp_path / "p.png"), "--out", str(tmp_path / "out")]) == 0
    assert "resized from 64x48 to 28x28" in capsys.readouterr().out
    assert np.array_equal(decoded(r["output_png"]), np.asarray(Image.open(tmp_path / "out" / "p.png")))
    # other formats and modes: JPEG, RGBA (alpha over white), gray at the model's size
    jpeg = ok(client.post("/api/runs/1/translate", content=png_bytes(image, "JPEG"), headers={"content-type": "image/jpeg"}))
    assert jpeg["source"].startswith("uploaded JPEG image, 64x48") and jpeg["filename"] == "edges-a2b-upload.png"
    rgba = np.dstack([image, np.full(image.shape[:2], 128, np.uint8)])
    ok(client.post("/api/runs/1/translate", content=png_bytes(rgba), headers={"content-type": "image/png"}))
    gray = ok(client.post("/api/runs/1/translate", content=png_bytes(image[:28, :28, 0]),
                          headers={"content-type": "image/png; charset=binary"}))  # fmt: skip
    assert gray["fitted"] == "used at its own size"


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo()).save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"hello, I am a text file\n" * 10, "image/png", 422, "not an image"),
        (png_bytes(photo()), "text/plain", 415, "unsupported upload type 'text/plain'"),
        (png_bytes(photo()), None, 415, "unsupported upload type 'none'"),
        (png_bytes(photo()), "application/json", 415, "unsupported upload type"),  # not the JSON endpoints' type
        (_gif(), "image/gif", 415, "unsupported upload type 'image/gif'"),
        (_gif(), "image/png", 415, "unsupported image format GIF"),  # what it is, not what it says
        (b"", "image/png", 422, "empty"),
        (png_bytes(photo(4, 4)), "image/png", 422, "too small (4x4 pixels"),
        (png_bytes(photo())[:300], "image/png", 422, "cannot read the uploaded image"),
        (png_bytes(np.zeros((4100, 4100), np.uint8)), "image/png", 413, "4096x4096"),  # 17 MP in 17 kB
        (b"\x89PNG" + b"\0" * (MAX_UPLOAD + 1), "image/png", 413, "upload limit is 10 MiB"),
    ],
    ids=["text", "text/plain", "no-type", "json", "gif", "gif-as-png", "empty", "tiny", "truncated", "17MP",
         "11MB"],
)
def test_bad_uploads_are_refused_clearly(client, body, content_type, status, words):
    headers = {"content-type": content_type} if content_type else {}
    refused(client.post("/api/runs/1/translate", content=body, headers=headers), status, words)


def test_the_upload_limit_holds_without_a_content_length_and_only_for_uploads(client):
    chunks = (b"x" * 2**20 for _ in range(11))  # chunked: no Content-Length
    refused(client.post("/api/runs/1/translate", content=chunks, headers={"content-type": "image/png"}),
            413, "upload limit")  # fmt: skip
    big_json = {"name": "x" * 20_000, "runs": ["0"]}
    refused(client.post("/api/studies", json=big_json), 413, "request body too large (limit 16384 bytes)")


def test_a_damaged_checkpoint_is_a_clear_error(runs, tmp_path):
    run = tmp_path / "edges"
    shutil.copytree(runs[1], run)
    ckpt = run / "checkpoints" / "step_0000001.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:4000])
    with TestClient(create_app(open_runs([run]), StudyStore(tmp_path / "s.db"))) as c:
        refused(c.get("/api/runs/0/translate?test=0&checkpoint=step_0000001.pt"), 422,
                "run 0 (edges): cannot load checkpoint 'step_0000001.pt'")  # fmt: skip
        refused(c.post("/api/runs/0/translate?checkpoint=step_0000001.pt", content=png_bytes(photo()),
                       headers={"content-type": "image/png"}), 422, "damaged")  # fmt: skip
        ok(c.get("/api/runs/0/translate?test=0"))  # the intact newest still serves
    shutil.copy(runs[0] / "checkpoints" / "last.pt", run / "checkpoints" / "gan.pt")  # another run's model
    shutil.copy(ckpt, run / "checkpoints" / "empty.pt")
    (run / "checkpoints" / "empty.pt").write_bytes(b"")
    with TestClient(create_app(open_runs([run]), StudyStore(tmp_path / "s.db"))) as c:
        refused(c.get("/api/runs/0/translate?test=0&checkpoint=gan.pt"), 422,
                "cannot load checkpoint 'gan.pt': it holds a gan model (dcgan28-classic), not a translation")  # fmt: skip
        refused(c.post("/api/runs/0/translate?checkpoint=empty.pt", content=png_bytes(photo()),
                       headers={"content-type": "image/png"}), 422, "an empty file, 0 bytes")  # fmt: skip
    newest = run / "checkpoints" / "last.pt"
    newest.write_bytes(newest.read_bytes()[:4000])
    with pytest.raises(ServeError, match="cannot serve .* damaged"):
        open_runs([run])


def test_a_cyclegan_run_translates_both_ways(tmp_path, data_env):
    run = cyclegan_run(tmp_path)
    with TestClient(create_app(open_runs([run]), StudyStore(tmp_path / "s.db"))) as c:
        (described,) = ok(c.get("/api/runs"))["runs"]
        assert described["family"] == "cyclegan" and described["directions"] == ["a2b", "b2a"]
        served = c.app.state.runs[0]
        gen = served.generator(None, "cpu")
        for direction in ("a2b", "b2a"):
            assert ok(c.get(f"/api/runs/0/test-inputs?direction={direction}"))["count"] == 16
            inputs = served.test_inputs(direction, "cpu")  # kept from the request (test_pairs: ~2 s each)
            r = ok(c.get(f"/api/runs/0/translate?test=2&direction={direction}"))
            assert r["direction"] == direction and r["filename"] == f"cycle-{direction}-test2.png"
            assert np.array_equal(decoded(r["input_png"]), inputs[2].permute(1, 2, 0).numpy())
            expected = gen.translate(inputs[2:3], direction=direction)[0].permute(1, 2, 0).numpy()
            assert np.array_equal(decoded(r["output_png"]), expected)
        a = c.get("/api/runs/0/test-inputs/0.png?direction=a2b").content
        b = c.get("/api/runs/0/test-inputs/0.png?direction=b2a").content
        assert a != b  # each direction offers its own domain's inputs
        up = ok(c.post("/api/runs/0/translate?direction=b2a", content=png_bytes(photo()[:, :, 0]),
                       headers={"content-type": "image/png"}))  # fmt: skip
        assert "gray repeated into the 3 colour channels" in up["fitted"]
        assert decoded(up["output_png"]).shape == (28, 28, 3)
