"""The Visual Turing Test web app (API level): auth, reader isolation, validation, blinding."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's "use httpx2" deprecation notice
    from fastapi.testclient import TestClient

from freetumor.errors import InputError
from freetumor.turing import db
from freetumor.turing.server import create_app, serve

N, H, W = 4, 6, 5


def make_study(root: Path, n_cases: int = 12, seed: int = 0) -> Path:
    """A hand-made study folder in the format `freetumor turing build` writes."""
    rng = np.random.default_rng(seed)
    (root / "cases").mkdir(parents=True)
    ids = [bytes(rng.integers(0, 256, 8, dtype=np.uint8)).hex() for _ in range(n_cases)]
    cases, key = [], {}
    for i, cid in enumerate(ids):
        truth = "real" if i % 2 == 0 else "synthetic"
        organ = ("liver", "kidney")[(i // 2) % 2]
        cases.append({"id": cid, "window": "liver" if organ == "liver" else "abdomen"})
        vol = rng.integers(-1000, 1000, size=(N, H, W)).astype("<i2")
        (root / "cases" / f"{cid}.bin").write_bytes(vol.tobytes())
        key[cid] = {"truth": truth, "tumour_type": organ,
                    "image": f"/data/secret_ct/{organ}_{i:03d}_PROVENANCE_image.nii.gz",
                    "centre_mm": [1.5 * i, -2.25, 7.0 + i]}
        if truth == "synthetic":
            key[cid].update(record=f"/data/secret_synth/{organ}_{i:03d}_SYNTHREC.json", lesion=i % 3 + 1)
    study = {"format": "freetumor-turing-study", "version": 1, "title": "test study", "slices": N, "rows": H,
             "cols": W, "spacing_mm": [0.8, 0.8, 2.5],
             "windows": {"abdomen": [-175, 250], "liver": [-160, 240], "lung": [-1000, 500],
                         "mediastinum": [-160, 240]},
             "cases": cases}
    (root / "study.json").write_text(json.dumps(study, indent=1))
    (root / "key.json").write_text(json.dumps({"created": "2025-01-01T00:00:00+00:00", "seed": 0,
                                               "real": "/data/secret_ct", "synthetic": "/data/secret_synth",
                                               "per_type": {"liver": 3, "kidney": 3}, "cases": key}, indent=1))
    return root


@pytest.fixture()
def study(tmp_path) -> Path:
    return make_study(tmp_path / "study")


@pytest.fixture()
def client(study) -> TestClient:
    return TestClient(create_app(study))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def key_of(study: Path) -> dict:
    return json.loads((study / "key.json").read_text())["cases"]


def ids_of(study: Path) -> list[str]:
    return [c["id"] for c in json.loads((study / "study.json").read_text())["cases"]]


def secret_strings(study: Path) -> list[str]:
    """Strings of key.json that must never appear in anything served."""
    raw = (study / "key.json").read_text()
    out = [raw, raw[:60], '"truth"', "tumour_type", "centre_mm", "provenance", "PROVENANCE", "SYNTHREC",
           "secret_ct", "secret_synth", "key.json", "nii.gz", ".bin"]
    for cid, v in key_of(study).items():
        out += [v["image"], Path(v["image"]).name, f'"{cid}": "{v["truth"]}"', f"{cid}:{v['truth']}"]
        if "record" in v:
            out += [v["record"], Path(v["record"]).name]
    return out


# ---- authentication ------------------------------------------------------------------------------

def test_every_api_endpoint_needs_a_valid_token(study, client):
    token = db.add_reader(study, "alice")
    cid = ids_of(study)[0]
    calls = [("GET", "/api/me"), ("GET", "/api/study"), ("GET", "/api/answers"),
             ("GET", f"/api/cases/{cid}/volume"), ("PUT", f"/api/answers/{cid}")]
    bad_headers = [{}, bearer("not-a-token"), bearer(token + "x"), bearer(""), {"Authorization": token},
                   {"Authorization": f"Basic {token}"}, bearer("a" * 500)]
    for method, path in calls:
        for headers in bad_headers:
            r = client.request(method, path, headers=headers, json={"answer": "real", "confidence": 3})
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            assert cid not in r.text
        assert client.request(method, path, headers=bearer(token),
                              json={"answer": "real", "confidence": 3}).status_code == 200
    # the token is also accepted with a lowercase scheme
    assert client.get("/api/me", headers={"Authorization": f"bearer {token}"}).status_code == 200
    # only the one valid PUT above was written
    assert [(a["reader"], a["case_id"]) for a in db.answers(study)] == [("alice", cid)]


def test_me_reports_name_and_progress(study, client):
    token = db.add_reader(study, "Dr. Ada")
    assert client.get("/api/me", headers=bearer(token)).json() == {"name": "Dr. Ada", "answered": 0, "total": 12}
    for cid in ids_of(study)[:3]:
        r = client.put(f"/api/answers/{cid}", headers=bearer(token), json={"answer": "synthetic", "confidence": 2})
        assert r.status_code == 200
    assert r.json() == {"answered": 3, "total": 12}
    assert client.get("/api/me", headers=bearer(token)).json()["answered"] == 3


# ---- reader isolation ----------------------------------------------------------------------------

def test_a_reader_cannot_see_or_change_another_readers_answers(study, client):
    ta, tb = db.add_reader(study, "alice"), db.add_reader(study, "bob")
    a_id, b_id = db.reader_for_token(study, ta)["id"], db.reader_for_token(study, tb)["id"]
    c1, c2 = ids_of(study)[:2]
    assert client.put(f"/api/answers/{c1}", headers=bearer(ta), json={"answer": "real", "confidence": 5}).status_code == 200
    # bob sees none of alice's answers
    assert client.get("/api/answers", headers=bearer(tb)).json()["answers"] == {}
    assert client.get("/api/me", headers=bearer(tb)).json()["answered"] == 0
    # bob answering the same case writes bob's row, never alice's
    assert client.put(f"/api/answers/{c1}", headers=bearer(tb), json={"answer": "synthetic", "confidence": 1}).status_code == 200
    assert client.put(f"/api/answers/{c2}", headers=bearer(tb), json={"answer": "real", "confidence": 2}).status_code == 200
    assert client.get("/api/answers", headers=bearer(ta)).json()["answers"] == {c1: {"answer": "real", "confidence": 5}}
    assert client.get("/api/answers", headers=bearer(tb)).json()["answers"] == {
        c1: {"answer": "synthetic", "confidence": 1}, c2: {"answer": "real", "confidence": 2}}
    assert [(a["case_id"], a["answer"], a["confidence"]) for a in db.answers(study, a_id)] == [(c1, "real", 5)]
    assert len(db.answers(study, b_id)) == 2
    # there is no way to name another reader: no reader id in any URL or body
    r = client.put(f"/api/answers/{c1}", headers=bearer(tb),
                   json={"answer": "real", "confidence": 3, "reader_id": a_id})
    assert r.status_code == 400
    assert client.get(f"/api/answers/{a_id}", headers=bearer(tb)).status_code in (404, 405)
    assert client.get("/api/answers", params={"reader_id": a_id}, headers=bearer(tb)).json()["answers"] == {
        c1: {"answer": "synthetic", "confidence": 1}, c2: {"answer": "real", "confidence": 2}}
    assert [(a["case_id"], a["answer"], a["confidence"]) for a in db.answers(study, a_id)] == [(c1, "real", 5)]


def test_an_answer_can_be_revised(study, client):
    t = db.add_reader(study, "alice")
    cid = ids_of(study)[3]
    client.put(f"/api/answers/{cid}", headers=bearer(t), json={"answer": "real", "confidence": 5})
    client.put(f"/api/answers/{cid}", headers=bearer(t), json={"answer": "synthetic", "confidence": 2})
    assert [(a["case_id"], a["answer"], a["confidence"]) for a in db.answers(study)] == [(cid, "synthetic", 2)]


# ---- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"answer": "maybe", "confidence": 3}, {"answer": "REAL", "confidence": 3}, {"answer": "", "confidence": 3},
    {"answer": None, "confidence": 3}, {"answer": ["real"], "confidence": 3},
    {"answer": "real", "confidence": 0}, {"answer": "real", "confidence": 6}, {"answer": "real", "confidence": -1},
    {"answer": "real", "confidence": "3"}, {"answer": "real", "confidence": 3.5}, {"answer": "real", "confidence": 3.0},
    {"answer": "real", "confidence": True}, {"answer": "real", "confidence": None},
    {"answer": "real"}, {"confidence": 3}, {}, {"answer": "real", "confidence": 3, "extra": 1},
    ["real", 3], "real", 3, None,
])
def test_invalid_answers_are_rejected_and_write_nothing(study, client, body):
    t = db.add_reader(study, "alice")
    cid = ids_of(study)[0]
    r = client.put(f"/api/answers/{cid}", headers=bearer(t), json=body)
    assert r.status_code in (400, 422), r.text
    assert db.answers(study) == []


def test_malformed_bodies_and_unknown_cases_write_nothing(study, client):
    t = db.add_reader(study, "alice")
    cid = ids_of(study)[0]
    for content in [b"", b"not json", b'{"answer": "real", "confidence": 3', b"\xff\xfe", b"NaN"]:
        r = client.put(f"/api/answers/{cid}", headers={**bearer(t), "Content-Type": "application/json"},
                       content=content)
        assert r.status_code in (400, 422), content
    good = {"answer": "real", "confidence": 3}
    for bad in ["0" * 16, "f" * 16, cid.upper(), cid[:-1], cid + "0", "..", "key.json", "%2e%2e", "study"]:
        r = client.put(f"/api/answers/{bad}", headers=bearer(t), json=good)
        assert r.status_code == 404, bad
    assert client.post(f"/api/answers/{cid}", headers=bearer(t), json=good).status_code == 405
    assert client.delete(f"/api/answers/{cid}", headers=bearer(t)).status_code == 405
    assert db.answers(study) == []


def test_oversized_and_deeply_nested_bodies_are_4xx_not_500(study, client):
    """A body nested 100,000 deep is 400 (not a parser's RecursionError, 500); a big one 413; nothing stored."""
    t = db.add_reader(study, "alice")
    cid = ids_of(study)[0]
    headers = {**bearer(t), "Content-Type": "application/json"}
    cases = [(b"[" * 100_000, 413), (b"[" * 500 + b"]" * 500, 400), (b'{"a": ' * 50 + b"1" + b"}" * 50, 400),
             (b'{"answer": "real", "confidence": 3, "pad": "' + b"x" * 2000 + b'"}', 413)]
    for content, status in cases:
        r = client.put(f"/api/answers/{cid}", headers=headers, content=content)
        assert r.status_code == status, (content[:20], r.status_code)
    r = client.put(f"/api/answers/{cid}", headers=headers, content=b'{"answer": "real", "confidence": 3}')
    assert r.status_code == 200  # a valid body still passes the caps
    assert [a["answer"] for a in db.answers(study)] == ["real"]


# ---- path traversal and the static whitelist ------------------------------------------------------

TRAVERSALS = [
    "/key.json", "/study.json", "/study.json?x=1", "/readers.sqlite", "/cases", "/cases/{cid}.bin",
    "/static/../key.json", "/static/%2e%2e/key.json", "/static/..%2fkey.json", "/static/%2e%2e%2fkey.json",
    "/static/..%5ckey.json", "/static/../../key.json", "/static/key.json", "/static/study.json",
    "/static/index.html", "/static/server.py", "/static/../server.py", "/static/", "/static",
    "/static/app.js/../../key.json", "/static/app.js%00", "/static/APP.JS", "/static/./app.js/..",
    "/api/cases/../key.json/volume", "/api/cases/%2e%2e/key.json/volume", "/api/cases/..%2fkey.json/volume",
    "/api/cases/%2e%2e%2fkey.json/volume", "/api/cases/..%2F..%2Fkey.json/volume", "/api/cases/key.json/volume",
    "/api/cases/../../key.json", "/api/cases/{cid}.bin/volume", "/api/cases/{cid}/../../key.json",
    "/api/cases/{cid}", "/api/cases/{cid}/volume/..", "/api/cases/{CID}/volume", "/api/cases//volume",
    "/api/cases/0000000000000000/volume", "/api/key", "/api/key.json", "/api/study.json", "/r/../key.json",
    "/r/%2e%2e/key.json", "/r", "//key.json", "/%2e%2e/key.json", "/docs", "/openapi.json", "/redoc",
]


def _asgi_get(app, raw_path: str, headers: dict) -> tuple[int, bytes]:
    """Call the app with an un-normalised path (clients such as httpx remove dot segments)."""
    from urllib.parse import unquote

    path, _, query = raw_path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(path), "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    out = {"status": None, "body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"]


def test_path_traversal_is_404_and_never_serves_the_key(study):
    app = create_app(study)
    t = db.add_reader(study, "alice")
    cid = ids_of(study)[0]
    secrets_ = secret_strings(study)
    case_bytes = (study / "cases" / f"{cid}.bin").read_bytes()
    client = TestClient(app)
    for template in TRAVERSALS:
        path = template.replace("{cid}", cid).replace("{CID}", cid.upper())
        for headers in ({}, bearer(t)):
            # without a token an API route may say 401 first (case ids are not confirmed to strangers)
            allowed = {404} if headers or not path.startswith("/api/cases/") else {401, 404}
            status, body = _asgi_get(app, path, headers)
            assert status in allowed, (path, headers, status)
            bodies = [body]
            if not path.startswith("//"):  # httpx reads //x as a host name
                r = client.get(path, headers=headers)
                assert r.status_code in allowed, (path, headers, r.status_code)
                bodies.append(r.content)
            for b in bodies:
                text = b.decode("utf-8", "replace")
                assert not any(s in text for s in secrets_), path
                assert case_bytes not in b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_http(port: int, raw_path: str, headers: dict) -> tuple[int, bytes]:
    lines = [f"GET {raw_path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             *[f"{k}: {v}" for k, v in headers.items()], "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_path_traversal_over_a_real_socket(study):
    """The same through uvicorn, which decodes %2e and %2f itself."""
    import uvicorn

    app = create_app(study)
    t = db.add_reader(study, "alice")
    cid = ids_of(study)[0]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        secrets_ = secret_strings(study)
        for template in TRAVERSALS:
            path = template.replace("{cid}", cid).replace("{CID}", cid.upper())
            status, body = _raw_http(port, path, bearer(t))
            assert status == 404, (path, status)
            assert not any(s in body.decode("utf-8", "replace") for s in secrets_), path
        status, body = _raw_http(port, f"/api/cases/{cid}/volume", bearer(t))
        assert status == 200 and body == (study / "cases" / f"{cid}.bin").read_bytes()
    finally:
        server.should_exit = True
        thread.join(10)


# ---- blinding ------------------------------------------------------------------------------------

def test_nothing_served_contains_the_key(study, client):
    t = db.add_reader(study, "alice")
    ids = ids_of(study)
    secrets_ = secret_strings(study)
    responses = [client.get(p) for p in ["/", f"/r/{t}", "/r/whatever", "/static/app.js", "/static/app.css",
                                         "/api/me", "/key.json", "/nope"]]
    responses += [client.get(p, headers=bearer(t)) for p in ["/api/me", "/api/study", "/api/answers"]]
    responses += [client.get(f"/api/cases/{cid}/volume", headers=bearer(t)) for cid in ids]
    responses += [client.put(f"/api/answers/{ids[0]}", headers=bearer(t), json={"answer": "nope", "confidence": 9})]
    for r in responses:
        blob = r.text if not r.headers.get("content-type", "").startswith("application/octet") else ""
        blob += json.dumps(dict(r.headers))
        for s in secrets_:
            assert s not in blob, (r.url, s)
    # the JSON holds no truth or provenance fields, and no truth word at all before anything is answered
    for r in responses:
        if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
            text = r.text.lower()
            for word in ("real", "synthetic", "truth", "source", "organ", "tumour", "image", "record", "lesion"):
                assert word not in text, (r.url, r.text)
    body = client.get("/api/study", headers=bearer(t)).json()
    assert set(body) == {"title", "slices", "rows", "cols", "spacing_mm", "windows", "cases"}
    assert all(set(c) == {"id", "window"} for c in body["cases"])
    # the page and scripts are the same for every reader and name no case
    page = client.get(f"/r/{t}").text + client.get("/static/app.js").text + client.get("/static/app.css").text
    assert t not in page and not any(cid in page for cid in ids)
    assert client.get(f"/r/{t}").content == client.get("/r/someone-else").content == client.get("/").content


def test_volume_responses_are_identical_in_headers_and_size(study, client):
    t = db.add_reader(study, "alice")
    key = key_of(study)
    real = next(c for c in ids_of(study) if key[c]["truth"] == "real")
    synth = next(c for c in ids_of(study) if key[c]["truth"] == "synthetic")

    def headers(r):
        return {k: v for k, v in r.headers.items() if k.lower() != "date"}

    ra = client.get(f"/api/cases/{real}/volume", headers=bearer(t))
    rs = client.get(f"/api/cases/{synth}/volume", headers=bearer(t))
    assert ra.status_code == rs.status_code == 200
    assert headers(ra) == headers(rs)
    assert len(ra.content) == len(rs.content) == N * H * W * 2
    assert ra.headers["content-type"] == "application/octet-stream"
    assert ra.headers["cache-control"] == "no-store"
    assert ra.headers["content-length"] == str(N * H * W * 2)
    lowered = {k.lower() for k in ra.headers}
    assert not lowered & {"etag", "last-modified", "content-disposition", "server", "x-case", "accept-ranges"}
    # raw int16 only: exactly the file's HU values
    np.testing.assert_array_equal(np.frombuffer(rs.content, "<i2").reshape(N, H, W),
                                  np.fromfile(study / "cases" / f"{synth}.bin", "<i2").reshape(N, H, W))
    # every case alike, and conditional requests change nothing
    all_headers = {json.dumps(headers(client.get(f"/api/cases/{c}/volume", headers=bearer(t))), sort_keys=True)
                   for c in ids_of(study)}
    assert len(all_headers) == 1
    r = client.get(f"/api/cases/{real}/volume", headers={**bearer(t), "If-None-Match": "*", "Range": "bytes=0-1"})
    assert r.status_code == 200 and len(r.content) == N * H * W * 2


def test_case_order_is_shuffled_per_reader(study, tmp_path):
    tokens = [db.add_reader(study, f"reader {i}") for i in range(3)]
    client = TestClient(create_app(study))
    orders = [[c["id"] for c in client.get("/api/study", headers=bearer(t)).json()["cases"]] for t in tokens]
    ids = ids_of(study)
    assert all(sorted(o) == sorted(ids) for o in orders)
    assert len({tuple(o) for o in orders}) == 3  # 12! orders: a collision would be a bug
    assert all(o != ids for o in orders)  # not the study.json order
    # deterministic: the same order again, and after a restart
    again = TestClient(create_app(study))
    assert [c["id"] for c in again.get("/api/study", headers=bearer(tokens[0])).json()["cases"]] == orders[0]
    # each case keeps its default window
    window = {c["id"]: c["window"] for c in json.loads((study / "study.json").read_text())["cases"]}
    assert all(c["window"] == window[c["id"]] for c in client.get("/api/study", headers=bearer(tokens[1])).json()["cases"])


def test_answers_survive_a_restart(study):
    t = db.add_reader(study, "alice")
    ids = ids_of(study)
    first = TestClient(create_app(study))
    for i, cid in enumerate(ids[:5]):
        assert first.put(f"/api/answers/{cid}", headers=bearer(t),
                         json={"answer": ("real", "synthetic")[i % 2], "confidence": i + 1}).status_code == 200
    del first
    second = TestClient(create_app(study))
    got = second.get("/api/answers", headers=bearer(t)).json()
    assert got == {"answers": {cid: {"answer": ("real", "synthetic")[i % 2], "confidence": i + 1}
                               for i, cid in enumerate(ids[:5])}, "total": 12}
    assert second.get("/api/me", headers=bearer(t)).json()["answered"] == 5


# ---- headers, page, start-up ---------------------------------------------------------------------

def test_security_headers_everywhere(study, client):
    t = db.add_reader(study, "alice")
    cid = ids_of(study)[0]
    for r in [client.get("/"), client.get(f"/r/{t}"), client.get("/static/app.js"), client.get("/static/app.css"),
              client.get("/api/me"), client.get("/api/study", headers=bearer(t)),
              client.get(f"/api/cases/{cid}/volume", headers=bearer(t)), client.get("/key.json")]:
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["cache-control"] == "no-store"
        assert "server" not in {k.lower() for k in r.headers}
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert client.get(f"/r/{t}").headers["content-type"].startswith("text/html")


def test_page_has_the_viewer_elements_and_no_outside_resources(client):
    html = client.get("/r/abc").text
    for eid in ["canvas", "slice", "slice-label", "windows", "btn-real", "btn-synthetic", "confidence", "progress",
                "next", "prev", "done", "case-label"]:
        assert f'id="{eid}"' in html, eid
    assert 'src="/static/app.js"' in html and 'href="/static/app.css"' in html
    text = html + client.get("/static/app.js").text + client.get("/static/app.css").text
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "<script>" not in html and "style=" not in html and "onclick" not in html  # CSP: nothing inline


@pytest.mark.parametrize("breakage, message", [
    ("no study.json", "study.json: not found"),
    ("bad json", "study.json: unreadable"),
    ("wrong format", "not a study file"),
    ("bad id", "is not 16 lowercase hex"),
    ("unknown window", "is not one of the study's windows"),
    ("missing case", "case file missing"),
    ("short case", "has 10 bytes, expected 240"),
    ("not a folder", "is not a study folder"),
])
def test_study_folder_is_checked_at_start(study, breakage, message):
    meta = json.loads((study / "study.json").read_text())
    target = study
    if breakage == "no study.json":
        (study / "study.json").unlink()
    elif breakage == "bad json":
        (study / "study.json").write_text("{")
    elif breakage == "wrong format":
        (study / "study.json").write_text(json.dumps({**meta, "format": "something"}))
    elif breakage == "bad id":
        meta["cases"][0]["id"] = "../key"
        (study / "study.json").write_text(json.dumps(meta))
    elif breakage == "unknown window":
        meta["cases"][0]["window"] = "bone"
        (study / "study.json").write_text(json.dumps(meta))
    elif breakage == "missing case":
        (study / "cases" / f"{meta['cases'][3]['id']}.bin").unlink()
    elif breakage == "short case":
        (study / "cases" / f"{meta['cases'][3]['id']}.bin").write_bytes(bytes(10))
    elif breakage == "not a folder":
        target = study / "nope"
    with pytest.raises(InputError, match=message) as err:
        create_app(target)
    assert "\n" not in str(err.value)


def test_serve_prints_the_link_pattern(study, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    lines: list[str] = []
    serve(study, host="127.0.0.1", port=8123, log=lines.append)
    text = "\n".join(lines)
    assert "http://127.0.0.1:8123/r/<token>" in text
    assert "freetumor turing readers add NAME" in text
    assert calls == [{"host": "127.0.0.1", "port": 8123, "log_level": "warning", "access_log": False,
                      "server_header": False}]
    with pytest.raises(InputError):
        serve(study / "missing", port=8124, log=lines.append)
    assert len(calls) == 1
