"use strict";
(() => {
  const DEFAULT_CHANNEL = "#kerno-challenge";
  const HISTORY = 50;               // messages shown when joining a channel
  const BACKOFF_MIN = 500, BACKOFF_MAX = 15000;  // reconnect delay, ms (doubles, with jitter)
  const PING_EVERY = 25000, PONG_WITHIN = 10000; // detect dead connections (sleeping phones)
  const CHANNEL_RE = /^[A-Za-z0-9#_.:-]{1,64}$/;

  const $ = (id) => document.getElementById(id);
  const store = {
    get(key, fallback) { try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; } },
    set(key, value) { try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* private mode */ } },
  };

  // ---------------------------------------------------------------- state
  // One entry per joined channel. All joined channels stay subscribed (so unread counts work and
  // switching is instant); only `current` is displayed.
  //   lastSeq: seq of the last message received: the `since` of the next subscribe
  //   synced:  false until the first `subscribed` reply (then resubscribes use `since`)
  //   sub:     "none" | "pending" | "live"
  //   list:    the <ol> of its messages (kept while another channel is shown)
  const channels = new Map();
  let current = null;
  let ws = null, connected = false, attempt = 0, retryTimer = null, pingTimer = null, pongTimer = null;
  let nextId = 1;
  const requests = new Map();   // command id -> {kind, channel, item}
  const outbox = [];            // publishes not yet acknowledged: {channel, author, text, el, id, sent}
  const ownIds = new Set();     // ids of messages this page published (shown as "mine")
  // Identity: a short-lived token from the server's development endpoint (POST /dev/token),
  // refreshed before it expires. A server without that endpoint (404) takes no token here.
  let token = null, tokenTimer = null, tokenless = false;

  function valid(name) { return CHANNEL_RE.test(name) && /[A-Za-z0-9]/.test(name); }

  // ---------------------------------------------------------------- connection
  function wsUrl() {
    const url = new URL("ws", location.href);          // works behind a path prefix too
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = ""; url.hash = "";
    if (token) url.searchParams.set("token", token);   // browsers cannot send Authorization
    return url.href;
  }

  // Signs in as the name in the author field; true when the page may connect.
  async function signIn() {
    if (tokenless) return true;
    const name = $("author").value.trim() || store.get("chat.author", "");
    let res;
    try {
      res = await fetch(new URL("dev/token", location.href), {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ name }),
      });
    } catch { return false; }
    if (res.status === 404) { tokenless = true; token = null; return true; }
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      notice(`Sign-in refused: ${body.message || res.status}`);
      return false;
    }
    const body = await res.json();
    token = body.token;
    clearTimeout(tokenTimer);
    // Refresh at 80 % of the lifetime; the connection and its subscriptions stay.
    tokenTimer = setTimeout(refreshToken, Math.max(5, body.expires_in * 0.8) * 1000);
    return true;
  }

  async function refreshToken() {
    if (await signIn()) { if (token) send({ command: "auth", token }); }
    else tokenTimer = setTimeout(refreshToken, 5000);
  }

  function setStatus(state, text) {
    $("status").dataset.state = state;
    $("status-text").textContent = text;
    $("retry").hidden = state !== "offline";
  }

  async function connect() {
    clearTimeout(retryTimer); retryTimer = null;
    if (ws) return;
    setStatus("connecting", attempt ? `reconnecting… (attempt ${attempt + 1})` : "connecting…");
    if (!token && !tokenless && !(await signIn())) { dropped(0); return; }
    if (ws) return;
    const sock = new WebSocket(wsUrl());
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      connected = true;
      for (const ch of channels.values()) { ch.sub = "none"; subscribe(ch); }
      flushOutbox();
      heartbeat();
      updateStatus();
    };
    sock.onmessage = (event) => {
      if (ws !== sock) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      clearTimeout(pongTimer);  // any frame proves the connection alive
      handle(frame);
    };
    sock.onclose = (event) => { if (ws === sock) dropped(event.code); };
    sock.onerror = () => { /* onclose follows */ };
  }

  function dropped(code) {
    ws = null; connected = false;
    if (code === 4001) token = null;   // missing, invalid or expired: sign in again first
    clearInterval(pingTimer); clearTimeout(pongTimer);
    requests.clear();
    for (const ch of channels.values()) ch.sub = "none";
    for (const item of outbox) item.sent = false;   // resent after reconnect
    // Exponential backoff with full jitter: 0.5 s, 1 s, 2 s, … capped at 15 s.
    const delay = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt);
    const wait = Math.round(delay / 2 + Math.random() * delay / 2);
    attempt++;
    setStatus("offline", `disconnected${code ? ` (${code})` : ""} · retrying in ${Math.ceil(wait / 1000)} s`);
    retryTimer = setTimeout(connect, wait);
  }

  function reconnectNow() {
    if (ws) return;
    attempt = Math.min(attempt, 1);
    connect();
  }

  function heartbeat() {
    clearInterval(pingTimer);
    pingTimer = setInterval(() => {
      if (!connected) return;
      send({ command: "ping" });
      clearTimeout(pongTimer);
      pongTimer = setTimeout(() => { if (ws) ws.close(); }, PONG_WITHIN);
    }, PING_EVERY);
  }

  function send(command) {
    if (!ws || !connected) return false;
    ws.send(JSON.stringify(command));
    return true;
  }

  function request(command, meta) {
    const id = nextId++;
    requests.set(id, meta);
    if (!send({ ...command, id })) { requests.delete(id); return false; }
    return true;
  }

  function updateStatus() {
    if (!connected) return;
    const pending = [...channels.values()].some((ch) => ch.sub !== "live");
    if (pending) setStatus("connecting", "joining…");
    else { attempt = 0; setStatus("live", "live"); }
  }

  // ---------------------------------------------------------------- subscriptions
  function subscribe(ch) {
    if (!connected || ch.sub !== "none") return;
    // First join: the last HISTORY messages. Afterwards: everything after the last seen seq.
    const cmd = ch.synced
      ? { command: "subscribe", channel: ch.name, since: ch.lastSeq }
      : { command: "subscribe", channel: ch.name, limit: HISTORY };
    if (request(cmd, { kind: "subscribe", channel: ch.name })) ch.sub = "pending";
    updateStatus();
  }

  function handle(frame) {
    const meta = frame.reply_to !== undefined ? requests.get(frame.reply_to) : undefined;
    if (meta) requests.delete(frame.reply_to);
    switch (frame.type) {
      case "subscribed": {
        const ch = channels.get(frame.channel);
        if (!ch) { send({ command: "unsubscribe", channel: frame.channel }); break; }
        ch.sub = "live";
        const first = !ch.synced;
        ch.synced = true;
        for (const m of frame.messages || []) receive(ch, m, first);
        if (first) { ch.unread = 0; renderChannels(); }
        if (ch === current) showEmptyHint();
        updateStatus();
        break;
      }
      case "message": {
        const ch = channels.get(frame.channel);
        if (ch && frame.message) receive(ch, frame.message, false);
        break;
      }
      case "published": {
        const item = meta && meta.item;
        if (item) ackPublish(item, frame.id);
        break;
      }
      case "error":
        onError(frame, meta);
        break;
      case "unsubscribed":
        onUnsubscribed(frame);
        break;
      default: // "pong": nothing to do
    }
  }

  // The server ended a subscription (a reply to our own unsubscribe has no reason).
  function onUnsubscribed(frame) {
    const ch = channels.get(frame.channel);
    if (!ch || !frame.reason) return;
    ch.sub = "none";
    if (frame.reason === "history_unavailable") {
      // PostgreSQL failed while the rest of the history was read: resume with `since` shortly.
      setTimeout(() => { if (channels.get(ch.name) === ch) subscribe(ch); }, 2000);
      notice(`Cannot load ${ch.name} right now; retrying…`);
    } else {
      notice(`${ch.name}: no longer readable (${frame.reason})`);
      leave(ch.name);
    }
    updateStatus();
  }

  function onError(frame, meta) {
    if (meta && meta.kind === "subscribe") {
      const ch = channels.get(meta.channel);
      if (!ch) return;
      if (frame.code === "already_subscribed") { ch.sub = "live"; updateStatus(); return; }
      ch.sub = "none";
      if (frame.code === "history_unavailable") {
        // The server could not read history (a dependency is down): retry shortly.
        setTimeout(() => { if (channels.get(ch.name) === ch) subscribe(ch); }, 2000);
        notice(`Cannot load ${ch.name} right now; retrying…`);
      } else {
        notice(`${ch.name}: ${frame.message || frame.code}`);
        leave(ch.name);
      }
      return;
    }
    if (meta && meta.kind === "publish") {
      const item = meta.item;
      item.sent = false;
      if (frame.code === "publish_failed") {
        // Kafka did not acknowledge; retry once connected (this may store the text twice).
        setTimeout(flushOutbox, 2000);
        notice("Sending failed (Kafka unavailable); retrying…");
      } else {
        outbox.splice(outbox.indexOf(item), 1);
        item.el.classList.replace("pending", "failed");
        notice(frame.message || frame.code);
      }
      return;
    }
    notice(frame.message || frame.code || "error");
  }

  // ---------------------------------------------------------------- messages
  function receive(ch, m, fromHistory) {
    if (typeof m.seq !== "number" || m.seq <= ch.lastSeq) return;   // duplicate or old: ignore
    ch.lastSeq = m.seq;
    // A message this page published: drop its "sending…" placeholder.
    const own = outbox.find((item) => item.id && item.id === m.id);
    if (own) { outbox.splice(outbox.indexOf(own), 1); own.el.remove(); ownIds.add(m.id); }
    const el = renderMessage(ch, m);
    insertBeforePending(ch, el);
    if (ch === current) { stickToBottom(); showEmptyHint(); }
    else if (!fromHistory) { ch.unread++; renderChannels(); }
  }

  function insertBeforePending(ch, el) {
    const firstPending = ch.list.querySelector(".pending, .failed");
    if (el.daySeparator) ch.list.insertBefore(el.daySeparator, firstPending);
    ch.list.insertBefore(el, firstPending);
  }

  function colorOf(name) {
    let h = 0;
    for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0;
    return `hsl(${h % 360} 55% 48%)`;
  }

  function renderMessage(ch, m) {
    const li = document.createElement("li");
    li.className = "msg";
    li.dataset.seq = m.seq;
    if (m.id) li.dataset.id = m.id;
    const author = String(m.author ?? "");
    const at = new Date(m.sent_at || m.stored_at || Date.now());
    // Consecutive messages of one author within 5 minutes are grouped.
    const prev = ch.lastRendered;
    if (prev && prev.author === author && at - prev.at < 5 * 60 * 1000 && sameDay(prev.at, at)) li.classList.add("cont");
    if (!prev || !sameDay(prev.at, at)) li.daySeparator = daySeparator(at);
    ch.lastRendered = { author, at };
    if (ownIds.has(m.id) || author === $("author").value.trim()) li.classList.add("mine");

    const avatar = document.createElement("div");
    avatar.className = "avatar";
    avatar.style.background = colorOf(author);
    avatar.textContent = [...author][0]?.toUpperCase() ?? "?";
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "author";
    who.textContent = author;
    const time = document.createElement("time");
    time.dateTime = at.toISOString();
    time.title = at.toLocaleString();
    time.textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const seq = document.createElement("span");
    seq.className = "seq";
    seq.textContent = `#${m.seq}`;
    meta.append(who, time, seq);
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = String(m.text ?? "");
    li.append(avatar, meta, text);
    return li;
  }

  function sameDay(a, b) { return a.toDateString() === b.toDateString(); }

  function daySeparator(at) {
    const li = document.createElement("li");
    li.className = "day";
    li.textContent = sameDay(at, new Date()) ? "Today"
      : at.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
    return li;
  }

  function nearBottom() { const log = $("log"); return log.scrollHeight - log.scrollTop - log.clientHeight < 120; }
  let stick = true;
  function stickToBottom() { if (stick) $("log").scrollTop = $("log").scrollHeight; }
  $("log").addEventListener("scroll", () => { stick = nearBottom(); });

  function showEmptyHint() {
    const ch = current;
    let hint = $("log").querySelector(".empty");
    const empty = ch.synced && !ch.list.querySelector(".msg");
    if (empty && !hint) {
      hint = document.createElement("p");
      hint.className = "empty";
      hint.textContent = "No messages yet. Say hello!";
      $("log").prepend(hint);
    } else if (!empty && hint) hint.remove();
  }

  // ---------------------------------------------------------------- publishing
  function publish(text) {
    const author = $("author").value.trim();
    if (!author) { $("author").focus(); notice("Enter your name first."); return false; }
    const ch = current;
    const li = renderMessage({ lastRendered: null }, {
      seq: 0, author, text, sent_at: new Date().toISOString(),
    });
    li.classList.add("pending", "mine");
    li.removeAttribute("data-seq");
    ch.list.appendChild(li);
    stick = true; stickToBottom();
    outbox.push({ channel: ch.name, author, text, el: li, id: null, sent: false });
    flushOutbox();
    return true;
  }

  function flushOutbox() {
    for (const item of outbox) {
      if (item.sent || item.id) continue;
      const cmd = { command: "publish", channel: item.channel, author: item.author, text: item.text };
      if (!request(cmd, { kind: "publish", item })) return;  // offline: sent after reconnect
      item.sent = true;
    }
  }

  function ackPublish(item, id) {
    item.id = id;
    ownIds.add(id);
    // The message may already have arrived through the pipeline.
    const ch = channels.get(item.channel);
    const shown = ch && ch.list.querySelector(`.msg[data-id="${CSS.escape(id)}"]`);
    if (shown) { outbox.splice(outbox.indexOf(item), 1); item.el.remove(); shown.classList.add("mine"); }
  }

  // ---------------------------------------------------------------- channels
  function join(name, show = true) {
    if (!channels.has(name)) {
      const list = document.createElement("ol");
      list.dataset.channel = name;
      channels.set(name, { name, lastSeq: 0, synced: false, sub: "none", unread: 0, list, lastRendered: null });
      saveChannels();
      subscribe(channels.get(name));
    }
    if (show) select(name);
    else renderChannels();
  }

  function leave(name) {
    const ch = channels.get(name);
    if (!ch) return;
    channels.delete(name);
    // A pending subscription is undone when its `subscribed` reply arrives.
    if (ch.sub === "live") send({ command: "unsubscribe", channel: name });
    saveChannels();
    if (current === ch) {
      current = null;
      if (!channels.size) join(DEFAULT_CHANNEL);
      else select(channels.keys().next().value);
    } else renderChannels();
    updateStatus();
  }

  function select(name) {
    const ch = channels.get(name);
    current = ch;
    ch.unread = 0;
    $("log").replaceChildren(ch.list);
    $("channel-title").textContent = name;
    $("channel-info").textContent = "";
    document.title = `${name} · chat-stream`;
    $("text").placeholder = matchMedia("(max-width: 700px)").matches ? "Message" : `Message ${name}`;
    const url = new URL(location.href);
    url.searchParams.set("channel", name);
    history.replaceState(null, "", url);
    store.set("chat.current", name);
    stick = true; stickToBottom(); showEmptyHint();
    renderChannels();
    $("text").focus({ preventScroll: true });
  }

  function saveChannels() { store.set("chat.channels", [...channels.keys()]); }

  function renderChannels() {
    const items = [];
    for (const ch of channels.values()) {
      const li = document.createElement("li");
      if (ch === current) li.className = "active";
      const pick = document.createElement("button");
      pick.type = "button"; pick.className = "pick";
      pick.textContent = ch.name;
      pick.addEventListener("click", () => select(ch.name));
      li.append(pick);
      if (ch.unread) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = ch.unread > 99 ? "99+" : String(ch.unread);
        li.append(badge);
      }
      const x = document.createElement("button");
      x.type = "button"; x.className = "leave"; x.textContent = "×";
      x.title = `leave ${ch.name}`; x.setAttribute("aria-label", `leave ${ch.name}`);
      x.addEventListener("click", () => leave(ch.name));
      li.append(x);
      items.push(li);
    }
    $("channels").replaceChildren(...items);
  }

  let noticeTimer = null;
  function notice(text) {
    const el = $("notice");
    el.textContent = text;
    el.classList.add("show");
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => el.classList.remove("show"), 6000);
  }

  // ---------------------------------------------------------------- UI wiring
  if (!store.get("chat.author", "")) store.set("chat.author", `guest-${Math.floor(1000 + Math.random() * 9000)}`);
  $("author").value = store.get("chat.author", "");
  $("author").addEventListener("input", () => store.set("chat.author", $("author").value.trim()));
  // With tokens the server takes the author from the token: a new name needs a new token.
  $("author").addEventListener("change", () => { if (token) refreshToken(); });

  $("compose").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim()) return;
    if (publish(text)) { $("text").value = ""; autosize(); }
  });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("compose").requestSubmit();
    }
  });
  function autosize() { const t = $("text"); t.style.height = "auto"; t.style.height = `${Math.min(t.scrollHeight + 2, 140)}px`; }
  $("text").addEventListener("input", autosize);

  $("join").addEventListener("submit", (event) => {
    event.preventDefault();
    let name = $("join-name").value.trim();
    if (!name) return;
    if (!name.startsWith("#") && valid(`#${name}`)) name = `#${name}`;
    if (!valid(name)) { notice("Channel names: 1–64 of letters, digits and # - _ . :"); return; }
    $("join-name").value = "";
    join(name);
  });

  $("retry").addEventListener("click", reconnectNow);
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) reconnectNow(); });

  // ---------------------------------------------------------------- start
  const wanted = new URL(location.href).searchParams.get("channel");
  const saved = store.get("chat.channels", []).filter((n) => typeof n === "string" && valid(n));
  for (const name of saved) join(name, false);
  const start = wanted && valid(wanted) ? wanted : store.get("chat.current", null);
  join(start && valid(start) ? start : (saved[0] || DEFAULT_CHANNEL));
  connect();
})();
