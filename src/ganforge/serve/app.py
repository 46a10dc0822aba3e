"""`ganforge serve`: a local web app to generate images from trained runs, translate images with
translation runs (pix2pix, CycleGAN), and run human real-or-fake studies (HYPE-infinity, Zhou et al.
2019). FastAPI; the pages are plain HTML/CSS/JS shipped in this package (no CDN, works offline)."""

from __future__ import annotations

import base64
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
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse

from ganforge.checkpoint import CheckpointError, find_checkpoint
from ganforge.config import TRANSLATION_FAMILIES
from ganforge.data import fit_note
from ganforge.models import MODELS, is_vae
from ganforge.sample import TrainedGenerator, encode_png, load, make_grid
from ganforge.serve.store import StudyError, StudyRun, StudyStore, check_token
from ganforge.serve.uploads import MAX_UPLOAD, UPLOAD_TYPES, read_upload

STATIC_DIR = Path(__file__).parent / "static"
# the only files the app serves from disk: a fixed list, so no request path ever reaches the filesystem
STATIC = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in (".html", ".css", ".js", ".svg")}
PAGES = {"generate": "generate.html", "studies": "studies.html", "rate": "rate.html", "results": "results.html",
         "translate": "translate.html"}  # fmt: skip
# bytes; every request this app accepts is a small JSON object, but for an image upload (POST to
# UPLOAD_PATH: the file is the body), which may have up to uploads.MAX_UPLOAD
MAX_BODY = 16 * 1024
UPLOAD_PATH = re.compile(r"^/api/runs/[^/]+/translate$")
DIRECTION = "^(a2b|b2a)$"  # a translation's direction: a2b, or b2a (CycleGAN's way back)
MAX_TEST_INPUTS = 16  # the test inputs the Translate page offers: the first of the run's test split
MAX_GRID = 256
MAX_FRAMES = 16
MAX_SEED = 2**31 - 1
MIN_TRUNCATION = 0.05
ADMIN_HEADER = "X-Admin-Key"  # listing and creating studies need it (the Studies page sends it)
ADMIN_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")  # URL-safe: it travels in the printed Studies link
MAX_STUDIES = 50  # per database: each study stores every image of its pools (hundreds of PNGs)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class ServeError(RuntimeError):
    """A run that cannot be served (named, with the reason)."""


def _family(config: dict[str, Any]) -> str:
    name = config["model"]["name"]
    if is_vae(name):
        return "vae"
    return MODELS[name].family if MODELS[name].family in TRANSLATION_FAMILIES else "gan"


