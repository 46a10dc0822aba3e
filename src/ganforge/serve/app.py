"""`ganforge serve`: a local web app to generate images from trained runs and to run human
real-or-fake studies (HYPE-infinity, Zhou et al. 2019). FastAPI; the pages are plain HTML/CSS/JS
shipped in this package (no CDN, works offline)."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ganforge.checkpoint import CheckpointError, find_checkpoint
from ganforge.models import is_vae
from ganforge.sample import TrainedGenerator, encode_png, load, make_grid
from ganforge.serve.store import StudyError, StudyRun, StudyStore, check_token

STATIC_DIR = Path(__file__).parent / "static"
# the only files the app serves from disk: a fixed list, so no request path ever reaches the filesystem
STATIC = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in (".html", ".css", ".js", ".svg")}
PAGES = {"generate": "generate.html", "studies": "studies.html", "rate": "rate.html", "results": "results.html"}
MAX_BODY = 16 * 1024  # bytes; every request this app accepts is a small JSON object
MAX_GRID = 256
MAX_FRAMES = 16
MAX_SEED = 2**31 - 1
MIN_TRUNCATION = 0.05
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class ServeError(RuntimeError):
    """A run that cannot be served (named, with the reason)."""


@dataclass
class ServedRun:
    key: str  # what requests use: the run's position on the command line
    name: str
    checkpoints: dict[str, Path]  # name -> file; a request names a checkpoint, never a path
    default: str
    config: dict[str, Any]
    step: Optional[int]
    _loaded: dict[str, TrainedGenerator] = field(default_factory=dict)

    def generator(self, checkpoint: Optional[str], device: str) -> TrainedGenerator:
        name = checkpoint or self.default
        if name not in self.checkpoints:
            raise StudyError(
                f"run {self.key} has no checkpoint '{str(name)[:80]}'; choose one of {', '.join(self.checkpoints)}", 404
            )
        if name not in self._loaded:
            self._loaded[name] = load(self.checkpoints[name], device=device)
        return self._loaded[name]

    def describe(self) -> dict[str, Any]:
        model, data = self.config["model"], self.config["data"]
        return {
            "id": self.key, "name": self.name, "checkpoints": list(self.checkpoints), "default_checkpoint": self.default,
            "step": self.step, "dataset": data["name"], "resolution": data["resolution"], "channels": data["channels"],
            "model": model["name"], "family": "vae" if is_vae(model["name"]) else "gan",
            "num_classes": model["num_classes"] if model.get("conditional") else None,
        }  # fmt: skip


def open_runs(paths: list[str | Path], device: str = "cpu") -> list[ServedRun]:
    """Load each run's newest checkpoint once (to fail early, naming the run) and list its others."""
    runs = []
    names: set[str] = set()
    for i, path in enumerate(paths):
        path = Path(path)
        try:
            newest = find_checkpoint(path)
            gen = load(newest, device=device)
        except CheckpointError as e:
            raise ServeError(f"cannot serve '{path}': {e}") from None
        if gen.points:
            raise ServeError(f"cannot serve '{path}': it generates 2D points, not images; plot it with `ganforge sample`.")
        files = sorted(newest.parent.glob("*.pt")) if path.is_dir() else [newest]
        name = path.name if path.is_dir() else path.stem
        while name in names:  # two runs with one folder name (from different parents)
            name += f"-{i}"
        names.add(name)
        run = ServedRun(str(i), name, {f.name: f for f in files}, newest.name, gen.config, gen.training.get("step"))
        run._loaded[newest.name] = gen
        runs.append(run)
    return runs


# -- request bodies (anything else in them is refused) --------------------------------------------


class StudyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    runs: list[str] = Field(min_length=1, max_length=8)
    real_per_rater: int = Field(50, ge=1, le=500)
    fake_per_rater: int = Field(50, ge=1, le=500)
    truncation: Optional[float] = Field(None, ge=MIN_TRUNCATION, le=4)


class RaterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=8, max_length=64)
    answer: Literal["real", "fake"]
    ms: Optional[int] = Field(None, ge=0, le=3_600_000)  # time the rater took, for the CSV


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not they announce their length.
    The (small) body is read here first and handed on to the app."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = _json_error(413, f"request body too large (limit {self.limit} bytes)")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_large(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: the disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=SECURITY_HEADERS)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _png_response(images: torch.Tensor, nrow: Optional[int], filename: str, download: bool, seed: int) -> Response:
    headers = {"X-Seed": str(seed), "Cache-Control": "no-store", **SECURITY_HEADERS}
    if download:  # header values are Latin-1: keep the name to safe ASCII
        headers["Content-Disposition"] = f'attachment; filename="{re.sub(r"[^A-Za-z0-9._-]", "_", filename)}"'
    return Response(encode_png(make_grid(images, nrow)), media_type="image/png", headers=headers)


