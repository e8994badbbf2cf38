// Parley visitor chat. Plain ES module, no dependencies. User text is only ever set via textContent.
const STORAGE_KEY = "parley.conversation";
const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), startView: $("start-view"), startForm: $("start-form"), startButton: $("start-button"),
  startError: $("start-error"), startNotice: $("start-notice"), chatView: $("chat-view"), messages: $("messages"),
  composer: $("composer"), text: $("text"), sendButton: $("send-button"), closeButton: $("close-button"),
  composerError: $("composer-error"), ended: $("ended"), newButton: $("new-button"), typing: $("typing"),
};

// ---------- state ----------
let conv = null;            // { id, token }
let events = new Map();     // seq -> event (rendered)
let cursor = 0;             // highest contiguous seq rendered
let highest = 0;            // highest seq rendered
let closed = false;
const pending = new Map();  // client_msg_id -> { text, el }
let sendChain = Promise.resolve();
const typing = { timer: null, sentAt: 0 }; // agent's "is typing" indicator; when we last signalled our own typing
const recv = { gen: 0, ws: null, poll: null, pollAbort: null, wsTimer: null, wsFailures: 0, gapTimer: null, trying: null };

// Identity verification: the customer's site opens the chat as `…/#user_id=…&user_hash=…`,
// the hash made by its backend (HMAC-SHA256 of the user id with the shared secret). The
// fragment never reaches a server log; both values go with every request.
const identity = (() => {
  const p = new URLSearchParams(location.hash.slice(1));
  const id = p.get("user_id"), hash = p.get("user_hash");
  return id && hash ? { id, hash } : null;
})();
const identityQuery = () => identity ? `&user_id=${encodeURIComponent(identity.id)}&user_hash=${encodeURIComponent(identity.hash)}` : "";

