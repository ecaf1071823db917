// freetumor Visual Turing Test: the reader's viewer. No dependencies, nothing from outside this server.
// The token comes from the personal link /r/<token>; it is kept in memory and sessionStorage and sent
// as "Authorization: Bearer <token>". The server never sends anything about the answer key.
"use strict";

(function () {
  const TOKEN_KEY = "freetumor-turing-token";
  const CACHE_SIZE = 4;        // case volumes kept in memory (current, neighbours)
  const WHEEL_STEP = 50;       // pixels of wheel delta per slice (trackpads send small deltas)
  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  const $ = (id) => document.getElementById(id);
  const el = {
    title: $("title"), reader: $("reader"), progress: $("progress"), message: $("message"),
    viewer: $("viewer"), done: $("done"), doneText: $("done-text"), review: $("review"),
    canvas: $("canvas"), slider: $("slice"), sliceLabel: $("slice-label"), caseLabel: $("case-label"),
    windows: $("windows"), confidence: $("confidence"), real: $("btn-real"), synthetic: $("btn-synthetic"),
    saved: $("saved"), prev: $("prev"), next: $("next"),
  };
  const ctx = el.canvas.getContext("2d");

  const state = {
    token: null, study: null, cases: [], answers: {}, index: 0, slice: 0, window: null,
    volume: null, lut: null, pending: null, busy: false, loadSeq: 0, wheel: 0,
  };
  const cache = new Map();  // case id -> Promise<Int16Array>, least recently used first

  class AuthError extends Error {}

  function tokenFromPage() {
    const m = window.location.pathname.match(/^\/r\/([A-Za-z0-9_-]{10,200})\/?$/);
    let token = m ? m[1] : null;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else token = sessionStorage.getItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: the token stays in memory only */ }
    return token;
  }

  async function api(path, options) {
    const opts = Object.assign({ cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" }, options || {});
    opts.headers = Object.assign({ Authorization: "Bearer " + state.token }, opts.headers || {});
    let response;
    try {
      response = await fetch(path, opts);
    } catch (e) {
      throw new Error("The server cannot be reached. Your saved answers are safe; reload the page to continue.");
    }
    if (response.status === 401 || response.status === 403) throw new AuthError("This link is not valid. Ask the study organiser for your personal link.");
    if (!response.ok) {
      let detail = "";
      try { detail = (await response.json()).detail || ""; } catch (e) { /* not JSON */ }
      throw new Error("The server answered " + response.status + (detail ? ": " + detail : "") + ".");
    }
    return response;
  }

  function say(text) { el.message.textContent = text || ""; }

  // ---- volumes --------------------------------------------------------------------------------

  function fetchVolume(id) {
    if (cache.has(id)) {
      const p = cache.get(id);
      cache.delete(id);
      cache.set(id, p);
      return p;
    }
    const s = state.study;
    const p = api("/api/cases/" + encodeURIComponent(id) + "/volume").then((r) => r.arrayBuffer()).then((buf) => {
      const n = s.slices * s.rows * s.cols;
      if (buf.byteLength !== n * 2) throw new Error("A case volume has an unexpected size; please tell the study organiser.");
      if (LITTLE_ENDIAN) return new Int16Array(buf);
      const view = new DataView(buf), out = new Int16Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getInt16(2 * i, true);
      return out;
    });
    p.catch(() => cache.delete(id));
    cache.set(id, p);
    while (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
    return p;
  }

  // ---- drawing --------------------------------------------------------------------------------

  function setWindow(name) {
    const lohi = state.study.windows[name];
    if (!lohi) return;
    state.window = name;
    const lo = lohi[0], hi = lohi[1], lut = new Uint8ClampedArray(65536);
    const scale = 255 / (hi - lo);
    for (let i = 0; i < 65536; i++) lut[i] = Math.round((i - 32768 - lo) * scale);
    state.lut = lut;
    for (const b of el.windows.querySelectorAll("button")) {
      const on = b.dataset.window === name;
      b.classList.toggle("active", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    }
    draw();
  }

  function draw() {
    const s = state.study;
    if (!s) return;
    el.slider.value = String(state.slice + 1);
    el.sliceLabel.textContent = "Slice " + (state.slice + 1) + " / " + s.slices;
    if (!state.volume || !state.lut) {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, el.canvas.width, el.canvas.height);
      return;
    }
    const n = s.rows * s.cols, start = state.slice * n, vol = state.volume, lut = state.lut;
    const img = ctx.createImageData(s.cols, s.rows), px = img.data;
    for (let i = 0; i < n; i++) {
      const g = lut[vol[start + i] + 32768], j = 4 * i;
      px[j] = g; px[j + 1] = g; px[j + 2] = g; px[j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function setSlice(k) {
    const n = state.study.slices;
    const next = Math.max(0, Math.min(n - 1, k));
    if (next !== state.slice) { state.slice = next; draw(); }
  }

  function sizeCanvas() {
    const s = state.study, dy = s.spacing_mm[0], dx = s.spacing_mm[1];
    el.canvas.width = s.cols;
    el.canvas.height = s.rows;
    const room = Math.max(256, Math.min(720, window.innerWidth - 420, window.innerHeight - 140));
    const k = room / Math.max(s.cols * dx, s.rows * dy);
    el.canvas.style.width = Math.round(s.cols * dx * k) + "px";
    el.canvas.style.height = Math.round(s.rows * dy * k) + "px";
  }

  // ---- cases and answers ----------------------------------------------------------------------

  function answeredCount() {
    return state.cases.filter((c) => Object.prototype.hasOwnProperty.call(state.answers, c.id)).length;
  }

  function showProgress() {
    el.progress.textContent = answeredCount() + " / " + state.cases.length + " answered";
  }

  function firstUnanswered(from) {
    const n = state.cases.length;
    for (let k = 0; k < n; k++) {
      const i = (from + k) % n;
      if (!(state.cases[i].id in state.answers)) return i;
    }
    return -1;
  }

  function showAnswerControls() {
    const c = state.cases[state.index], a = state.answers[c.id];
    state.pending = a ? a.answer : null;
    el.confidence.value = a ? String(a.confidence) : "";
    el.real.setAttribute("aria-pressed", state.pending === "real" ? "true" : "false");
    el.synthetic.setAttribute("aria-pressed", state.pending === "synthetic" ? "true" : "false");
    el.saved.textContent = a ? "Saved: " + label(a.answer) + ", confidence " + a.confidence : "";
  }

  function label(answer) { return answer === "real" ? "Real" : "Synthetic"; }

  function setBusy(busy) {
    state.busy = busy;
    for (const b of [el.real, el.synthetic, el.confidence]) b.disabled = busy;
  }

  async function openCase(i) {
    const c = state.cases[i], seq = ++state.loadSeq;
    state.index = i;
    state.volume = null;
    state.slice = Math.floor(state.study.slices / 2);
    el.viewer.dataset.caseId = c.id;
    el.caseLabel.dataset.caseId = c.id;
    el.caseLabel.textContent = "Case " + (i + 1) + " of " + state.cases.length;
    el.prev.disabled = i === 0;
    el.next.disabled = i === state.cases.length - 1;
    el.done.hidden = true;
    el.viewer.hidden = false;
    showAnswerControls();
    setWindow(c.window);
    say("Loading case…");
    try {
      const vol = await fetchVolume(c.id);
      if (seq !== state.loadSeq) return;  // the reader moved on meanwhile
      state.volume = vol;
      el.viewer.dataset.loaded = c.id;
      say("");
      draw();
      const ahead = state.cases[i + 1];
      if (ahead) fetchVolume(ahead.id).catch(() => {});
    } catch (e) {
      if (seq === state.loadSeq) say(e.message);
    }
  }

  function showDone() {
    state.loadSeq++;
    el.viewer.hidden = true;
    el.done.hidden = false;
    el.doneText.textContent = "Thank you — all " + state.cases.length + " cases answered";
    say("");
  }

  async function save() {
    const c = state.cases[state.index];
    const confidence = parseInt(el.confidence.value, 10);
    if (!state.pending || !(confidence >= 1 && confidence <= 5) || state.busy) return;
    const wasAnswered = c.id in state.answers;
    setBusy(true);
    el.saved.textContent = "Saving…";
    try {
      await api("/api/answers/" + encodeURIComponent(c.id), {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ answer: state.pending, confidence: confidence }),
      });
      state.answers[c.id] = { answer: state.pending, confidence: confidence };
      showProgress();
      say("");
      setBusy(false);
      showAnswerControls();
      if (wasAnswered) return;  // a revision: stay on this case
      const next = firstUnanswered(state.index + 1);
      if (next < 0) showDone(); else openCase(next);
    } catch (e) {
      setBusy(false);
      el.saved.textContent = "Not saved.";
      say(e.message);
    }
  }

  function choose(answer) {
    if (state.busy) return;
    state.pending = answer;
    el.real.setAttribute("aria-pressed", answer === "real" ? "true" : "false");
    el.synthetic.setAttribute("aria-pressed", answer === "synthetic" ? "true" : "false");
    if (el.confidence.value === "") {
      el.saved.textContent = "Now choose your confidence (1 = guess, 5 = certain).";
      el.confidence.focus();
      return;
    }
    save();
  }

  // ---- events ---------------------------------------------------------------------------------

  function wire() {
    el.canvas.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      let d = ev.deltaY;
      if (ev.deltaMode === 1) d *= 40; else if (ev.deltaMode === 2) d *= 800;
      if (Math.abs(d) >= WHEEL_STEP) { state.wheel = 0; setSlice(state.slice + Math.sign(d)); return; }
      state.wheel += d;
      if (Math.abs(state.wheel) >= WHEEL_STEP) { setSlice(state.slice + Math.sign(state.wheel)); state.wheel = 0; }
    }, { passive: false });
    document.addEventListener("keydown", (ev) => {
      if (el.viewer.hidden || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      if (ev.target && ev.target.tagName === "SELECT") return;  // the confidence list keeps its own keys
      if (ev.key === "ArrowUp") { ev.preventDefault(); setSlice(state.slice - 1); }
      else if (ev.key === "ArrowDown") { ev.preventDefault(); setSlice(state.slice + 1); }
    });
    el.slider.addEventListener("input", () => setSlice(parseInt(el.slider.value, 10) - 1));
    el.real.addEventListener("click", () => choose("real"));
    el.synthetic.addEventListener("click", () => choose("synthetic"));
    el.confidence.addEventListener("change", () => {
      el.confidence.blur();  // arrow keys scroll slices again, not the confidence
      if (el.confidence.value === "") return;
      if (state.pending) save(); else el.saved.textContent = "Now click Real or Synthetic.";
    });
    el.prev.addEventListener("click", () => { if (state.index > 0) openCase(state.index - 1); });
    el.next.addEventListener("click", () => { if (state.index < state.cases.length - 1) openCase(state.index + 1); });
    el.review.addEventListener("click", () => openCase(0));
    window.addEventListener("resize", () => { if (state.study) { sizeCanvas(); draw(); } });
  }

  async function start() {
    state.token = tokenFromPage();
    if (!state.token) { say("Open the personal link you were sent (it looks like /r/…)."); return; }
    try {
      const [me, study, answers] = await Promise.all([
        api("/api/me").then((r) => r.json()),
        api("/api/study").then((r) => r.json()),
        api("/api/answers").then((r) => r.json()),
      ]);
      state.study = study;
      state.cases = study.cases;
      state.answers = answers.answers || {};
      if (study.title) { el.title.textContent = study.title; document.title = study.title; }
      el.reader.textContent = "Reader: " + me.name;
      el.slider.min = "1";
      el.slider.max = String(study.slices);
      el.windows.textContent = "";
      for (const name of Object.keys(study.windows)) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = name;
        b.dataset.window = name;
        if (/^[A-Za-z0-9_-]+$/.test(name)) b.id = "win-" + name;
        b.title = study.windows[name][0] + " to " + study.windows[name][1] + " HU";
        b.addEventListener("click", () => setWindow(name));
        el.windows.appendChild(b);
      }
      sizeCanvas();
      wire();
      showProgress();
      const first = firstUnanswered(0);
      if (first < 0) showDone(); else await openCase(first);
      document.body.dataset.ready = "1";
    } catch (e) {
      say(e.message);
    }
  }

  start();
})();
