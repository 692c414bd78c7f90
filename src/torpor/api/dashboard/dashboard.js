// torpor dashboard: reads the /v1 API with the token kept in sessionStorage.
"use strict";

const KEY = "torpor-token";
const page = document.body.dataset.page;

// -- token and API ---------------------------------------------------------------------

(function takeTokenFromUrl() {
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t) {
    sessionStorage.setItem(KEY, t);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

const token = () => sessionStorage.getItem(KEY) || "";
const logout = document.getElementById("logout");
logout.hidden = !token();
logout.onclick = () => { sessionStorage.removeItem(KEY); location.reload(); };

function askToken(why) {
  const form = document.getElementById("login");
  document.getElementById("login-why").textContent = why;
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("login-token").value.trim());
    location.reload();
  };
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers);
  if (token()) headers.Authorization = "Bearer " + token();
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) askToken(body.message || "This server needs an API token.");
  if (!r.ok) throw new Error(body.message || r.status + " " + r.statusText);
  return body;
}

// -- small helpers ---------------------------------------------------------------------

function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") n.className = v; else n.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) n.append(k);
  return n;
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const u = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

const ms = (x) => (x === null || x === undefined) ? "?" : Math.round(x) + " ms";

function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return new Date(t * 1000).toLocaleString();
}

const badge = (state) => el("span", { class: "badge " + state }, state);

// -- the sessions list -----------------------------------------------------------------

async function refreshList() {
  let data;
  try {
    data = await api("/v1/sessions?limit=500");
  } catch (e) {
    document.getElementById("counts").textContent = e.message;
    return;
  }
  const rows = data.sessions.slice().reverse();  // newest first
  const tbody = document.getElementById("sessions");
  tbody.replaceChildren(...rows.map((s) => el("tr", { "data-sid": s.id, "data-state": s.state },
    el("td", null, el("a", { href: "/ui/sessions/" + encodeURIComponent(s.id) }, s.id)),
    el("td", null, badge(s.state)),
    el("td", { class: "model" }, s.model),
    el("td", null, String((s.snapshots || []).length)),
    el("td", { class: "muted" }, ago(s.updated_at)))));
  if (!rows.length) {
    tbody.append(el("tr", null, el("td", { colspan: 5, class: "muted" }, "no sessions yet")));
  }
  const counts = {};
  for (const s of data.sessions) counts[s.state] = (counts[s.state] || 0) + 1;
  document.getElementById("counts").replaceChildren(...Object.entries(counts).map(
    ([state, n]) => el("span", null, badge(state), " " + n)));
}

// -- one session -----------------------------------------------------------------------

