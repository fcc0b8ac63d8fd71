// The demo chat page. The protocol work (reconnects with backoff, resume with `since`, dedup and
// ordering by seq, publish retries with a message_id, heartbeats) is done by the client library
// of clients/js, served as /chat-client.js; this file is the user interface around it.
import { ChatClient, isValidChannel, newMessageId } from "./chat-client.js";

const DEFAULT_CHANNEL = "#kerno-challenge";
const HISTORY = 50;               // messages shown when joining a channel

const $ = (id) => document.getElementById(id);
const store = {
  get(key, fallback) { try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; } },
  set(key, value) { try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* private mode */ } },
};

// ---------------------------------------------------------------- state
// One entry per joined channel. All joined channels stay subscribed (so unread counts work and
// switching is instant); only `current` is displayed.
//   sub:  the client's Subscription (its state: pending | live | resuming | closed)
//   list: the <ol> of its messages (kept while another channel is shown)
const channels = new Map();
let current = null;
const outbox = new Map();     // message_id -> {channel, el}: placeholders of unacknowledged publishes
const ownIds = new Set();     // ids of messages this page published (shown as "mine")
// Identity: a short-lived token from the server's development endpoint (POST /dev/token),
// refreshed before it expires. A server without that endpoint (404) takes no token here.
let token = null, tokenTimer = null, tokenless = false;

// Signs in as the name in the author field; throws when the server refused or is unreachable.
async function signIn() {
  const name = $("author").value.trim() || store.get("chat.author", "");
  const res = await fetch(new URL("dev/token", location.href), {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (res.status === 404) { tokenless = true; token = null; return; }
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    notice(`Sign-in refused: ${body.message || res.status}`);
    throw new Error(`sign-in refused: ${res.status}`);
  }
  const body = await res.json();
  token = body.token;
  clearTimeout(tokenTimer);
  // Refresh at 80 % of the lifetime; the connection and its subscriptions stay.
  tokenTimer = setTimeout(refreshToken, Math.max(5, body.expires_in * 0.8) * 1000);
}

async function refreshToken() {
  try {
    await signIn();
    if (token && client.state === "open") await client.authenticate(token);
  } catch {
    clearTimeout(tokenTimer);
    tokenTimer = setTimeout(refreshToken, 5000);
  }
}

const client = new ChatClient({
  url: new URL("ws", location.href),   // works behind a path prefix too; http(s) becomes ws(s)
  // Called before every connection; `fresh` after a 4001 close (missing, invalid or expired).
  token: async ({ fresh }) => {
    if (tokenless) return null;
    if (!token || fresh) await signIn();
    return token;
  },
  reconnectInitialDelayMs: 500,
  reconnectMaxDelayMs: 15000,
});

// ---------------------------------------------------------------- status
function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
  $("retry").hidden = state !== "offline";
}

let lastChange = { state: "idle", attempt: 0 };
function updateStatus() {
  const change = lastChange;
  if (client.state === "open") {
    const joining = [...channels.values()].some((ch) => ch.sub.state !== "live");
    setStatus(joining ? "connecting" : "live", joining ? "joining…" : "live");
  } else if (client.state === "reconnecting") {
    const code = change.code ? ` (${change.code})` : "";
    setStatus("offline", `disconnected${code} · retrying in ${Math.ceil((change.delayMs ?? 0) / 1000)} s`);
  } else {
    setStatus("connecting", change.attempt ? `reconnecting… (attempt ${change.attempt + 1})` : "connecting…");
  }
}

client.on("state", (change) => { lastChange = change; updateStatus(); });
client.on("subscription", ({ channel, state, error }) => {
  const ch = channels.get(channel);
  if (ch && state === "closed" && error) {
    // Refused (forbidden, invalid channel, too many subscriptions, …): leave it.
    notice(`${channel}: ${error.message || error.code}`);
    leave(channel);
  } else if (ch && state === "live" && ch === current) {
    showEmptyHint();
  }
  updateStatus();
});
client.on("message", ({ channel, message, initial }) => {
  const ch = channels.get(channel);
  if (ch) receive(ch, message, initial);
});
client.on("error", (err) => {
  // Subscription refusals are shown above; a failed sign-in by signIn(); the rest here.
  if (err.channel || err.code === "token_unavailable") return;
  notice(err.message || err.code);
});

// ---------------------------------------------------------------- messages
function receive(ch, m, fromHistory) {
  // A message this page published: drop its "sending…" placeholder.
  const own = outbox.get(m.id);
  if (own) { outbox.delete(m.id); own.el.remove(); ownIds.add(m.id); }
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
  const empty = ch.sub.state !== "pending" && !ch.list.querySelector(".msg");
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
  // The id is ours: the client resends with it until acknowledged, and the server stores it once.
  const id = newMessageId();
  outbox.set(id, { channel: ch.name, el: li });
  client.publish(ch.name, text, { messageId: id, author }).then(
    () => ackPublish(id),
    (err) => {
      const item = outbox.get(id);
      if (!item) return;
      outbox.delete(id);
      item.el.classList.replace("pending", "failed");
      notice(err.message || err.code);
    },
  );
  return true;
}

function ackPublish(id) {
  ownIds.add(id);
  const item = outbox.get(id);
  if (!item) return;   // already arrived through the pipeline
  // The message may already be shown (it arrived before the acknowledgement).
  const ch = channels.get(item.channel);
  const shown = ch && ch.list.querySelector(`.msg[data-id="${CSS.escape(id)}"]`);
  if (shown) { outbox.delete(id); item.el.remove(); shown.classList.add("mine"); }
}

// ---------------------------------------------------------------- channels
function join(name, show = true) {
  if (!channels.has(name)) {
    const list = document.createElement("ol");
    list.dataset.channel = name;
    const sub = client.subscribe(name, { limit: HISTORY });
    channels.set(name, { name, sub, unread: 0, list, lastRendered: null });
    saveChannels();
  }
  if (show) select(name);
  else renderChannels();
  updateStatus();
}

function leave(name) {
  const ch = channels.get(name);
  if (!ch) return;
  channels.delete(name);
  ch.sub.unsubscribe();
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
  if (!name.startsWith("#") && isValidChannel(`#${name}`)) name = `#${name}`;
  if (!isValidChannel(name)) { notice("Channel names: 1–64 of letters, digits and # - _ . :"); return; }
  $("join-name").value = "";
  join(name);
});

const reconnectNow = () => client.reconnectNow();
$("retry").addEventListener("click", reconnectNow);
window.addEventListener("online", reconnectNow);
document.addEventListener("visibilitychange", () => { if (!document.hidden) reconnectNow(); });

// ---------------------------------------------------------------- start
const wanted = new URL(location.href).searchParams.get("channel");
const saved = store.get("chat.channels", []).filter(isValidChannel);
for (const name of saved) join(name, false);
const start = wanted && isValidChannel(wanted) ? wanted : store.get("chat.current", null);
join(start && isValidChannel(start) ? start : (saved[0] || DEFAULT_CHANNEL));
client.connect();