// ---------- helpers ----------
class ApiError extends Error {
  constructor(status, code, message) { super(message || code); this.status = status; this.code = code; }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const backoff = (n, cap = 10000) => Math.min(cap, 500 * 2 ** Math.min(n, 10)) * (0.5 + Math.random() / 2);
const retryable = (e) => e.status === 0 || e.status === 429 || e.status >= 500;
const base = () => `/v1/conversations/${encodeURIComponent(conv.id)}`;

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function api(method, path, body, signal) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (conv?.token) headers.Authorization = `Bearer ${conv.token}`;
  if (identity) { headers["X-Parley-User-Id"] = identity.id; headers["X-Parley-User-Hash"] = identity.hash; }
  let res, data = null;
  try {
    res = await fetch(path, { method, headers, signal, cache: "no-store", credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
    data = await res.json().catch(() => null);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", "Network error");
  }
  if (!res.ok) {
    const err = data?.error || {};
    throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText);
  }
  return data || {};
}

function store() {
  try {
    if (conv) localStorage.setItem(STORAGE_KEY, JSON.stringify({ conversation_id: conv.id, visitor_token: conv.token, last_seq: cursor }));
    else localStorage.removeItem(STORAGE_KEY);
  } catch { /* storage unavailable */ }
}
function restore() {
  try {
    const s = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    if (s && typeof s.conversation_id === "string" && typeof s.visitor_token === "string") return { id: s.conversation_id, token: s.visitor_token };
  } catch { /* ignore */ }
  return null;
}

const STATUS_TEXT = { idle: "Not connected", connecting: "Connecting…", ws: "Live · WebSocket", poll: "Live · long-poll",
  reconnecting: "Reconnecting…", closed: "Conversation ended" };
function setStatus(state) {
  if (ui.status.dataset.state === state) return;
  ui.status.dataset.state = state;
  ui.status.textContent = STATUS_TEXT[state] || state;
}

// ---------- rendering ----------
function formatTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}
function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}
function renderEvent(ev) {
  const isMessage = ev.type === "message" && ev.sender !== "system";
  const el = node("div", `event ${isMessage ? `msg from-${ev.sender}` : "note"}`);
  el.dataset.seq = String(ev.seq);
  el.dataset.sender = ev.sender || "";
  el.dataset.type = ev.type || "";
  if (isMessage) {
    if (ev.sender === "agent") el.append(node("span", "author", ev.agent?.name || "Agent"));
    el.append(node("div", "body", ev.text || ""));
    const t = node("time", "time", formatTime(ev.created_at));
    t.dateTime = ev.created_at || "";
    el.append(t);
  } else {
    let text = ev.text;
    if (!text && ev.type === "agent_joined") text = `${ev.agent?.name || "An agent"} joined the conversation`;
    if (!text && ev.type === "closed") text = "The conversation was closed";
    el.append(node("span", "", text || ""));
  }
  return el;
}
function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}
function insertAt(el, seq) {
  const stick = nearBottom();
  let before = null;
  for (const child of ui.messages.children) {
    if (child.classList.contains("pending") || Number(child.dataset.seq) > seq) { before = child; break; }
  }
  ui.messages.insertBefore(el, before);
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---------- typing ----------
// Typing events are ephemeral (seq 0): never stored, rendered as messages, or part of the cursor.
function showTyping(ev) {
  if (closed) return;
  clearTimeout(typing.timer);
  ui.typing.textContent = `${ev.agent?.name || "Agent"} is typing…`;
  ui.typing.hidden = false;
  typing.timer = setTimeout(hideTyping, 4000);
}
function hideTyping() {
  clearTimeout(typing.timer);
  typing.timer = null;
  ui.typing.hidden = true;
  ui.typing.textContent = "";
}
function signalTyping() {
  if (!conv || closed || !ui.text.value.trim() || Date.now() - typing.sentAt < 2000) return;
  typing.sentAt = Date.now();
  if (recv.ws?.readyState === WebSocket.OPEN) {
    try { recv.ws.send(JSON.stringify({ type: "typing" })); return; } catch { /* fall back to HTTP */ }
  }
  api("POST", `${base()}/typing`).catch(() => {});
}

// ---------- events ----------
function ingest(ev) {
  if (!ev || !Number.isInteger(ev.seq) || ev.seq < 1 || events.has(ev.seq)) return;
  events.set(ev.seq, ev);
  if (ev.type === "message" && ev.sender === "agent" && ev.seq > highest) hideTyping();
  const p = ev.client_msg_id && pending.get(ev.client_msg_id);
  if (p) { p.el.remove(); pending.delete(ev.client_msg_id); }
  insertAt(renderEvent(ev), ev.seq);
  highest = Math.max(highest, ev.seq);
  while (events.has(cursor + 1)) cursor++;
  store();
  if (ev.type === "closed") setClosed();
  if (highest > cursor) scheduleGapCheck();
}
function ingestAll(list) {
  if (Array.isArray(list)) [...list].sort((a, b) => a.seq - b.seq).forEach(ingest);
}

// One-shot fetch of everything after the cursor (history on load, gap repair).
async function catchUp() {
  const id = conv?.id;
  while (conv && conv.id === id) {
    const before = cursor;
    const page = await api("GET", `${base()}/events?after=${cursor}&wait=0`);
    if (conv?.id !== id) return;
    ingestAll(page.events);
    if (!page.more || cursor === before) return;
  }
}
function scheduleGapCheck() {
  if (recv.gapTimer) return;
  recv.gapTimer = setTimeout(async () => {
    recv.gapTimer = null;
    if (!conv || highest <= cursor) return;
    try { await catchUp(); } catch (e) { if (e.status === 401) return sessionLost(); }
    if (highest > cursor) scheduleGapCheck();
  }, 2000);
}

// ---------- receiving: WebSocket first, long-poll fallback ----------
function startReceiving() {
  stopReceiving();
  if (!conv || closed) return;
  tryWebSocket(recv.gen);
}
function stopReceiving() {
  recv.gen++;
  clearTimeout(recv.wsTimer);
  stopPolling();
  for (const ws of [recv.ws, recv.trying]) ws?.close();
  recv.ws = recv.trying = null;
}
function scheduleWsRetry(gen, delay) {
  clearTimeout(recv.wsTimer);
  recv.wsTimer = setTimeout(() => gen === recv.gen && !recv.ws && tryWebSocket(gen), delay);
}
function tryWebSocket(gen) {
  if (!("WebSocket" in window)) return startPolling(gen);
  if (recv.trying || recv.ws) return;
  if (!recv.poll) setStatus(recv.wsFailures ? "reconnecting" : "connecting");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try { ws = new WebSocket(`${proto}//${location.host}${base()}/ws?after=${cursor}${identityQuery()}`); }
  catch { recv.wsFailures++; startPolling(gen); return scheduleWsRetry(gen, backoff(recv.wsFailures, 30000)); }
  recv.trying = ws;
  let openedAt = 0, moved = false;
  const openTimer = setTimeout(() => { if (!openedAt) ws.close(); }, 10000);
  ws.onopen = () => {
    clearTimeout(openTimer);
    if (recv.trying === ws) recv.trying = null;
    if (gen !== recv.gen) return ws.close();
    openedAt = Date.now();
    recv.ws = ws;
    stopPolling();
    setStatus("ws");
  };
  ws.onmessage = (e) => {
    if (gen !== recv.gen) return;
    const f = handleFrame(e.data);
    if (f?.type === "move") moved = true;
  };
  ws.onclose = () => {
    clearTimeout(openTimer);
    if (recv.ws === ws) recv.ws = null;
    if (recv.trying === ws) recv.trying = null;
    if (gen !== recv.gen || closed || !conv) return;
    if (openedAt && Date.now() - openedAt > 30000) recv.wsFailures = 0;
    recv.wsFailures++;
    startPolling(gen);
    scheduleWsRetry(gen, moved ? 200 + Math.random() * 800 : backoff(recv.wsFailures, openedAt ? 10000 : 30000));
  };
}
function handleFrame(raw) {
  let f;
  try { f = JSON.parse(raw); } catch { return null; }
  if (Array.isArray(f)) { ingestAll(f); return null; }
  if (f?.type === "ack") acknowledge(f.client_msg_id, f.seq, f.created_at);
  else if (f?.type === "error") {
    if (f.client_msg_id) markFailed(f.client_msg_id, f.error?.message || "Message not sent");
    else if (f.error?.code === "unauthorized") sessionLost();
  } else if (f?.type === "typing") {
    if (f.sender === "agent") showTyping(f);
  } else if (f?.type !== "move") ingest(f);
  return f;
}
function stopPolling() {
  recv.poll = null;
  recv.pollAbort?.abort();
  recv.pollAbort = null;
}
async function startPolling(gen) {
  if (recv.poll || recv.ws || gen !== recv.gen) return;
  const token = {};
  recv.poll = token;
  const active = () => recv.poll === token && gen === recv.gen;
  let failures = 0;
  while (active() && conv && !closed) {
    const ac = new AbortController();
    recv.pollAbort = ac;
    if (!failures) setStatus("poll");
    try {
      const page = await api("GET", `${base()}/events?after=${cursor}&wait=25`, undefined, ac.signal);
      if (!active()) return;
      failures = 0;
      ingestAll(page.events);
    } catch (e) {
      if (e.name === "AbortError" || !active()) return;
      if (e.status === 401) return sessionLost();
      failures++;
      setStatus("reconnecting");
      await sleep(backoff(failures));
    }
  }
  if (recv.poll === token) recv.poll = null;
}

// ---------- sending ----------
function pendingBubble(text) {
  const el = node("div", "msg from-visitor pending");
  el.append(node("div", "body", text), node("span", "state", "Sending…"));
  return el;
}
function setPendingState(id, text, failed = false) {
  const p = pending.get(id);
  if (!p) return;
  p.el.querySelector(".state").textContent = text;
  p.el.classList.toggle("failed", failed);
}
function acknowledge(id, seq, createdAt) {
  const p = pending.get(id);
  if (p && Number.isInteger(seq)) ingest({ seq, type: "message", sender: "visitor", text: p.text, client_msg_id: id, created_at: createdAt });
}
function markFailed(id, message) {
  const p = pending.get(id);
  if (!p) return;
  setPendingState(id, `Not sent: ${message}`, true);
  p.el.classList.remove("pending");
  pending.delete(id);
  ui.composerError.textContent = message;
  if (!ui.text.value) ui.text.value = p.text;
}
async function deliver(id) {
  for (let attempt = 1; pending.has(id); attempt++) {
    try {
      const r = await api("POST", `${base()}/messages`, { client_msg_id: id, text: pending.get(id).text });
      return acknowledge(id, r.seq, r.created_at);
    } catch (e) {
      if (!pending.has(id)) return;
      if (e.status === 401) return sessionLost();
      if (!retryable(e)) return markFailed(id, e.message || "Message not sent");
      setPendingState(id, "Retrying…");
      await sleep(backoff(attempt));
    }
  }
}
function send() {
  const text = ui.text.value.trim();
  if (!text || !conv || closed) return;
  if (text.length > 4000) { ui.composerError.textContent = "Messages can be at most 4000 characters."; return; }
  ui.composerError.textContent = "";
  ui.text.value = "";
  typing.sentAt = 0;
  const id = uuid();
  const el = pendingBubble(text);
  pending.set(id, { text, el });
  ui.messages.append(el);
  ui.messages.scrollTop = ui.messages.scrollHeight;
  sendChain = sendChain.then(() => deliver(id));
}

// ---------- lifecycle ----------
function resetConversation() {
  stopReceiving();
  clearTimeout(recv.gapTimer);
  recv.gapTimer = null;
  recv.wsFailures = 0;
  pending.clear();
  events = new Map();
  cursor = highest = 0;
  closed = false;
  hideTyping();
  typing.sentAt = 0;
  ui.messages.replaceChildren();
  ui.composerError.textContent = "";
}
function showStart(notice) {
  resetConversation();
  conv = null;
  store();
  setStatus("idle");
  ui.chatView.hidden = true;
  ui.startView.hidden = false;
  ui.startNotice.hidden = !notice;
  ui.startNotice.textContent = notice || "";
  ui.startButton.disabled = false;
  $("name").focus();
}
function showChat() {
  ui.startView.hidden = true;
  ui.chatView.hidden = false;
  ui.ended.hidden = true;
  for (const b of [ui.text, ui.sendButton, ui.closeButton]) b.disabled = false;
  ui.text.focus();
}
function setClosed() {
  if (closed) return;
  closed = true;
  hideTyping();
  stopReceiving();
  setStatus("closed");
  for (const b of [ui.text, ui.sendButton, ui.closeButton]) b.disabled = true;
  ui.ended.hidden = false;
  ui.newButton.focus();
}
function sessionLost() {
  showStart("Your previous conversation is no longer available. You can start a new one.");
}
async function resume() {
  const id = conv.id;
  showChat();
  setStatus("connecting");
  try { await catchUp(); } catch (e) { if (e.status === 401) return sessionLost(); }
  if (conv?.id === id && !closed) startReceiving();
}

ui.startForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  ui.startError.textContent = "";
  ui.startButton.disabled = true;
  const body = {};
  for (const k of ["name", "email", "topic"]) { const v = $(k).value.trim(); if (v) body[k] = v; }
  if (identity) { body.user_id = identity.id; body.user_hash = identity.hash; }
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await api("POST", "/v1/conversations", body);
      resetConversation();
      conv = { id: r.conversation_id, token: r.visitor_token };
      store();
      return resume();
    } catch (err) {
      if (!retryable(err) || attempt >= 4) {
        ui.startError.textContent = err.message ? `Could not start the conversation: ${err.message}` : "Could not start the conversation.";
        ui.startButton.disabled = false;
        return;
      }
      await sleep(backoff(attempt));
    }
  }
});

ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
ui.text.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
ui.text.addEventListener("input", signalTyping);
ui.closeButton.addEventListener("click", async () => {
  if (!conv || closed) return;
  ui.closeButton.disabled = true;
  for (let attempt = 1; ; attempt++) {
    try {
      await api("POST", `${base()}/close`, {});
      ui.composerError.textContent = "";
      return catchUp().catch(() => {});
    } catch (e) {
      if (e.status === 401) return sessionLost();
      if (!retryable(e) || attempt >= 4) {
        ui.composerError.textContent = `Could not end the conversation: ${e.message}`;
        ui.closeButton.disabled = closed;
        return;
      }
      await sleep(backoff(attempt));
    }
  }
});
ui.newButton.addEventListener("click", () => showStart());
window.addEventListener("online", () => {
  if (conv && !closed && !recv.ws && !recv.trying) { clearTimeout(recv.wsTimer); tryWebSocket(recv.gen); }
});

conv = restore();
if (conv) resume(); else showStart();