function sessionPage() {
  const sid = document.body.dataset.sid;
  const timeline = document.getElementById("timeline");
  const calls = {};  // tool call id -> its timeline item
  let lastSeq = 0;
  document.getElementById("sid").textContent = sid;

  function setState(state) {
    const b = document.getElementById("state");
    b.className = "badge " + state;
    b.textContent = state;
  }

  async function refreshSession() {
    try {
      const s = await api("/v1/sessions/" + encodeURIComponent(sid));
      setState(s.state);
      document.getElementById("meta").textContent =
        `${s.model} · image ${s.image} · snapshots: ${(s.snapshots || []).length} · ` +
        `log seq ${s.head_seq}` + (s.error ? " · error: " + s.error : "");
    } catch (e) {
      document.getElementById("meta").textContent = e.message;
    }
  }

  function add(kind, ...kids) {
    const near = innerHeight + scrollY >= document.body.scrollHeight - 80;
    const item = el("li", { class: "ev " + kind, "data-kind": kind }, ...kids);
    timeline.append(item);
    if (near) item.scrollIntoView({ block: "nearest" });
    return item;
  }

  const render = {
    user: (d) => add("msg user", el("div", { class: "who" }, "user"), el("p", null, d.text)),
    assistant: (d) => d.delta &&
      add("msg assistant", el("div", { class: "who" }, "assistant"), el("p", null, d.delta)),
    tool_call_started: (d) => {
      let args = d.arguments;
      try { const a = JSON.parse(args); if (a && a.command) args = a.command; } catch (e) { }
      calls[d.id] = add("tool", el("div", { class: "who" }, "tool · " + d.name,
        el("span", { class: "took muted" }, "running…")), el("pre", { class: "args" }, args));
    },
    tool_call_finished: (d) => {
      const item = calls[d.id] || add("tool", el("div", { class: "who" }, "tool result",
        el("span", { class: "took" })));
      item.querySelector(".took").textContent = (d.is_error ? "error · " : "") + ms(d.ms);
      if (d.is_error) item.classList.add("error");
      item.append(el("pre", { class: "output" },
        d.output + (d.truncated ? `\n… (${d.output_chars} characters)` : "")));
    },
    snapshot: (d) => {
      add("mark snapshot", `snapshot ${bytes(d.bytes)} in ${ms(d.ms)}`,
        d.mid_turn ? " (mid-turn)" : "", el("code", null, d.snapshot));
      loadPlot();
    },
    restored: (d) => { add("mark restored", `restored in ${ms(d.ms)}`, el("code", null, d.snapshot)); loadPlot(); },
    sandbox_started: (d) => add("mark started",
      `fresh sandbox from ${d.image} in ${ms(d.ms)}` + (d.pooled ? " (pooled)" : "")),
    sandbox_warm: () => add("mark restored", "warm sandbox, kept running since the last turn"),
    upload_awaited: (d) => add("mark", `waited ${ms(d.ms)} for machine ${d.machine}'s upload`),
    retry_scheduled: (d) => add("mark retry",
      `retry ${d.attempt} in ${d.delay} s` + (d.error ? ": " + d.error : "")),
    model_error: (d) => add("mark retry", "model error, gave up: " + (d.error || "")),
    recovery: (d) => add("mark recovery", "recovery: " + (d.text || "")),
    cancelled: (d) => add("mark recovery", "cancelled: " + (d.text || "")),
    error: (d) => add("mark recovery", "error: " + (d.error || "")),
    fork: (d) => add("mark", "fork of " + d.parent + ": " + (d.text || "")),
    summary: (d) => add("mark", `summary of ${d.entries} earlier entries`),
    step_limit: (d) => add("mark retry", `stopped after ${d.steps} steps`),
    size_warning: (d) => add("mark retry", `log size ${bytes(d.bytes)} (warning at ${bytes(d.limit)})`),
    hidden: (d) => add("mark", (d.by || "a framework") + " hid " +
      (d.seqs && d.seqs.length ? `${d.seqs.length} entries` : `the entries up to ${d.through}`)),
    framework_item: (d) => add("mark", (d.framework || "a framework") + "'s item"),
    retention_note: (d) => add("mark retry", `${(d.deleted || []).length} older snapshot(s) deleted: ${d.why || ""}`),
    state: (d) => {
      setState(d.state);
      refreshSession();
      if (d.state !== "running") add("mark state", d.state);
    },
    marker: (d) => add("mark", d.marker),  // a marker torpor does not define
  };

  function connect() {
    const live = document.getElementById("live");
    const q = new URLSearchParams({ after: lastSeq });
    if (token()) q.set("token", token());
    const es = new EventSource(`/v1/sessions/${encodeURIComponent(sid)}/events?${q}`);
    es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    es.onerror = () => {
      live.className = "live";
      live.textContent = es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…";
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    };
    for (const [kind, fn] of Object.entries(render)) {
      es.addEventListener(kind, (m) => {
        const d = JSON.parse(m.data);
        if (d.seq <= lastSeq) return;
        lastSeq = d.seq;
        fn(d);
        if (kind === "state" && d.state === "closed") {
          es.close();
          live.textContent = "closed";
          live.className = "live";
        }
      });
    }
  }

  document.getElementById("send").onsubmit = async (e) => {
    e.preventDefault();
    const text = document.getElementById("text");
    const status = document.getElementById("send-status");
    status.textContent = "sending…";
    try {
      const r = await api(`/v1/sessions/${encodeURIComponent(sid)}/messages`,
        { method: "POST", json: { text: text.value } });
      status.textContent = "queued as turn " + r.turn;
      text.value = "";
    } catch (err) {
      status.textContent = err.message;
    }
  };
  document.getElementById("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) document.getElementById("send").requestSubmit();
  });

  // the plot: a bar per snapshot (size), and the time of restoring from it (a line)
  let plotTimer = null;
  function loadPlot() {
    clearTimeout(plotTimer);
    plotTimer = setTimeout(async () => {
      try {
        const r = await api(`/v1/sessions/${encodeURIComponent(sid)}/snapshots`);
        drawPlot(r.snapshots);
      } catch (e) { /* the next event tries again */ }
    }, 300);
  }

  function drawPlot(snaps) {
    const box = document.getElementById("plot");
    if (!snaps.length) return;
    const NS = "http://www.w3.org/2000/svg";
    const W = 360, H = 190, L = 52, R = 46, T = 14, B = 30;
    const svg = (tag, attrs, text) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      return n;
    };
    const restoreMs = snaps.map((s) => s.restores.length
      ? s.restores.reduce((a, x) => a + (x.ms || 0), 0) / s.restores.length : null);
    const maxB = Math.max(1, ...snaps.map((s) => s.bytes || 0));
    const maxM = Math.max(1, ...restoreMs.filter((x) => x !== null));
    const step = (W - L - R) / snaps.length;
    const yB = (b) => H - B - (b / maxB) * (H - T - B) * 0.8;  // headroom: the line above
    const yM = (m) => H - B - (m / maxM) * (H - T - B);
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
      "aria-label": "snapshot size and restore time per snapshot" });
    g.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    for (const y of [yB(maxB), T]) g.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    g.append(svg("text", { x: L - 6, y: yB(maxB) + 4, class: "tick bytes", "text-anchor": "end" }, bytes(maxB)));
    g.append(svg("text", { x: L - 6, y: H - B, class: "tick", "text-anchor": "end" }, "0"));
    g.append(svg("text", { x: W - R + 6, y: T + 4, class: "tick ms" }, ms(maxM)));
    const pts = [];
    snaps.forEach((s, i) => {
      const x = L + i * step;
      const bar = svg("rect", { x: x + step * 0.15, width: step * 0.7, y: yB(s.bytes || 0),
        height: H - B - yB(s.bytes || 0), class: "bar" + (s.mid_turn ? " mid" : "") });
      bar.append(svg("title", {}, `snapshot ${i + 1}: ${bytes(s.bytes)}, taken in ${ms(s.ms)}` +
        (restoreMs[i] !== null ? `; restored in ${ms(restoreMs[i])}` : "")));
      g.append(bar);
      if (snaps.length <= 12 || i % Math.ceil(snaps.length / 12) === 0) {
        g.append(svg("text", { x: x + step / 2, y: H - B + 14, class: "tick", "text-anchor": "middle" }, i + 1));
      }
      if (restoreMs[i] !== null) pts.push([x + step / 2, yM(restoreMs[i])]);
    });
    if (pts.length) {
      g.append(svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "line" }));
      for (const [x, y] of pts) g.append(svg("circle", { cx: x, cy: y, r: 3, class: "dot" }));
    }
    g.append(svg("text", { x: (L + W - R) / 2, y: H - 2, class: "tick", "text-anchor": "middle" },
      "snapshot (one per turn, + mid-turn)"));
    const rows = snaps.map((s, i) => el("tr", null, el("td", null, String(i + 1)),
      el("td", null, bytes(s.bytes)), el("td", null, ms(s.ms)),
      el("td", null, restoreMs[i] === null ? "–" : ms(restoreMs[i])),
      el("td", { class: "muted" }, s.mid_turn ? "mid-turn" : "")));
    box.replaceChildren(g, el("table", { class: "snaps small" }, el("thead", null, el("tr", null,
      ...["#", "size", "taken in", "restored in", ""].map((h) => el("th", null, h)))),
      el("tbody", null, ...rows)));
  }

  refreshSession();
  setInterval(refreshSession, 2000);
  loadPlot();
  connect();
}

if (page === "sessions") {
  refreshList();
  setInterval(refreshList, 1500);
} else if (page === "session") {
  sessionPage();
}
