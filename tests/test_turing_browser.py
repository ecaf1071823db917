"""End to end in a real browser: a reader scrolls, answers, the server is killed and restarted,
the page resumes at the first unanswered case, and the database holds exactly what was clicked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from freetumor.turing import db

CHROMIUM = Path("/usr/bin/chromium")
N, H, W = 8, 32, 32
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} for the browser test")


def make_study(root: Path, seed: int = 5) -> dict:
    """6 cases, 3 real + 3 synthetic, random int16 volumes; returns the key."""
    rng = np.random.default_rng(seed)
    (root / "cases").mkdir(parents=True)
    cases, key = [], {}
    truths = ["real", "synthetic"] * 3
    rng.shuffle(truths)
    for i, truth in enumerate(truths):
        cid = bytes(rng.integers(0, 256, 8, dtype=np.uint8)).hex()
        organ = ("liver", "pancreas", "kidney")[i % 3]
        cases.append({"id": cid, "window": "liver" if organ == "liver" else "abdomen"})
        rng.integers(-400, 400, size=(N, H, W)).astype("<i2").tofile(root / "cases" / f"{cid}.bin")
        key[cid] = {"truth": truth, "tumour_type": organ, "image": f"/data/{organ}_{i}_image.nii.gz",
                    "centre_mm": [0.0, 0.0, float(i)]}
        if truth == "synthetic":
            key[cid].update(record=f"/data/synth/{organ}_{i}.json", lesion=1)
    study = {"format": "freetumor-turing-study", "version": 1, "title": "Browser test study", "slices": N,
             "rows": H, "cols": W, "spacing_mm": [0.8, 0.8, 2.0],
             "windows": {"abdomen": [-175, 250], "liver": [-160, 240], "lung": [-1000, 500],
                         "mediastinum": [-160, 240]}, "cases": cases}
    (root / "study.json").write_text(json.dumps(study))
    (root / "key.json").write_text(json.dumps({"created": "2025-01-01T00:00:00+00:00", "seed": seed,
                                               "per_type": {}, "cases": key}))
    return key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(study: Path, port: int) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from freetumor.turing.server import serve; "
                               "serve(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))", str(study), str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start in 20 s")


def windowed(vol: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """What the viewer should draw: HU lo..hi -> 0..255 grey (Math.round, clamped)."""
    return np.clip(np.floor((vol.astype(np.float64) - lo) * (255.0 / (hi - lo)) + 0.5), 0, 255).astype(np.uint8)


def test_reader_session_in_a_real_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import httpx

    study = tmp_path / "study"
    key = make_study(study)
    token = db.add_reader(study, "Dr. Browser")
    reader_id = db.reader_for_token(study, token)["id"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(study, port)
    order = [c["id"] for c in httpx.get(f"{base}/api/study", headers={"Authorization": f"Bearer {token}"}).json()["cases"]]
    assert sorted(order) == sorted(key)
    clicked: dict[str, tuple[str, int]] = {}
    console_errors: list[str] = []

    try:
        with sync_api.sync_playwright() as p:
            try:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            except Exception as exc:  # noqa: BLE001 - any launch failure means: no usable browser here
                pytest.skip(f"Chromium does not start under Playwright: {str(exc).splitlines()[0]}")
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(10_000)
            page.on("console", lambda m: console_errors.append(m.text)
                    if m.type == "error" and "ERR_CONNECTION_REFUSED" not in m.text else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            referers: list[str] = []
            page.on("request", lambda r: referers.append(r.headers.get("referer", "")))
            expect = sync_api.expect

            def current() -> str:
                return page.get_attribute("#viewer", "data-case-id")

            def wait_loaded(cid: str) -> None:
                page.wait_for_selector(f'#viewer[data-loaded="{cid}"]')

            def canvas_grey() -> np.ndarray:
                rgba = page.evaluate("""() => { const c = document.getElementById('canvas');
                    return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
                return np.asarray(rgba, dtype=np.uint8).reshape(H, W, 4)

            def answer(cid: str, choice: str, confidence: int, confidence_first: bool = True) -> None:
                assert current() == cid
                if confidence_first:
                    page.select_option("#confidence", str(confidence))
                    page.click(f"#btn-{choice}")
                else:
                    page.click(f"#btn-{choice}")
                    page.select_option("#confidence", str(confidence))
                clicked[cid] = (choice, confidence)

            page.goto(f"{base}/r/{token}")
            page.wait_for_selector("body[data-ready='1']")
            wait_loaded(order[0])
            expect(page.locator("#progress")).to_have_text("0 / 6 answered")
            expect(page.locator("#case-label")).to_have_text("Case 1 of 6")
            expect(page.locator("#slice-label")).to_have_text("Slice 5 / 8")

            # the canvas shows the middle slice in the case's default window
            vol = np.fromfile(study / "cases" / f"{order[0]}.bin", "<i2").reshape(N, H, W)
            study_meta = json.loads((study / "study.json").read_text())
            default = next(c["window"] for c in study_meta["cases"] if c["id"] == order[0])
            expect(page.locator(f"#win-{default}")).to_have_class("active")
            grey = canvas_grey()
            assert np.abs(grey[..., 0].astype(int) - windowed(vol[4], *study_meta["windows"][default])).max() <= 1
            assert (grey[..., 3] == 255).all()

            # scroll with the wheel, the keys and the slider
            page.hover("#canvas")
            page.mouse.wheel(0, 100)
            expect(page.locator("#slice-label")).to_have_text("Slice 6 / 8")
            page.mouse.wheel(0, 100)
            page.mouse.wheel(0, 100)
            page.mouse.wheel(0, 100)  # past the end: stays on the last slice
            expect(page.locator("#slice-label")).to_have_text("Slice 8 / 8")
            page.mouse.wheel(0, -100)
            expect(page.locator("#slice-label")).to_have_text("Slice 7 / 8")
            page.click("#canvas")
            page.keyboard.press("ArrowUp")
            page.keyboard.press("ArrowUp")
            expect(page.locator("#slice-label")).to_have_text("Slice 5 / 8")
            page.keyboard.press("ArrowDown")
            expect(page.locator("#slice-label")).to_have_text("Slice 6 / 8")
            page.eval_on_selector("#slice", "s => { s.value = '2'; s.dispatchEvent(new Event('input')); }")
            expect(page.locator("#slice-label")).to_have_text("Slice 2 / 8")
            page.focus("#slice")  # the arrow keys mean the same on the slider as on the image
            page.keyboard.press("ArrowDown")
            expect(page.locator("#slice-label")).to_have_text("Slice 3 / 8")
            page.keyboard.press("ArrowUp")
            expect(page.locator("#slice-label")).to_have_text("Slice 2 / 8")
            assert np.abs(canvas_grey()[..., 0].astype(int) - windowed(vol[1], *study_meta["windows"][default])).max() <= 1
            # another window preset redraws the same slice
            page.click("#win-lung")
            expect(page.locator("#win-lung")).to_have_class("active")
            assert np.abs(canvas_grey()[..., 0].astype(int) - windowed(vol[1], -1000, 500)).max() <= 1

            # answer cases 1, 2 (auto-advance), skip 3 with "next", answer 4
            answer(order[0], "synthetic", 5, confidence_first=False)
            wait_loaded(order[1])
            expect(page.locator("#progress")).to_have_text("1 / 6 answered")
            expect(page.locator("#confidence")).to_have_value("")  # no carried-over confidence
            answer(order[1], "real", 2)
            wait_loaded(order[2])
            expect(page.locator("#progress")).to_have_text("2 / 6 answered")
            page.click("#next")
            wait_loaded(order[3])
            expect(page.locator("#case-label")).to_have_text("Case 4 of 6")
            answer(order[3], "real", 4)
            wait_loaded(order[4])
            expect(page.locator("#progress")).to_have_text("3 / 6 answered")
            # going back shows the saved answer
            page.click("#prev")
            page.click("#prev")
            wait_loaded(order[2])
            page.click("#prev")
            wait_loaded(order[1])
            expect(page.locator("#btn-real")).to_have_attribute("aria-pressed", "true")
            expect(page.locator("#btn-synthetic")).to_have_attribute("aria-pressed", "false")
            expect(page.locator("#confidence")).to_have_value("2")
            expect(page.locator("#prev")).to_be_enabled()

            # kill the server: a click now is not saved, and the reader is told so
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            page.click("#next")
            expect(page.locator("#case-label")).to_have_text("Case 3 of 6")
            page.select_option("#confidence", "3")
            page.click("#btn-real")
            expect(page.locator("#saved")).to_have_text("Not saved.")
            expect(page.locator("#message")).to_contain_text("cannot be reached")
            expect(page.locator("#progress")).to_have_text("3 / 6 answered")
            assert len(db.answers(study, reader_id)) == 3

            # restart, reload: resume at the first unanswered case (case 3) with 3 answered
            server = start_server(study, port)
            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            wait_loaded(order[2])
            expect(page.locator("#case-label")).to_have_text("Case 3 of 6")
            expect(page.locator("#progress")).to_have_text("3 / 6 answered")
            answer(order[2], "synthetic", 1)
            wait_loaded(order[4])  # case 4 is already answered: on to case 5
            expect(page.locator("#progress")).to_have_text("4 / 6 answered")
            answer(order[4], "synthetic", 3)
            wait_loaded(order[5])
            answer(order[5], "real", 5, confidence_first=False)
            expect(page.locator("#done")).to_be_visible()
            expect(page.locator("#done-text")).to_have_text("Thank you — all 6 cases answered")
            expect(page.locator("#viewer")).to_be_hidden()
            expect(page.locator("#progress")).to_have_text("6 / 6 answered")

            # a reload once everything is answered goes straight to the thank-you message
            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#done")).to_be_visible()
            # the token is kept in sessionStorage: the bare address works in the same tab
            page.goto(f"{base}/")
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#done-text")).to_have_text("Thank you — all 6 cases answered")
            page.click("#review")
            wait_loaded(order[0])
            expect(page.locator("#btn-synthetic")).to_have_attribute("aria-pressed", "true")
            expect(page.locator("#confidence")).to_have_value("5")
            browser.close()
            # Referrer-Policy: no-referrer: the token in the link never leaves in a Referer header
            assert len(referers) > 10 and not any(token in r for r in referers), referers
    finally:
        server.kill()
        server.wait(10)

    assert not console_errors, console_errors
    saved = {a["case_id"]: (a["answer"], a["confidence"]) for a in db.answers(study, reader_id)}
    assert saved == clicked and len(saved) == 6

    # the scores follow from the clicks
    syn = [c for c in key if key[c]["truth"] == "synthetic"]
    real = [c for c in key if key[c]["truth"] == "real"]
    expected = {"sensitivity": (sum(clicked[c][0] == "synthetic" for c in syn), len(syn)),
                "specificity": (sum(clicked[c][0] == "real" for c in real), len(real)),
                "accuracy": (sum(clicked[c][0] == key[c]["truth"] for c in key), len(key))}
    try:
        from freetumor.turing.score import score_study
    except ImportError:  # TODO: drop once freetumor.turing.score is in the tree everywhere
        score_study = None
    if score_study is not None:
        pooled = score_study(study, tmp_path / "score")["pooled"]
        assert {m: (pooled[m]["k"], pooled[m]["n"]) for m in expected} == expected
        assert json.loads((tmp_path / "score" / "score.json").read_text())["pooled"]["accuracy"]["k"] == expected["accuracy"][0]