def _real_pool(run: ServedRun, n: int, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """`n` real images from the run's dataset, held-out split where it has one."""
    from ganforge.data import DatasetError
    from ganforge.metrics.evaluate import load_reference, parse_ref

    data = run.config["data"]
    dataset, split = parse_ref(None, data)
    try:
        ref = load_reference(dataset, split, data)
    except DatasetError as e:
        raise StudyError(f"run {run.key} ({run.name}): cannot load its real images: {e}", 422) from None
    if len(ref) < n:
        raise StudyError(f"run {run.key} ({run.name}): its {dataset}:{split} split has {len(ref)} images, fewer "
                         f"than the {n} the study needs; lower the images per rater", 422)  # fmt: skip
    idx = torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))[:n]
    return ref.images[idx], {"real": f"{dataset}:{split}", "real_split_size": len(ref)}


def create_app(runs: list[ServedRun], store: StudyStore, device: str = "cpu") -> FastAPI:
    """The app: JSON errors and security headers, the pages, generation, and the studies (the evaluator's
    endpoints, behind each study's key, and the raters')."""
    from ganforge import __version__

    app = FastAPI(title="ganforge", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)
    by_key = {r.key: r for r in runs}
    lock = threading.Lock()  # one generation at a time: torch already uses every core for one

    def get_run(key: str) -> ServedRun:
        if key not in by_key:
            raise StudyError(f"no run '{key[:20]}'; the runs are {', '.join(by_key)} (GET /api/runs)", 404)
        return by_key[key]

    _add_errors_and_headers(app)
    _add_pages(app)
    _add_generation(app, runs, get_run, lock, device)
    _add_evaluator(app, store, get_run, lock, device)
    _add_raters(app, store)
    app.state.runs, app.state.store = runs, store
    return app


def _add_errors_and_headers(app: FastAPI) -> None:
    """Every error as JSON {"error": ...} with its status; security headers on every response."""
    @app.exception_handler(StudyError)
    async def study_error(request: Request, exc: StudyError):
        return _json_error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if exc.status_code != 404 else f"not found: {request.url.path[:100]}"
        return _json_error(exc.status_code, str(detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _json_error(422, _describe_validation(exc))

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError):
        return _json_error(422, str(exc))

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _add_pages(app: FastAPI) -> None:
    def page(name: str) -> FileResponse:
        return FileResponse(STATIC[PAGES[name]], media_type="text/html")

    @app.get("/", include_in_schema=False)
    def generate_page():
        return page("generate")

    @app.get("/studies", include_in_schema=False)
    def studies_page():
        return page("studies")

    @app.get("/rate/{study}", include_in_schema=False)
    def rate_page(study: str):
        check_token(study, "study")
        return page("rate")

    @app.get("/results/{study}", include_in_schema=False)
    def results_page(study: str):
        check_token(study, "study")
        return page("results")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC["favicon.svg"], media_type="image/svg+xml")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in STATIC:
            raise StudyError(f"no static file '{name[:80]}'", 404)
        kind = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
        return FileResponse(STATIC[name], media_type=kind[STATIC[name].suffix])


def _add_generation(app: FastAPI, runs: list[ServedRun], get_run: Callable[[str], ServedRun],
                    lock: threading.Lock, device: str) -> None:  # fmt: skip
    @app.get("/api/runs")
    def list_runs():
        return {"runs": [r.describe() for r in runs]}

    def _classes(gen: TrainedGenerator, cls: Optional[int]) -> Optional[int]:
        if cls is not None:
            gen.labels(1, cls)  # ValueError (-> 422) when unconditional or out of range
        return cls

    @app.get("/api/runs/{run}/grid.png")
    def grid(
        run: str,
        checkpoint: Optional[str] = Query(None, max_length=64),
        seed: Optional[int] = Query(None, ge=0, le=MAX_SEED),
        n: int = Query(16, ge=1, le=MAX_GRID),
        cls: Optional[int] = Query(None, ge=0, alias="class"),
        truncation: Optional[float] = Query(None, ge=MIN_TRUNCATION, le=4),
        download: bool = False,
    ):
        r = get_run(run)
        seed = secrets.randbelow(MAX_SEED) if seed is None else seed
        with lock:
            gen = r.generator(checkpoint, device)
            images = gen.sample(n, seed=seed, classes=_classes(gen, cls), truncation=truncation)
        nrow = gen.num_classes if gen.num_classes and cls is None and gen.num_classes <= 16 and n >= gen.num_classes else None
        return _png_response(images, nrow, f"{r.name}-seed{seed}.png", download, seed)

    @app.get("/api/runs/{run}/interpolation.png")
    def interpolation(
        run: str,
        seed_a: int = Query(..., ge=0, le=MAX_SEED),
        seed_b: int = Query(..., ge=0, le=MAX_SEED),
        frames: int = Query(8, ge=2, le=MAX_FRAMES),
        checkpoint: Optional[str] = Query(None, max_length=64),
        cls: Optional[int] = Query(None, ge=0, alias="class"),
        truncation: Optional[float] = Query(None, ge=MIN_TRUNCATION, le=4),
        download: bool = False,
    ):
        r = get_run(run)
        with lock:
            gen = r.generator(checkpoint, device)
            images = gen.interpolate(seed_a, seed_b, frames, classes=_classes(gen, cls), truncation=truncation)
        return _png_response(images, frames, f"{r.name}-seed{seed_a}-to-{seed_b}.png", download, seed_a)