@dataclass
class ServedRun:
    key: str  # what requests use: the run's position on the command line
    name: str
    checkpoints: dict[str, Path]  # name -> file; a request names a checkpoint, never a path
    default: str
    config: dict[str, Any]
    step: Optional[int]
    _loaded: dict[str, TrainedGenerator] = field(default_factory=dict)
    # direction -> the Translate page's test inputs, uint8 [N, C, H, W]
    _test_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """gan, vae, or a translation family (translation: pix2pix; cyclegan)."""
        return _family(self.config)

    @property
    def translation(self) -> bool:
        return self.family in TRANSLATION_FAMILIES

    @property
    def directions(self) -> list[str]:
        return {"translation": ["a2b"], "cyclegan": ["a2b", "b2a"]}.get(self.family, [])

    def generator(self, checkpoint: Optional[str], device: str) -> TrainedGenerator:
        name = checkpoint or self.default
        if name not in self.checkpoints:
            raise StudyError(
                f"run {self.key} has no checkpoint '{str(name)[:80]}'; choose one of {', '.join(self.checkpoints)}", 404
            )
        if name not in self._loaded:
            self._loaded[name] = self._load(name, device)
        return self._loaded[name]

    def _load(self, name: str, device: str) -> TrainedGenerator:
        """The newest checkpoint was loaded at start; the others load on first use, and one may be damaged
        (empty, truncated: CheckpointError), or intact but not loadable into its own config (weights of another
        version or architecture: errors from building the model), or another run's model dropped into the folder."""
        where = f"run {self.key} ({self.name}): cannot load checkpoint '{name}'"
        try:
            gen = load(self.checkpoints[name], device=device)
        except CheckpointError as e:
            raise StudyError(f"{where}: {e}", 422) from None
        except Exception as e:  # noqa: BLE001 - what a file's content can make model building raise, as a message
            lines = str(e).strip().splitlines()
            raise StudyError(f"{where}: its weights do not fit its configuration ({type(e).__name__}"
                             + (f": {lines[0][:200]}" if lines else "") + "); choose another checkpoint",
                             422) from None  # fmt: skip
        theirs, ours = gen.config["model"]["name"], self.config["model"]["name"]
        if _family(gen.config) != self.family:
            raise StudyError(f"{where}: it holds a {_family(gen.config)} model ({theirs}), not a {self.family} "
                             f"like the run's {ours}; choose another checkpoint", 422)  # fmt: skip
        return gen

    def test_inputs(self, direction: str, device: str) -> torch.Tensor:
        """The first MAX_TEST_INPUTS inputs of the run's test split for `direction` (kept: the Translate
        page shows them as thumbnails, then translates one)."""
        from ganforge.data import DatasetError

        if direction not in self._test_inputs:
            try:
                inputs, _, _ = self.generator(None, device).test_pairs(MAX_TEST_INPUTS, direction)
            except DatasetError as e:
                raise StudyError(f"run {self.key} ({self.name}): cannot load its test inputs: {e}", 422) from None
            self._test_inputs[direction] = inputs
        return self._test_inputs[direction]

    def describe(self) -> dict[str, Any]:
        model, data = self.config["model"], self.config["data"]
        described = {
            "id": self.key, "name": self.name, "checkpoints": list(self.checkpoints), "default_checkpoint": self.default,
            "step": self.step, "dataset": data["name"], "resolution": data["resolution"], "channels": data["channels"],
            "model": model["name"], "family": self.family, "translation": self.translation,
            "num_classes": model["num_classes"] if model.get("conditional") else None,
        }  # fmt: skip
        if self.translation:
            described.update(directions=self.directions, in_channels=model.get("in_channels") or 1,
                             translate_url=f"/translate/{self.key}",
                             upload={"types": list(UPLOAD_TYPES), "max_bytes": MAX_UPLOAD})  # fmt: skip
        return described

    def latent_generator(self, checkpoint: Optional[str], device: str) -> TrainedGenerator:
        """The generator, for what samples latents (Generate, studies); a translation run is told where to go."""
        if self.translation:
            raise StudyError(f"run {self.key} ({self.name}) is a translation model ({self.config['model']['name']}): "
                             f"it has no latents to generate from; translate images with it on its Translate page, "
                             f"/translate/{self.key}", 422)  # fmt: skip
        return self.generator(checkpoint, device)

    def translator(self, checkpoint: Optional[str], direction: str, device: str,
                   status: int = 422) -> TrainedGenerator:  # fmt: skip
        if not self.translation:
            raise StudyError(f"run {self.key} ({self.name}) is a {self.family.upper()} ({self.config['model']['name']}): "
                             "it generates from latents and translates no images, so it has no Translate page; "
                             f"generate with it on the Generate page, /?run={self.key}", status)  # fmt: skip
        if direction not in self.directions:
            raise StudyError(f"run {self.key} ({self.name}) translates {' or '.join(self.directions)}"
                             + (" only (a paired model has one direction)" if len(self.directions) == 1 else "")
                             + f", not '{direction[:20]}'", 422)  # fmt: skip
        return self.generator(checkpoint, device)


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
    """Refuse request bodies over `limit` bytes with 413 (`upload_limit` for an image upload to
    UPLOAD_PATH), whether or not they announce their length. The body is read here first and handed on."""

    def __init__(self, app, limit: int = MAX_BODY, upload_limit: int = MAX_UPLOAD):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and UPLOAD_PATH.match(scope["path"]):
            limit = self.upload_limit
            too_large = _json_error(413, f"image too large: the upload limit is {limit / 2**20:g} MiB ({limit:,} "
                                         "bytes); downscale it or save it as JPEG first")  # fmt: skip
        else:
            limit = self.limit
            too_large = _json_error(413, f"request body too large (limit {limit} bytes)")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await too_large(scope, receive, send)
        body = b"".join(chunks)
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


def check_admin_key(key: str) -> str:
    """A chosen admin key (`--admin-key`): long enough not to be guessed, and safe in a URL."""
    if not isinstance(key, str) or not ADMIN_KEY.match(key):
        raise ServeError("the admin key must be 16 to 128 characters of A-Z, a-z, 0-9, _ and -; "
                         "leave it out for a random one")  # fmt: skip
    return key


def studies_url(app: FastAPI, base: str) -> str:
    """The Studies page's link for whoever started the server: it carries the admin key (the page keeps
    it in the browser and drops it from the address bar)."""
    return f"{base.rstrip('/')}/studies?key={app.state.admin_key}"


