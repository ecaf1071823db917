"""``freetumor turing serve``: the blinded web app of the Visual Turing Test.

A reader opens their personal link ``/r/<token>``; the page keeps the token in memory (and
``sessionStorage``) and calls the JSON API with ``Authorization: Bearer <token>``:

* ``GET /api/me`` — the reader's name and progress (answered / total).
* ``GET /api/study`` — slice count and size, spacing, window presets, and the cases in this
  reader's own order (a deterministic shuffle seeded from the study and the reader id).
* ``GET /api/cases/{id}/volume`` — the case as raw little-endian int16 HU, shape
  (slices, rows, cols); the same headers and length for every case.
* ``GET /api/answers`` — the reader's own answers.
* ``PUT /api/answers/{id}`` — ``{"answer": "real" | "synthetic", "confidence": 1-5}``.

Blinding: the app never opens ``key.json``; the JSON is built field by field from a whitelist
(case ids and their default window only); volumes are served from the validated case-id list,
never from a path taken from the URL; only ``index.html``, ``app.js`` and ``app.css`` are
served as files. Every response carries ``Cache-Control: no-store``, ``nosniff``, a
``default-src 'self'`` CSP and ``Referrer-Policy: no-referrer`` (the token is in the URL).

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from fastapi.testclient import TestClient
    >>> from freetumor.turing import db
    >>> study = Path(tempfile.mkdtemp())
    >>> (study / "cases").mkdir()
    >>> meta = {"format": "freetumor-turing-study", "version": 1, "title": "demo", "slices": 2,
    ...         "rows": 3, "cols": 4, "spacing_mm": [1.0, 1.0, 2.0], "windows": {"abdomen": [-175, 250]},
    ...         "cases": [{"id": "0123456789abcdef", "window": "abdomen"}]}
    >>> _ = (study / "study.json").write_text(json.dumps(meta))
    >>> _ = (study / "cases" / "0123456789abcdef.bin").write_bytes(bytes(2 * 3 * 4 * 2))
    >>> client = TestClient(create_app(study))
    >>> client.get("/api/me").status_code
    401
    >>> auth = {"Authorization": "Bearer " + db.add_reader(study, "reader one")}
    >>> client.get("/api/me", headers=auth).json()
    {'name': 'reader one', 'answered': 0, 'total': 1}
    >>> client.put("/api/answers/0123456789abcdef", json={"answer": "real", "confidence": 3}, headers=auth).json()
    {'answered': 1, 'total': 1}
    >>> len(client.get("/api/cases/0123456789abcdef/volume", headers=auth).content)
    48
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, InputError
from ..structured import read_json
from . import db

STUDY_FORMAT = "freetumor-turing-study"
STUDY_VERSION = 1
CASE_ID = re.compile(r"[0-9a-f]{16}")
MAX_BODY = 1024  # bytes of an answer body; {"answer": "synthetic", "confidence": 5} is 42
MAX_DEPTH = 4  # brackets open at once; an answer is one flat object
STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {  # the only files ever served from disk, besides the case volumes
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
     b"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
]


class _SecurityHeaders:
    """ASGI middleware: the same security and no-cache headers on every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text outside its strings (bounded work: the text is short).

    >>> _depth('{"a": [1, "[["]}'), _depth("[" * 9)
    (2, 9)
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


