"""Reader-study soak test: several readers answer at once while malformed bodies arrive, the server
is killed (SIGKILL) mid-run and restarted; every acknowledged answer is in the database, SQLite's
integrity check passes, and no request ever gets a 5xx. 127.0.0.1 only, a bounded number of requests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from freetumor.turing import db

from conftest import CLI
from test_turing_server import ids_of, make_study

READERS = 3
MALFORMED = [b"[" * 100_000, b"{" * 3000, b"not json", b'{"answer": "real"}', b'{"answer": 1, "confidence": []}',
             b'{"answer": "real", "confidence": 3, "x": "' + b"y" * 5000 + b'"}', b"\xff\xfe\x00",
             b'{"answer": "real", "confidence": 1e999}', b'[{"answer": "real", "confidence": 3}]']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(study, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "turing", "serve", str(study), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the reader-study server did not start")


def _put(port: int, token: str, cid: str, body: bytes) -> int | None:
    """The status of one PUT, or None when the connection failed (the server is down)."""
    try:
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        con.request("PUT", f"/api/answers/{cid}", body=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        status = con.getresponse().status
        con.close()
        return status
    except OSError:
        return None


@pytest.mark.slow
def test_concurrent_readers_server_kill_and_malformed_bodies(tmp_path):
    study = make_study(tmp_path / "study", n_cases=24)
    ids = ids_of(study)
    tokens = [db.add_reader(study, f"reader{i}") for i in range(READERS)]
    port = _free_port()
    statuses: list[int] = []
    acked: dict[tuple[int, str], dict] = {}
    lock = threading.Lock()

    def reader(i: int, cases: list[str], stop: threading.Event | None) -> None:
        for j, cid in enumerate(cases):
            answer = {"answer": ("real", "synthetic")[(i + j) % 2], "confidence": 1 + (i + j) % 5}
            status = _put(port, tokens[i], cid, json.dumps(answer).encode())
            with lock:
                if status is not None:
                    statuses.append(status)
                if status == 200:
                    acked[(i, cid)] = answer
            if stop is not None and stop.is_set():
                return

    def garbage(stop: threading.Event) -> None:
        k = 0
        while not stop.is_set() and k < 60:
            status = _put(port, tokens[k % READERS], ids[k % len(ids)], MALFORMED[k % len(MALFORMED)])
            if status is not None:
                with lock:
                    statuses.append(status)
            k += 1

    # phase 1: readers and garbage at once; the server is SIGKILLed once some answers are stored
    proc = _start(study, port)
    stop = threading.Event()
    threads = [threading.Thread(target=reader, args=(i, ids, None)) for i in range(READERS)]
    threads.append(threading.Thread(target=garbage, args=(stop,)))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(60)
    killed_at = len(acked)

    # phase 2: restart; each reader answers what was not acknowledged, garbage again
    proc = _start(study, port)
    try:
        stop = threading.Event()
        threads = [threading.Thread(target=reader, args=(i, [c for c in ids if (i, c) not in acked], None))
                   for i in range(READERS)]
        g = threading.Thread(target=garbage, args=(stop,))
        for t in [*threads, g]:
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        g.join(60)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    assert 8 <= killed_at < READERS * len(ids)  # killed with answers stored and others still to come
    assert len(acked) == READERS * len(ids)  # every answer acknowledged once the server was back
    assert statuses and max(statuses) < 500, sorted(set(statuses))
    assert {s for s in statuses if s != 200} <= {400, 413, 422}
    stored = {(int(r["reader"].removeprefix("reader")), r["case_id"]): {"answer": r["answer"],
                                                                         "confidence": r["confidence"]}
              for r in db.answers(study)}
    assert stored == acked
    con = sqlite3.connect(study / "readers.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