def check_port(host: str, port: int) -> None:
    """Raise ServeError when `port` on `host` cannot be bound (in use, not this machine's address, a
    privileged port), as uvicorn will bind it: every address `host` resolves to, with SO_REUSEADDR."""
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ServeError(f"cannot bind '{host}': not an address or host name of this machine ({e})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ServeError(f"port {port} on {address[0]} is in use (another ganforge serve?); "
                                     "pass --port N") from None  # fmt: skip
                if e.errno == errno.EACCES:
                    raise ServeError(f"port {port} on {address[0]} needs privileges (ports below 1024 "
                                     "usually do); pass --port N with N >= 1024") from None  # fmt: skip
                raise ServeError(f"cannot bind port {port} on {address[0]}: {e.strerror or e}; "
                                 "pass another --host or --port") from None  # fmt: skip


def create_app(runs: list[ServedRun], store: StudyStore, device: str = "cpu", admin_key: Optional[str] = None,
               max_studies: Optional[int] = MAX_STUDIES) -> FastAPI:  # fmt: skip
    """The app: JSON errors and security headers, the pages, generation, translation, and the studies (the evaluator's
    endpoints: listing and creating behind `admin_key` (random when not given; app.state.admin_key), results behind
    each study's key; and the raters'). `max_studies`: the most studies the database may hold (None: no limit)."""
    from ganforge import __version__

    admin_key = secrets.token_urlsafe(24) if admin_key is None else check_admin_key(admin_key)
    if max_studies is not None and max_studies < 0:
        raise ServeError(f"max_studies must be 0 or more (None: no limit), got {max_studies}")
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
    _add_translation(app, runs, get_run, lock, device)
    _add_evaluator(app, store, get_run, lock, device, admin_key, max_studies)
    _add_raters(app, store)
    app.state.runs, app.state.store, app.state.admin_key, app.state.max_studies = runs, store, admin_key, max_studies
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

    @app.exception_handler(CheckpointError)
    async def checkpoint_error(request: Request, exc: CheckpointError):
        return _json_error(422, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: JSON like every error; the log has the traceback
        return _json_error(500, f"internal error ({type(exc).__name__}) in {request.url.path[:100]}; "
                                "the server's log has the details")  # fmt: skip

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
            gen = r.latent_generator(checkpoint, device)
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
            gen = r.latent_generator(checkpoint, device)
            images = gen.interpolate(seed_a, seed_b, frames, classes=_classes(gen, cls), truncation=truncation)
        return _png_response(images, frames, f"{r.name}-seed{seed_a}-to-{seed_b}.png", download, seed_a)


def _png_b64(image: torch.Tensor) -> str:
    """uint8 [C, H, W] -> base64 PNG, for a JSON answer that carries an input and its output together."""
    return base64.b64encode(encode_png(image.permute(1, 2, 0).cpu().numpy())).decode("ascii")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:60] or "image"


def _translated(r: ServedRun, gen: TrainedGenerator, image: torch.Tensor, direction: str, checkpoint: Optional[str],
                source: str, fitted: str, stem: str) -> dict[str, Any]:  # fmt: skip
    """One image uint8 [C, H, W] translated: the input as the model sees it (adapted) beside the output."""
    seen = gen.adapt(image[None], direction)  # [1, C_in, R, R]: resized, centre-cropped, its channels
    output = gen.translate(seen, direction=direction)  # [1, C_out, R, R]
    return {
        "run": r.key, "checkpoint": checkpoint or r.default, "direction": direction, "source": source,
        "fitted": fitted, "resolution": gen.resolution, "input_png": _png_b64(seen[0]),
        "output_png": _png_b64(output[0]), "filename": f"{_safe_name(r.name)}-{direction}-{_safe_name(stem)}.png",
    }  # fmt: skip