def _add_evaluator(app: FastAPI, store: StudyStore, get_run: Callable[[str], ServedRun],
                   lock: threading.Lock, device: str) -> None:  # fmt: skip
    """Studies, the evaluator's side: create one (draws and stores the images), list them, read the
    results and the votes (with the study's key)."""
    @app.post("/api/studies", status_code=201)
    def create_study(body: StudyIn):
        chosen = [get_run(k) for k in body.runs]
        if body.real_per_rater != body.fake_per_rater:
            raise StudyError("real_per_rater and fake_per_rater must be equal: HYPE-infinity is the error rate on a "
                             "balanced mix (with more of one kind, always answering that kind would score above 50%)",
                             422)  # fmt: skip
        members = []
        pool_fake = 2 * body.fake_per_rater + 2  # raters draw different subsets; +2 for the tutorial
        pool_real = 2 * body.real_per_rater + 2
        # secret seeds, kept on the server: with a guessable one, the Generate page would show the fakes
        seeds = [secrets.randbelow(MAX_SEED) for _ in range(2 * len(chosen))]
        for i, r in enumerate(chosen):
            with lock:
                gen = r.generator(None, device)
                fake = gen.sample(pool_fake, seed=seeds[2 * i], truncation=body.truncation)
            real, where = _real_pool(r, pool_real, seeds[2 * i + 1])
            protocol = {"checkpoint": r.default, "step": r.step, "generator": "G_ema where kept",
                        "truncation": body.truncation, "fake_seed": seeds[2 * i], "real_seed": seeds[2 * i + 1],
                        **where}  # fmt: skip
            members.append(StudyRun(r.name, fake, real, protocol))
        made = store.create_study(body.name, members, body.real_per_rater, body.fake_per_rater)
        return {**made, "rate_url": f"/rate/{made['id']}", "results_url": f"/results/{made['id']}?key={made['admin_key']}"}

    @app.get("/api/studies")
    def list_studies():
        return {"studies": store.studies()}

    @app.get("/api/studies/{study}/results")
    def results(study: str, key: Optional[str] = Query(None, max_length=64)):
        store.check_key(study, key)
        return store.results(study)

    @app.get("/api/studies/{study}/votes.csv")
    def votes_csv(study: str, key: Optional[str] = Query(None, max_length=64)):
        store.check_key(study, key)
        return PlainTextResponse(
            store.votes_csv(study), media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="study-{study}.csv"'},
        )  # fmt: skip


def _add_raters(app: FastAPI, store: StudyStore) -> None:
    """Studies, the raters' side: nothing here says which images are real."""
    @app.get("/api/studies/{study}/tutorial")
    def tutorial(study: str):
        return {"examples": store.tutorial(study)}

    @app.post("/api/studies/{study}/raters", status_code=201)
    def join(study: str, body: RaterIn):
        return store.join(study, body.name)

    @app.get("/api/raters/{rater}")
    def rater_state(rater: str):
        return store.state(rater)

    @app.post("/api/raters/{rater}/votes")
    def vote(rater: str, body: VoteIn):
        return store.vote(rater, body.image, body.answer, body.ms)

    @app.get("/api/images/{image}")
    def image(image: str):
        return Response(store.image_png(image), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600", **SECURITY_HEADERS})  # fmt: skip


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0: a free one); yields its base URL.
    For tests, benchmarks and notebooks; `ganforge serve` runs uvicorn in the foreground."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServeError("the web server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
