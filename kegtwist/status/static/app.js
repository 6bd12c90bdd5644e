// The taps, live: /status.json once (and every 30 s while the page is
// shown), then /events (Server-Sent Events) for what changes.  No build
// step, no library.  Everything from the daemon is put in with textContent.
"use strict";

(function () {
  const REFRESH_MS = 30000;
  const RETRY_MS = 5000;
  const BUFFER = 300; // events kept to replay over a refreshed document
  const TAP_DRINKS = 3;
  const RECENT_DRINKS = 10;

  const state = {
    doc: null,
    taps: new Map(), // meter -> tap model
    drinks: [], // newest first
    buffer: [],
    es: null,
    live: false,
    loading: false,
  };

  // --- helpers -----------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function ml(value) {
    return typeof value === "number" && isFinite(value) ? String(Math.round(value)) : "–";
  }

  function who(username) {
    return username || "guest";
  }

  function ago(at) {
    if (typeof at !== "number") return "";
    const seconds = Math.max(0, Date.now() / 1000 - at);
    if (seconds < 5) return "just now";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function timed(node, at, prefix) {
    // Relative times are redrawn every few seconds (see tick()).
    node.dataset.at = String(at);
    node.dataset.prefix = prefix || "";
    node.textContent = (prefix || "") + ago(at);
    return node;
  }

  function row(label, value, tone) {
    const li = el("li");
    li.append(el("span", "label", label));
    const v = el("span", "value" + (tone ? " " + tone : ""));
    if (value instanceof Node) v.append(value);
    else v.textContent = value;
    li.append(v);
    return li;
  }

  function replaceChildren(parent, children, empty) {
    parent.textContent = "";
    if (children.length === 0 && empty) parent.append(el("li", "muted", empty));
    for (const child of children) parent.append(child);
  }

  // --- the document ------------------------------------------------------

  async function fetchDocument() {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) throw new Error("status.json: HTTP " + response.status);
    return response.json();
  }

  async function load(reconnect) {
    if (state.loading) return;
    state.loading = true;
    try {
      const doc = await fetchDocument();
      applyDocument(doc);
      showProblem(null);
      if (reconnect || !state.es || state.es.readyState === 2) connect(doc.last_event_id);
    } catch (error) {
      showProblem("Cannot reach the daemon (" + error.message + "); retrying.");
      setTimeout(() => load(true), RETRY_MS);
    } finally {
      state.loading = false;
    }
  }

  function applyDocument(doc) {
    state.doc = doc;
    const taps = new Map();
    for (const tap of doc.taps || []) {
      const old = state.taps.get(tap.meter);
      taps.set(tap.meter, {
        meter: tap.meter,
        name: tap.name,
        relay: tap.relay,
        keg: tap.keg,
        untapped: false,
        pour: null,
        ended: null,
        last: (tap.last_drinks || [])[0] || (old && old.last) || null,
        drinks: (tap.last_drinks || []).slice(0, TAP_DRINKS),
        valve: null,
        dom: null,
      });
    }
    for (const pour of doc.pours || []) {
      const tap = taps.get(pour.meter) || untappedModel(pour.meter, taps);
      tap.pour = pour;
    }
    for (const valve of doc.valves || []) {
      for (const tap of taps.values()) {
        if (tap.relay && tap.relay === valve.relay) tap.valve = valve.open;
      }
    }
    state.taps = taps;
    state.drinks = (doc.drinks || []).slice(0, RECENT_DRINKS);
    renderTaps();
    renderDrinks();
    renderTemperatures();
    renderBoards();
    renderServices();
    renderHealth();
    const footer = document.getElementById("footer");
    footer.textContent =
      "kegtwist " + (doc.version || "") + " · role " + (doc.role || "?") + " · up " + duration(doc.uptime_seconds);
    // Events that arrived while the document was on its way.
    for (const event of state.buffer) {
      if (event.id > doc.last_event_id) apply(event.kind, event.data, false);
    }
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "?";
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " d";
  }

  function untappedModel(meter, taps) {
    const tap = {
      meter: meter, name: null, relay: null, keg: null, untapped: true,
      pour: null, ended: null, last: null, drinks: [], valve: null, dom: null,
    };
    (taps || state.taps).set(meter, tap);
    return tap;
  }

  // --- taps ----------------------------------------------------------------

  function renderTaps() {
    const section = document.getElementById("taps");
    section.textContent = "";
    if (state.taps.size === 0) {
      const why = state.doc && state.doc.taps === null ? "No taps here (see the core's page)." : "No taps known yet.";
      section.append(el("p", "muted", why));
      return;
    }
    for (const tap of state.taps.values()) {
      section.append(card(tap));
      updateTap(tap);
    }
  }

  function card(tap) {
    const article = el("article", "tap");
    article.dataset.meter = tap.meter;
    const head = el("div", "tap-head");
    head.append(el("span", "tap-name", tap.name || tap.meter));
    head.append(el("span", "tap-meter", tap.meter));
    const now = el("div", "now");
    const volume = el("span", "volume", "–");
    volume.dataset.meter = tap.meter;
    now.append(volume, el("span", "unit", "mL"));
    const what = el("div", "what");
    const facts = el("div", "facts");
    const valve = el("span", "valve");
    facts.append(valve);
    if (tap.keg !== null && tap.keg !== undefined) facts.append(el("span", "keg", "keg " + tap.keg));
    if (tap.untapped) facts.append(el("span", "warn", "no tap for this meter: drinks are held"));
    const drinks = el("ol", "tap-drinks");
    article.append(head, now, what, facts, drinks);
    tap.dom = { article, volume, what, valve, drinks };
    return article;
  }

  function tapFor(meter) {
    let tap = state.taps.get(meter);
    if (!tap) {
      tap = untappedModel(meter);
      const section = document.getElementById("taps");
      if (state.taps.size === 1) section.textContent = "";
      section.append(card(tap));
    }
    return tap;
  }

  function updateTap(tap) {
    const dom = tap.dom;
    if (!dom) return;
    dom.article.classList.toggle("pouring", Boolean(tap.pour));
    dom.article.classList.toggle("untapped", tap.untapped);
    let volume = null;
    dom.what.textContent = "";
    if (tap.pour) {
      volume = tap.pour.volume_ml;
      dom.what.textContent = "pouring · " + who(tap.pour.username) + " · " + (tap.pour.ticks || 0) + " ticks";
    } else if (tap.ended) {
      volume = tap.ended.volume_ml;
      const why = tap.ended.held ? "held until the meter has a tap" : tap.ended.recorded ? "recording…" : "not recorded (too small)";
      dom.what.textContent = "ended · " + who(tap.ended.username) + " · " + why;
    } else if (tap.last) {
      volume = tap.last.volume_ml;
      dom.what.append(timed(el("span"), tap.last.ended, "last drink · " + who(tap.last.username) + " · "));
    } else {
      dom.what.textContent = "no drink yet";
    }
    dom.volume.textContent = ml(volume);
    dom.volume.dataset.ml = volume === null || volume === undefined ? "" : String(volume);
    if (!tap.relay) {
      dom.valve.className = "valve none";
      dom.valve.textContent = "no valve";
    } else {
      const open = tap.valve === true;
      dom.valve.className = "valve " + (open ? "open" : "closed");
      dom.valve.textContent = "valve " + (open ? "open" : "closed");
    }
    const items = tap.drinks.slice(0, TAP_DRINKS).map((d) => {
      const li = el("li");
      li.append(el("span", null, who(d.username)), el("span", null, ml(d.volume_ml) + " mL"));
      li.append(timed(el("span"), d.ended, ""));
      return li;
    });
    replaceChildren(dom.drinks, items);
  }

  // --- the other panels ---------------------------------------------------------

  function renderDrinks() {
    const items = state.drinks.map((d) => {
      const li = el("li");
      const tap = state.taps.get(d.meter);
      li.append(el("span", null, who(d.username) + " · " + ((tap && tap.name) || d.meter)));
      const right = el("span", "value");
      right.append(document.createTextNode(ml(d.volume_ml) + " mL · "), timed(el("span"), d.ended, ""));
      li.append(right);
      return li;
    });
    replaceChildren(document.getElementById("drinks"), items, "none yet");
  }

  function renderTemperatures() {
    const rows = ((state.doc && state.doc.temperatures) || []).map((t) => {
      const value = el("span");
      const celsius = typeof t.celsius === "number" ? t.celsius.toFixed(1) + " °C" : "?";
      value.append(document.createTextNode(celsius + " · "));
      if (typeof t.at === "number") value.append(timed(el("span"), t.at, ""));
      else if (typeof t.age_seconds === "number") value.append(document.createTextNode(duration(t.age_seconds) + " ago"));
      return row(t.sensor, value, t.lost ? "bad" : "");
    });
    replaceChildren(document.getElementById("temperatures"), rows, "no sensor");
  }

  function boardText(board) {
    if (board.connected) {
      const counters = board.counters || {};
      const errors = (counters.crc_errors || 0) + (counters.framing_errors || 0);
      const parts = [board.remote ? "remote" : "connected"];
      if (board.firmware !== null && board.firmware !== undefined) parts.push("fw " + board.firmware);
      if (board.counters) parts.push(counters.frames + " frames", errors + " errors");
      return [parts.join(" · "), errors > 0 ? "warn" : "ok"];
    }
    const since = typeof board.since === "number" ? " since " + new Date(board.since * 1000).toLocaleTimeString() : "";
    return ["GONE" + since + (board.reason ? " (" + board.reason + ")" : ""), "bad"];
  }

  function renderBoards() {
    const rows = ((state.doc && state.doc.boards) || []).map((b) => {
      const [text, tone] = boardText(b);
      return row(b.name, (b.device ? b.device + " · " : "") + text, tone);
    });
    replaceChildren(document.getElementById("boards"), rows, "none");
  }

  function renderServices() {
    const doc = state.doc || {};
    const rows = [];
    if (doc.server) {
      const s = doc.server;
      const tone = s.state === "ok" ? "ok" : s.state === "starting" ? "warn" : "bad";
      const value = el("span");
      value.append(document.createTextNode(s.state + " "));
      if (s.state !== "ok" && typeof s.since === "number") value.append(timed(el("span"), s.since, "since "));
      rows.push(row("Kegbot Server", value, tone));
      if (s.last_error && s.state !== "ok") rows.push(row("last error", s.last_error, "warn"));
    } else {
      rows.push(row("Kegbot Server", "none here", ""));
    }
    if (doc.redis) {
      const r = doc.redis;
      rows.push(row("Redis (Kegnet)", r.state + (r.queued ? " · " + r.queued + " queued" : ""), r.state === "connected" ? "ok" : "bad"));
    } else {
      rows.push(row("Redis (Kegnet)", "off", ""));
    }
    if (doc.kegnet) {
      const k = doc.kegnet;
      rows.push(row("Kegnet messages", k.in + " in · " + k.out + " out · " + k.rejected + " rejected", ""));
    }
    if (doc.outbox) {
      const o = doc.outbox;
      rows.push(row("Outbox", o.pending + " pending" + (o.uncertain ? " · " + o.uncertain + " uncertain" : ""), o.pending ? "warn" : "ok"));
      rows.push(row("Dead letters", String(o.dead_letters), o.dead_letters ? "bad" : "ok"));
      for (const d of (o.dead || []).slice(0, 5)) {
        rows.push(row("#" + d.number + " " + d.meter, d.reason, "bad"));
      }
      if (o.quarantined) rows.push(row("Quarantined records", String(o.quarantined), "warn"));
      if (o.disk_error) rows.push(row("Disk", o.disk_error, "bad"));
    }
    if (doc.untapped && doc.untapped.held && doc.untapped.held.length) {
      rows.push(row("Drinks waiting for a tap", String(doc.untapped.held.length), "warn"));
    }
    for (const e of doc.errors || []) {
      if (e.kind === "failed") rows.push(row("Status of " + e.part, e.error, "bad"));
    }
    replaceChildren(document.getElementById("services"), rows);
  }

  function badge(id, text, tone) {
    let node = document.getElementById(id);
    if (!node) {
      node = el("li", "badge");
      node.id = id;
      document.getElementById("health").append(node);
    }
    node.className = "badge" + (tone ? " " + tone : "");
    node.textContent = text;
  }

  function renderHealth() {
    const doc = state.doc || {};
    badge("health-stream", state.live ? "live" : "reconnecting", state.live ? "ok" : "warn");
    const boards = doc.boards || [];
    const gone = boards.filter((b) => !b.connected);
    if (doc.boards === null) badge("health-boards", "boards elsewhere", "");
    else if (gone.length) badge("health-boards", gone.map((b) => b.name).join(", ") + " gone", "bad");
    else badge("health-boards", boards.length + (boards.length === 1 ? " board" : " boards"), boards.length ? "ok" : "warn");
    if (doc.server) badge("health-server", "server " + doc.server.state, doc.server.state === "ok" ? "ok" : doc.server.state === "starting" ? "warn" : "bad");
    if (doc.redis) badge("health-redis", "redis " + doc.redis.state, doc.redis.state === "connected" ? "ok" : "bad");
    if (doc.outbox && doc.outbox.dead_letters) badge("health-dead", doc.outbox.dead_letters + " dead letter(s)", "bad");
    else {
      const dead = document.getElementById("health-dead");
      if (dead) dead.remove();
    }
  }

  function showProblem(text) {
    const node = document.getElementById("problem");
    node.hidden = !text;
    node.textContent = text || "";
  }

  // --- events ---------------------------------------------------------------

  function connect(after) {
    if (state.es) state.es.close();
    const es = new EventSource("/events?after=" + encodeURIComponent(after));
    state.es = es;
    es.onopen = () => { state.live = true; renderHealth(); };
    es.onerror = () => { state.live = false; renderHealth(); };
    for (const kind of ["pour", "drink", "valve", "board", "server", "redis", "temperature"]) {
      es.addEventListener(kind, (message) => {
        let data;
        try {
          data = JSON.parse(message.data);
        } catch (e) {
          return;
        }
        const id = Number(message.lastEventId);
        state.buffer.push({ id, kind, data });
        if (state.buffer.length > BUFFER) state.buffer.shift();
        apply(kind, data, true);
      });
    }
    es.addEventListener("reload", () => load(true));
  }

  function apply(kind, data, fresh) {
    const doc = state.doc;
    if (!doc) return;
    if (kind === "pour") {
      const tap = tapFor(data.meter);
      if (data.phase === "end") {
        tap.pour = null;
        tap.ended = data;
      } else {
        tap.pour = data;
        tap.ended = null;
      }
      updateTap(tap);
    } else if (kind === "drink") {
      const tap = tapFor(data.meter);
      tap.ended = null;
      tap.last = Object.assign({}, tap.last && tap.last.flow_id === data.flow_id ? tap.last : {}, data);
      tap.drinks = [tap.last].concat(tap.drinks.filter((d) => d.flow_id !== data.flow_id)).slice(0, TAP_DRINKS);
      state.drinks = [tap.last].concat(state.drinks.filter((d) => d.flow_id !== data.flow_id)).slice(0, RECENT_DRINKS);
      updateTap(tap);
      renderDrinks();
    } else if (kind === "valve") {
      for (const tap of state.taps.values()) {
        if (tap.relay && tap.relay === data.relay) {
          tap.valve = Boolean(data.open);
          updateTap(tap);
        }
      }
    } else if (kind === "board") {
      const boards = doc.boards || (doc.boards = []);
      let board = boards.find((b) => b.name === data.board);
      if (!board) {
        board = { name: data.board, remote: false, counters: null };
        boards.push(board);
      }
      board.connected = Boolean(data.connected);
      board.device = data.device || board.device;
      board.firmware = data.firmware !== undefined ? data.firmware : board.firmware;
      board.reason = data.connected ? null : data.reason;
      board.since = Date.now() / 1000;
      renderBoards();
      renderHealth();
    } else if (kind === "server" || kind === "redis") {
      const part = doc[kind];
      if (part) {
        if (part.state !== data.state) part.since = Date.now() / 1000;
        part.state = data.state;
        part.last_error = data.error || null;
        renderServices();
        renderHealth();
      }
    } else if (kind === "temperature") {
      const temps = doc.temperatures || (doc.temperatures = []);
      let t = temps.find((x) => x.sensor === data.sensor);
      if (!t) {
        t = { sensor: data.sensor, lost: false };
        temps.push(t);
      }
      t.celsius = data.celsius;
      t.at = typeof data.at === "number" ? data.at : Date.now() / 1000;
      t.lost = false;
      renderTemperatures();
    }
    if (fresh && !state.live) {
      state.live = true;
      renderHealth();
    }
  }

  // --- time ---------------------------------------------------------------------

  function tick() {
    for (const node of document.querySelectorAll("[data-at]")) {
      const at = Number(node.dataset.at);
      node.textContent = (node.dataset.prefix || "") + ago(at);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    load(true);
    setInterval(tick, 5000);
    setInterval(() => {
      if (document.visibilityState === "visible") load(false);
    }, REFRESH_MS);
  });
})();