async def _json_body(request: Request):
    """The request's JSON body: 413 when larger than MAX_BODY bytes, 400 when not JSON or nested
    deeper than MAX_DEPTH (never a parser's recursion error, never reading more than the cap)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise HTTPException(413 if declared.isdigit() else 400, f"body larger than {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise HTTPException(413, f"body larger than {MAX_BODY} bytes")
    try:
        text = raw.decode("utf-8")
        if _depth(text) > MAX_DEPTH:
            raise ValueError("nested too deeply")
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HTTPException(400, "body must be JSON") from None


def _positive_int(meta: dict, key: str, path: Path) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(path, f'"{key}" must be a positive integer')
    return value


def load_study(study: str | Path) -> dict:
    """Read and check a study folder; return the public part of ``study.json``.

    Raises :class:`~freetumor.errors.InputError` (one line) when the folder, ``study.json`` or
    a case file is missing or inconsistent.
    """
    root = Path(study)
    if not root.is_dir():
        raise InputError(root, "is not a study folder (expected study.json and cases/)")
    path = root / "study.json"
    if not path.exists():
        raise InputError(path, "not found; is this a study folder made by `freetumor turing build`?")
    try:
        meta = read_json(path, "study file")  # size and depth bounded before parsing
    except InputError as exc:
        raise InputError(path, f"unreadable: {exc.problem}") from None
    if not isinstance(meta, dict) or meta.get("format") != STUDY_FORMAT:
        raise InputError(path, f'not a study file ("format" must be "{STUDY_FORMAT}")')
    if meta.get("version") != STUDY_VERSION:
        raise InputError(path, f'unsupported "version" {meta.get("version")!r} (expected {STUDY_VERSION})')
    slices, rows, cols = (_positive_int(meta, k, path) for k in ("slices", "rows", "cols"))
    spacing = meta.get("spacing_mm", [1.0, 1.0, 1.0])
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing)):
        raise InputError(path, '"spacing_mm" must be three positive numbers [dy, dx, dz]')
    windows = meta.get("windows")
    if not isinstance(windows, dict) or not windows:
        raise InputError(path, '"windows" must be a non-empty object of name: [lo, hi]')
    clean_windows = {}
    for name, lohi in windows.items():
        if (not isinstance(lohi, list) or len(lohi) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lohi)
                or not lohi[0] < lohi[1]):
            raise InputError(path, f'window "{name}" must be [lo, hi] with lo < hi')
        clean_windows[str(name)] = [lohi[0], lohi[1]]
    cases = meta.get("cases")
    if not isinstance(cases, list) or not cases:
        raise InputError(path, '"cases" must be a non-empty list')
    clean_cases, seen = [], set()
    for case in cases:
        cid = case.get("id") if isinstance(case, dict) else None
        if not isinstance(cid, str) or not CASE_ID.fullmatch(cid):
            raise InputError(path, f"case id {cid!r} is not 16 lowercase hex characters")
        if cid in seen:
            raise InputError(path, f"case id {cid} appears twice")
        seen.add(cid)
        window = case.get("window")
        if window not in clean_windows:
            raise InputError(path, f"case {cid}: window {window!r} is not one of the study's windows")
        clean_cases.append({"id": cid, "window": window})
    nbytes = slices * rows * cols * 2
    for case in clean_cases:
        file = root / "cases" / f"{case['id']}.bin"
        if not file.is_file():
            raise InputError(file, "case file missing")
        size = file.stat().st_size
        if size != nbytes:
            raise InputError(file, f"has {size} bytes, expected {nbytes} (int16 {slices}x{rows}x{cols})")
    title = meta.get("title", "")
    return {"title": str(title) if title is not None else "", "slices": slices, "rows": rows, "cols": cols,
            "spacing_mm": [float(s) for s in spacing], "windows": clean_windows, "cases": clean_cases,
            "nbytes": nbytes}


def reader_order(case_ids: list[str], reader_id: int) -> list[str]:
    """This reader's case order: a shuffle seeded from the study's case ids and the reader id.

    >>> ids = [f"{i:016x}" for i in range(20)]
    >>> reader_order(ids, 1) == reader_order(list(reversed(ids)), 1)
    True
    >>> reader_order(ids, 1) != reader_order(ids, 2) and sorted(reader_order(ids, 2)) == ids
    True
    """
    ordered = sorted(case_ids)
    seed = hashlib.sha256(("\n".join(ordered) + f"\nreader:{int(reader_id)}").encode()).digest()
    random.Random(int.from_bytes(seed[:16], "big")).shuffle(ordered)
    return ordered


def create_app(study: str | Path) -> FastAPI:
    """The web app for one study folder (checked first; see :func:`load_study`)."""
    root = Path(study).resolve()
    meta = load_study(root)
    db.connect(root).close()  # create readers.sqlite now, not on the first request
    case_files = {c["id"]: root / "cases" / f"{c['id']}.bin" for c in meta["cases"]}
    case_ids = list(case_files)
    index_html = (STATIC / "index.html").read_bytes()
    static = {name: (STATIC / name).read_bytes() for name in STATIC_FILES}

    app = FastAPI(title="freetumor Visual Turing Test", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_SecurityHeaders)
    app.state.n_cases = len(case_ids)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Plain, fixed messages: nothing about files or paths ever leaks into an error.
        messages = {401: "missing or invalid reader token", 404: "not found", 405: "method not allowed"}
        detail = messages.get(exc.status_code, exc.detail if exc.status_code == 400 else "error")
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    def reader(request: Request) -> dict:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        who = db.reader_for_token(root, token.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            raise HTTPException(401)
        return who

    def own_answers(reader_id: int) -> dict:
        return {a["case_id"]: {"answer": a["answer"], "confidence": a["confidence"]}
                for a in db.answers(root, reader_id) if a["case_id"] in case_files}

    def html(_request: Request) -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8")

    app.add_api_route("/", html, methods=["GET"], include_in_schema=False)
    app.add_api_route("/r/{token}", html, methods=["GET"], include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404)
        return Response(static[name], media_type=STATIC_FILES[name])

    @app.get("/api/me")
    def me(request: Request) -> dict:
        who = reader(request)
        return {"name": who["name"], "answered": len(own_answers(who["id"])), "total": len(case_ids)}

    @app.get("/api/study")
    def study_info(request: Request) -> dict:
        who = reader(request)
        window = {c["id"]: c["window"] for c in meta["cases"]}
        return {"title": meta["title"], "slices": meta["slices"], "rows": meta["rows"], "cols": meta["cols"],
                "spacing_mm": meta["spacing_mm"], "windows": meta["windows"],
                "cases": [{"id": cid, "window": window[cid]} for cid in reader_order(case_ids, who["id"])]}

    @app.get("/api/cases/{case_id}/volume")
    def volume(case_id: str, request: Request) -> Response:
        reader(request)
        file = case_files.get(case_id)  # only ids from study.json; never a path built from the URL
        if file is None:
            raise HTTPException(404)
        data = file.read_bytes()
        if len(data) != meta["nbytes"]:  # changed on disk after start: never serve a telltale size
            raise HTTPException(500)
        return Response(data, media_type="application/octet-stream")

    @app.get("/api/answers")
    def get_answers(request: Request) -> dict:
        who = reader(request)
        return {"answers": own_answers(who["id"]), "total": len(case_ids)}

    @app.put("/api/answers/{case_id}")
    async def put_answer(case_id: str, request: Request) -> dict:
        who = await run_in_threadpool(reader, request)
        if case_id not in case_files:
            raise HTTPException(404)
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) != {"answer", "confidence"}:
            raise HTTPException(400, 'body must be {"answer": "real" | "synthetic", "confidence": 1-5}')
        try:
            await run_in_threadpool(db.save_answer, root, who["id"], case_id, body["answer"], body["confidence"])
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None
        answered = await run_in_threadpool(own_answers, who["id"])
        return {"answered": len(answered), "total": len(case_ids)}

    return app


def check_port(port: int, option: str = "--port") -> int:
    """A TCP port, 1..65535, else a one-line :class:`ConfigError` naming ``option``.

    Example:
        >>> try:
        ...     check_port(70000)
        ... except ConfigError as exc:
        ...     print(exc)
        --port 70000 is not a TCP port; use 1..65535 (8000 by default)
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{option} {port!r} is not a TCP port; use 1..65535 (8000 by default)")
    return port


def serve(study: str | Path, host: str = "127.0.0.1", port: int = 8000, log: Callable[[str], None] = print) -> None:
    """Check the port and the study folder, then run the web app with uvicorn until interrupted."""
    import uvicorn  # deferred: the web server is needed only by turing serve

    check_port(port)
    app = create_app(study)
    n_readers = len(db.readers(study))
    log(f"Visual Turing Test: {study} ({app.state.n_cases} cases, {n_readers} readers)")
    log(f"each reader opens their personal link: http://{host}:{port}/r/<token>")
    log(("no readers yet; " if not n_readers else "")
        + f"add a reader (prints their link once): freetumor turing readers add NAME --study {study}")
    # No access log: request lines would print the readers' tokens (/r/<token>).
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