def _add_translation(app: FastAPI, runs: list[ServedRun], get_run: Callable[[str], ServedRun],
                     lock: threading.Lock, device: str) -> None:  # fmt: skip
    """Translation runs (pix2pix, CycleGAN): their page, their test inputs, and the translation of one
    of those or of an uploaded image (in JSON: the adapted input and the output, as base64 PNGs)."""
    @app.get("/translate", include_in_schema=False)
    def translate_first():
        first = next((r for r in runs if r.translation), None)
        if first is None:
            raise StudyError("no translation run is served: the Translate page is for pix2pix and CycleGAN runs", 404)
        return RedirectResponse(f"/translate/{first.key}", status_code=307)

    @app.get("/translate/{run}", include_in_schema=False)
    def translate_page(run: str):
        get_run(run).translator(None, "a2b", device, status=404)  # a GAN run: what it is and where to go
        return FileResponse(STATIC[PAGES["translate"]], media_type="text/html")

    @app.get("/api/runs/{run}/test-inputs")
    def test_inputs(run: str, direction: str = Query("a2b", pattern=DIRECTION)):
        r = get_run(run)
        with lock:
            r.translator(None, direction, device)
            inputs = r.test_inputs(direction, device)
        return {"direction": direction, "dataset": f"{r.config['data']['name']}:test", "count": len(inputs)}

    @app.get("/api/runs/{run}/test-inputs/{index}.png")
    def test_input_png(run: str, index: int, direction: str = Query("a2b", pattern=DIRECTION)):
        r = get_run(run)
        with lock:
            r.translator(None, direction, device)
            inputs = r.test_inputs(direction, device)
        if not 0 <= index < len(inputs):
            raise StudyError(f"test input {index}: run {r.key} offers the test inputs 0..{len(inputs) - 1}", 404)
        return Response(encode_png(inputs[index].permute(1, 2, 0).numpy()), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600", **SECURITY_HEADERS})  # fmt: skip

    @app.get("/api/runs/{run}/translate")
    def translate_test_input(run: str, test: int = Query(..., ge=0, lt=MAX_TEST_INPUTS),
                             direction: str = Query("a2b", pattern=DIRECTION),
                             checkpoint: Optional[str] = Query(None, max_length=64)):  # fmt: skip
        r = get_run(run)
        with lock:
            gen = r.translator(checkpoint, direction, device)
            inputs = r.test_inputs(direction, device)
            if test >= len(inputs):
                raise StudyError(f"test input {test}: run {r.key} offers the test inputs 0..{len(inputs) - 1}", 404)
            fitted = fit_note(*inputs.shape[2:], gen.resolution) or "used as stored"
            source = f"test input {test} of {r.config['data']['name']}:test"
            return _translated(r, gen, inputs[test], direction, checkpoint, source, fitted, f"test{test}")

    @app.post("/api/runs/{run}/translate")
    async def translate_upload(request: Request, run: str,
                               direction: str = Query("a2b", pattern=DIRECTION),
                               checkpoint: Optional[str] = Query(None, max_length=64),
                               name: Optional[str] = Query(None, max_length=255)):  # fmt: skip
        """The body is the image file itself (Content-Type image/png, ...): no multipart, no form. That
        type also keeps other sites' pages out: a browser sends it cross-origin only after a CORS
        preflight, which this app never answers."""
        r = get_run(run)
        r.translator(None, direction, device)  # a GAN run or a wrong direction: refused before reading
        body = await request.body()  # at most MAX_UPLOAD bytes (BodyLimit)

        def work() -> dict[str, Any]:  # decoding and the model: off the event loop
            c_in = r.translator(None, direction, device).channels_of(direction)[0]  # any checkpoint's: one config
            upload = read_upload(body, request.headers.get("content-type"), c_in)
            with lock:
                gen = r.translator(checkpoint, direction, device)
                h, w = upload.image.shape[1:]
                source = f"uploaded {upload.format} image" + (f" '{name[:80]}'" if name else "") + f", {w}x{h}"
                return _translated(r, gen, upload.image, direction, checkpoint, source,
                                   upload.fitted(gen.resolution, c_in), Path(name or "upload").stem)  # fmt: skip

        return await run_in_threadpool(work)


def _add_evaluator(app: FastAPI, store: StudyStore, get_run: Callable[[str], ServedRun], lock: threading.Lock,
                   device: str, admin_key: str, max_studies: Optional[int]) -> None:  # fmt: skip
    """Studies, the evaluator's side: create one (draws and stores the images) and list them (with the
    admin key), read the results and the votes (with the study's key)."""
    def require_admin(request: Request) -> None:
        given = request.headers.get(ADMIN_HEADER)
        if not given or not secrets.compare_digest(given.encode(), admin_key.encode()):
            raise StudyError("listing and creating studies needs the admin key that `ganforge serve` printed at "
                             f"start: open the Studies link it printed (/studies?key=...), or send the "
                             f"{ADMIN_HEADER} header", 403)  # fmt: skip

    @app.post("/api/studies", status_code=201)
    def create_study(request: Request, body: StudyIn):
        require_admin(request)
        store.check_room(max_studies)  # before drawing the images; create_study checks again as it stores
        chosen = [get_run(k) for k in body.runs]
        for r in chosen:
            if r.translation:
                raise StudyError(f"run {r.key} ({r.name}) is a translation model: a real-or-fake study compares "
                                 "a generator's samples with real images; choose GAN or VAE runs", 422)  # fmt: skip
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
        made = store.create_study(body.name, members, body.real_per_rater, body.fake_per_rater, max_studies)
        return {**made, "rate_url": f"/rate/{made['id']}", "results_url": f"/results/{made['id']}?key={made['admin_key']}"}

    @app.get("/api/studies")
    def list_studies(request: Request):
        require_admin(request)
        return {"studies": store.studies(), "max_studies": max_studies}

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
    @app.get("/api/studies/{study}")
    def study_name(study: str):  # for the rater page's title: the id is in the rater's link already
        return {"id": study, "name": store.study_name(study)}

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
