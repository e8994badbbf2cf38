// Parley agent console. Plain ES module, no dependencies. User text is only ever set via textContent.
const $ = (id) => document.getElementById(id);
const ui = {
  loginView: $("login-view"), loginForm: $("login-form"), email: $("email"), password: $("password"),
  loginButton: $("login-button"), loginError: $("login-error"), appView: $("app-view"), status: $("status"),
  agentName: $("agent-name"), logout: $("logout-button"), list: $("conversation-list"), listEmpty: $("list-empty"),
  noSelection: $("no-selection"), conversation: $("conversation"), title: $("conversation-title"),
  meta: $("conversation-meta"), verified: $("conversation-verified"), claim: $("claim-button"), close: $("close-button"),
  transferForm: $("transfer-form"), transferAgent: $("transfer-agent"), transfer: $("transfer-button"),
  exportLink: $("export-link"), error: $("conversation-error"),
  messages: $("messages"), composer: $("composer"), text: $("text"), send: $("send-button"), typing: $("typing"),
};
const STATUSES = ["queued", "open", "closed"];
const tabs = STATUSES.map((s) => $(`tab-${s}`));

// ---------- state ----------
let me = null;
let agents = [];            // active agents, the targets of a transfer (loaded for supervisors and admins only)
const convs = new Map();    // id -> summary (+ _at: time received, ms)
const threads = new Map();  // id -> { id, events, cursor, highest, pending, container, loading, again, chain, draft }
let tab = "queued";
let selectedId = null;
let listsGen = 0;
const sock = { ws: null, gen: 0, timer: null, attempts: 0, noReplies: false };
const visitorTyping = new Map(); // conversation id -> timer that ends its "Visitor is typing…"
const typingSent = { id: null, at: 0 }; // when we last signalled our own typing, and where

// ---------- helpers ----------
class ApiError extends Error {
  constructor(status, code, message) { super(message || code); this.status = status; this.code = code; }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const backoff = (n, cap = 10000) => Math.min(cap, 500 * 2 ** Math.min(n, 10)) * (0.5 + Math.random() / 2);
const retryable = (e) => e.status === 0 || e.status === 429 || e.status >= 500;
const convPath = (id) => `/v1/agent/conversations/${encodeURIComponent(id)}`;
const isMine = (c) => !!(c?.assigned_agent && me && c.assigned_agent.id === me.id);
const supervises = () => me?.role === "supervisor" || me?.role === "admin";
const verifiedText = (c) => `Verified: ${c.visitor_user_id}`;

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Parley-CSRF"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res, data = null;
  try {
    res = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body) });
    data = await res.json().catch(() => null);
  } catch {
    throw new ApiError(0, "network", "Network error");
  }
  if (!res.ok) {
    const err = data?.error || {};
    if (res.status === 401 && me && path !== "/v1/agent/session") {
      queueMicrotask(() => showLogin("Your session has expired. Please sign in again."));
    }
    throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText);
  }
  return data || {};
}

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}
function formatTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}
function formatWait(sec) {
  sec = Math.max(0, Math.floor(sec));
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m ${sec % 60}s`;
  return `${Math.floor(sec / 3600)}h ${Math.floor((sec % 3600) / 60)}m`;
}
function waitingOf(c) {
  const elapsed = (Date.now() - c._at) / 1000;
  if (Number.isFinite(c.waiting_seconds)) return c.waiting_seconds + elapsed;
  const created = Date.parse(c.created_at);
  return Number.isNaN(created) ? elapsed : (Date.now() - created) / 1000;
}

const STATUS_TEXT = { idle: "Not connected", connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" };
function setStatus(state) {
  ui.status.dataset.state = state;
  ui.status.textContent = STATUS_TEXT[state] || state;
}

// ---------- conversation list ----------
function setTab(t) {
  tab = t;
  for (const b of tabs) {
    const on = b.dataset.tab === t;
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
  }
  ui.list.setAttribute("aria-labelledby", `tab-${t}`);
  renderList();
}
function renderItem(c) {
  const li = node("li", "conversation");
  li.dataset.id = c.id;
  li.dataset.status = c.status;
  const btn = node("button", "item");
  btn.type = "button";
  if (c.id === selectedId) { li.classList.add("selected"); btn.setAttribute("aria-current", "true"); }
  const row = node("span", "row");
  const who = node("span", "who");
  who.append(node("span", "name", c.visitor_name || "Visitor"));
  if (c.visitor_user_id) {
    const v = node("span", "badge verified", verifiedText(c));
    v.title = "Identity verified by your website";
    who.append(v);
  }
  row.append(who);
  if (c.status === "queued") {
    const w = node("span", "waiting", formatWait(waitingOf(c)));
    w.dataset.id = c.id;
    row.append(w);
  } else if (c.status === "open") {
    row.append(node("span", isMine(c) ? "badge mine" : "badge", isMine(c) ? "Mine" : c.assigned_agent?.name || "Assigned"));
  }
  btn.append(row);
  if (c.topic) btn.append(node("span", "topic", c.topic));
  if (visitorTyping.has(c.id) && c.status !== "closed") btn.append(node("span", "preview typing", "Typing…"));
  else if (c.last_message) {
    const who = c.last_message.sender === "agent" ? "Agent: " : "";
    btn.append(node("span", "preview", who + (c.last_message.text || "")));
  }
  li.append(btn);
  return li;
}
function renderList() {
  const all = [...convs.values()];
  for (const s of ["queued", "open"]) $(`count-${s}`).textContent = String(all.filter((c) => c.status === s).length);
  const items = all.filter((c) => c.status === tab).sort((a, b) => Date.parse(a.created_at) - Date.parse(b.created_at));
  const focused = document.activeElement?.closest?.(".conversation")?.dataset.id;
  ui.list.replaceChildren(...items.map(renderItem));
  ui.listEmpty.hidden = items.length > 0;
  if (focused) [...ui.list.children].find((li) => li.dataset.id === focused)?.querySelector("button").focus();
}
function upsert(c) {
  convs.set(c.id, { ...c, _at: Date.now() });
  renderList();
  if (c.id === selectedId) renderSelected();
}
async function loadAgents() {
  if (!supervises()) return;
  const who = me;
  try {
    const r = await api("GET", "/v1/agent/agents");
    if (me !== who) return;
    agents = r.agents || [];
    renderSelected();
  } catch (e) {
    if (retryable(e) && me === who) setTimeout(() => me === who && loadAgents(), backoff(3));
  }
}
async function reloadLists() {
  const gen = ++listsGen;
  const started = Date.now();
  try {
    const pages = await Promise.all(STATUSES.map((s) => api("GET", `/v1/agent/conversations?status=${s}`)));
    if (gen !== listsGen || !me) return;
    const fresh = new Map();
    for (const p of pages) for (const c of p.conversations || []) fresh.set(c.id, { ...c, _at: Date.now() });
    for (const [id, c] of convs) if (c._at > started) fresh.set(id, c); // newer live update wins
    convs.clear();
    for (const [id, c] of fresh) convs.set(id, c);
    renderList();
    renderSelected();
  } catch (e) {
    if (retryable(e) && me && gen === listsGen) setTimeout(() => gen === listsGen && reloadLists(), backoff(3));
  }
}

// ---------- selected conversation ----------
function thread(id) {
  let th = threads.get(id);
  if (!th) {
    th = { id, events: new Map(), cursor: 0, highest: 0, pending: new Map(), container: node("div", "thread"),
      loading: null, again: false, chain: Promise.resolve(), draft: "" };
    threads.set(id, th);
  }
  return th;
}
function select(id) {
  if (selectedId && selectedId !== id) thread(selectedId).draft = ui.text.value;
  const th = thread(id);
  if (selectedId !== id) { ui.text.value = th.draft; ui.transferAgent.value = ""; }
  selectedId = id;
  ui.error.textContent = "";
  ui.messages.replaceChildren(th.container);
  ui.conversation.hidden = false;
  ui.noSelection.hidden = true;
  renderSelected();
  renderList();
  renderTyping();
  ui.messages.scrollTop = ui.messages.scrollHeight;
  fetchMissing(th);
}
function renderSelected() {
  const c = convs.get(selectedId);
  if (!c) return;
  const mine = isMine(c);
  ui.title.textContent = c.visitor_name || "Visitor";
  ui.verified.textContent = c.visitor_user_id ? verifiedText(c) : "";
  ui.verified.hidden = !c.visitor_user_id;
  const state = c.status === "queued" ? "Waiting in queue" : c.status === "closed" ? "Closed"
    : mine ? "Assigned to you" : `Assigned to ${c.assigned_agent?.name || "another agent"}`;
  ui.meta.textContent = [c.visitor_email, c.topic && `Topic: ${c.topic}`, state].filter(Boolean).join(" · ");
  const canWrite = mine && c.status !== "closed";
  ui.claim.hidden = c.status !== "queued";
  ui.close.hidden = c.status === "closed";
  ui.close.disabled = c.status === "closed" || !(mine || supervises()); // supervisors close anyone's
  renderTransfer(c);
  ui.exportLink.hidden = !supervises();
  ui.exportLink.href = `${convPath(c.id)}/export`;
  ui.exportLink.download = `conversation-${c.id}.json`;
  ui.text.disabled = ui.send.disabled = !canWrite;
  ui.text.placeholder = canWrite ? "Type a reply… (Enter to send, Shift+Enter for a new line)"
    : c.status === "queued" ? "Claim this conversation to reply" : "You cannot reply to this conversation";
}
function renderTransfer(c) {
  ui.transferForm.hidden = !supervises() || c.status === "closed";
  if (ui.transferForm.hidden) return;
  const choices = agents.filter((a) => a.id !== c.assigned_agent?.id);
  const key = choices.map((a) => a.id).join(",");
  if (ui.transferAgent.dataset.key === key) return; // keeps an open dropdown and its choice
  const keep = ui.transferAgent.value;
  const prompt = node("option", "", "Transfer to…");
  prompt.value = "";
  ui.transferAgent.replaceChildren(prompt, ...choices.map((a) => {
    const o = node("option", "", `${a.name || "Agent"} (${a.email})`);
    o.value = a.id;
    return o;
  }));
  ui.transferAgent.value = choices.some((a) => a.id === keep) ? keep : "";
  ui.transferAgent.dataset.key = key;
}
function renderEvent(th, ev) {
  const isMessage = ev.type === "message" && ev.sender !== "system";
  const el = node("div", `event ${isMessage ? `msg from-${ev.sender}` : "note"}`);
  el.dataset.seq = String(ev.seq);
  el.dataset.sender = ev.sender || "";
  el.dataset.type = ev.type || "";
  if (isMessage) {
    if (ev.sender === "agent" && me && ev.agent?.id === me.id) el.classList.add("mine");
    const author = ev.sender === "agent" ? ev.agent?.name || "Agent" : convs.get(th.id)?.visitor_name || "Visitor";
    el.append(node("span", "author", author), node("div", "body", ev.text || ""));
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
function ingest(th, ev) {
  if (!ev || !Number.isInteger(ev.seq) || ev.seq < 1 || th.events.has(ev.seq)) return;
  th.events.set(ev.seq, ev);
  const p = ev.client_msg_id && th.pending.get(ev.client_msg_id);
  if (p) { p.el.remove(); th.pending.delete(ev.client_msg_id); }
  const shown = th.id === selectedId;
  const stick = shown && ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
  const before = [...th.container.children].find((n) => n.classList.contains("pending") || Number(n.dataset.seq) > ev.seq);
  th.container.insertBefore(renderEvent(th, ev), before || null);
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
  th.highest = Math.max(th.highest, ev.seq);
  while (th.events.has(th.cursor + 1)) th.cursor++;
  const c = convs.get(th.id);
  if (ev.type === "closed" && c && c.status !== "closed") { c.status = "closed"; renderList(); if (shown) renderSelected(); }
  if (th.highest > th.cursor) fetchMissing(th);
}
function fetchMissing(th) {
  if (th.loading) { th.again = true; return th.loading; }
  th.loading = (async () => {
    do {
      th.again = false;
      for (;;) {
        const before = th.cursor;
        const page = await api("GET", `${convPath(th.id)}/events?after=${th.cursor}&limit=100`);
        if (threads.get(th.id) !== th) return;
        [...(page.events || [])].sort((a, b) => a.seq - b.seq).forEach((ev) => ingest(th, ev));
        if (!page.more || th.cursor === before) break;
      }
    } while (th.again);
  })().catch((e) => {
    if (e.status !== 401 && th.id === selectedId) ui.error.textContent = `Could not load messages: ${e.message}`;
  }).finally(() => { th.loading = null; });
  return th.loading;
}

// ---------- typing ----------
function setVisitorTyping(id, on) {
  const was = visitorTyping.has(id);
  clearTimeout(visitorTyping.get(id));
  if (on) visitorTyping.set(id, setTimeout(() => setVisitorTyping(id, false), 4000));
  else visitorTyping.delete(id);
  if (was !== on) renderList();
  renderTyping();
}
function renderTyping() {
  const on = !!selectedId && visitorTyping.has(selectedId);
  if (ui.typing.hidden === !on) return;
  ui.typing.textContent = on ? "Visitor is typing…" : "";
  ui.typing.hidden = !on;
}
function signalTyping() {
  const c = convs.get(selectedId);
  if (!isMine(c) || c.status !== "open" || ui.text.disabled || !ui.text.value.trim()) return;
  if (typingSent.id === c.id && Date.now() - typingSent.at < 2000) return;
  typingSent.id = c.id;
  typingSent.at = Date.now();
  fetch(`${convPath(c.id)}/typing`, { method: "POST", headers: { "X-Parley-CSRF": "1" }, credentials: "same-origin", cache: "no-store" })
    .catch(() => {});
}

// ---------- sending ----------
function setPendingState(p, text, failed = false) {
  p.el.querySelector(".state").textContent = text;
  p.el.classList.toggle("failed", failed);
}
// Replies go over the live socket when it is open (answered by an ack or error frame), else by
// POST; a retry sends the same client_msg_id either way, so nothing is stored twice.
const answers = new Map(); // client_msg_id -> { resolve, reject, timer }
const statusOf = { unauthorized: 401, forbidden: 403, not_assigned: 403, not_found: 404, conversation_closed: 409,
  payload_too_large: 413, rate_limited: 429, unavailable: 503 };
function replyOverSocket(convId, id, text) {
  const ws = sock.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || sock.noReplies) return null;
  const frame = JSON.stringify({ type: "message", conversation_id: convId, client_msg_id: id, text });
  // A frame over the socket's 32 kB limit would close it; POST answers such a reply with 413.
  if (new TextEncoder().encode(frame).length > 32000) return null;
  return new Promise((resolve, reject) => {
    // Longer than the gateway's own wait for the relay, so that a slow answer is not sent twice.
    const timer = setTimeout(() => { answers.delete(id); reject(new ApiError(0, "timeout", "No answer from the server")); }, 20000);
    answers.set(id, { resolve, reject, timer });
    ws.send(frame);
  });
}
function onAnswer(f) {
  const a = answers.get(f.client_msg_id);
  if (!a) return;
  answers.delete(f.client_msg_id);
  clearTimeout(a.timer);
  if (f.type === "ack") return a.resolve(f);
  const code = f.error?.code || "error";
  if (code === "unauthorized" && me) queueMicrotask(() => showLogin("Your session has expired. Please sign in again."));
  const err = new ApiError(statusOf[code] || 400, code, f.error?.message);
  err.socket = true;
  a.reject(err);
}
function dropAnswers() {
  for (const [id, a] of answers) { clearTimeout(a.timer); a.reject(new ApiError(0, "network", "Connection lost")); }
  answers.clear();
}
async function deliver(th, id) {
  for (let attempt = 1; th.pending.has(id); attempt++) {
    const p = th.pending.get(id);
    try {
      const r = await (replyOverSocket(th.id, id, p.text) ?? api("POST", `${convPath(th.id)}/messages`, { client_msg_id: id, text: p.text }));
      if (th.pending.has(id) && Number.isInteger(r.seq)) {
        ingest(th, { seq: r.seq, type: "message", sender: "agent", text: p.text, client_msg_id: id, created_at: r.created_at,
          agent: { id: me?.id, name: me?.name } });
      }
      return;
    } catch (e) {
      if (!th.pending.has(id) || e.status === 401) return;
      // The socket takes no replies here (a proxy that changes the Host, say): POST from now on.
      if (e.socket && e.code === "forbidden") { sock.noReplies = true; continue; }
      if (!retryable(e)) {
        const msg = e.code === "not_assigned" ? "This conversation is not assigned to you" : e.message || "Message not sent";
        setPendingState(p, `Not sent: ${msg}`, true);
        p.el.classList.remove("pending");
        th.pending.delete(id);
        if (th.id === selectedId) ui.error.textContent = msg;
        return;
      }
      setPendingState(p, "Retrying…");
      await sleep(backoff(attempt));
    }
  }
}
function send() {
  const text = ui.text.value.trim();
  if (!text || !selectedId || ui.text.disabled) return;
  const th = thread(selectedId);
  const id = uuid();
  const el = node("div", "msg from-agent mine pending");
  el.append(node("div", "body", text), node("span", "state", "Sending…"));
  th.pending.set(id, { text, el });
  th.container.append(el);
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.text.value = "";
  ui.error.textContent = "";
  typingSent.at = 0;
  th.chain = th.chain.then(() => deliver(th, id));
}

// ---------- live updates ----------
function connectWs() {
  clearTimeout(sock.timer);
  const gen = ++sock.gen;
  setStatus(sock.attempts ? "reconnecting" : "connecting");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try { ws = new WebSocket(`${proto}//${location.host}/v1/agent/ws`); } catch { return scheduleReconnect(gen, 0); }
  sock.ws = ws;
  let openedAt = 0;
  ws.onopen = () => {
    if (gen !== sock.gen) return ws.close();
    openedAt = Date.now();
    setStatus("live");
    resync();
  };
  ws.onmessage = (e) => { if (gen === sock.gen) handleFrame(e.data); };
  ws.onclose = () => { if (gen === sock.gen) dropAnswers(); scheduleReconnect(gen, openedAt); };
}
function scheduleReconnect(gen, openedAt) {
  if (gen !== sock.gen || !me) return;
  sock.ws = null;
  if (openedAt && Date.now() - openedAt > 30000) sock.attempts = 0;
  sock.attempts++;
  setStatus("reconnecting");
  if (sock.attempts % 3 === 0) api("GET", "/v1/agent/me").catch(() => {}); // detects an expired session
  sock.timer = setTimeout(() => gen === sock.gen && me && connectWs(), backoff(sock.attempts));
}
function stopWs() {
  sock.gen++;
  dropAnswers();
  clearTimeout(sock.timer);
  sock.ws?.close();
  sock.ws = null;
  sock.attempts = 0;
}
function handleFrame(raw) {
  let f;
  try { f = JSON.parse(raw); } catch { return; }
  if (f?.type === "conversation" && f.conversation?.id) upsert(f.conversation);
  else if (f?.type === "event" && f.conversation_id && f.event) onLiveEvent(f.conversation_id, f.event);
  else if (f?.type === "typing" && f.conversation_id && f.sender === "visitor") setVisitorTyping(f.conversation_id, true);
  else if (f?.type === "resync") resync();
  else if ((f?.type === "ack" || f?.type === "error") && f.client_msg_id) onAnswer(f);
}
function onLiveEvent(id, ev) {
  if ((ev.type === "message" && ev.sender === "visitor") || ev.type === "closed") setVisitorTyping(id, false);
  const c = convs.get(id);
  if (c) {
    c.last_seq = Math.max(c.last_seq || 0, ev.seq || 0);
    if (ev.type === "message") c.last_message = { text: ev.text, sender: ev.sender, at: ev.created_at };
    renderList();
  }
  const th = threads.get(id);
  if (th) ingest(th, ev);
}
function resync() {
  reloadLists();
  loadAgents();
  if (selectedId) fetchMissing(thread(selectedId));
}

// ---------- session ----------
function startApp(agent) {
  me = agent;
  ui.loginView.hidden = true;
  ui.appView.hidden = false;
  ui.agentName.textContent = agent.name || agent.email || "Agent";
  setTab("queued");
  reloadLists();
  loadAgents();
  connectWs();
}
function showLogin(message) {
  stopWs();
  me = null;
  listsGen++;
  for (const th of threads.values()) th.pending.clear();
  threads.clear();
  convs.clear();
  agents = [];
  for (const t of visitorTyping.values()) clearTimeout(t);
  visitorTyping.clear();
  selectedId = null;
  renderTyping();
  ui.messages.replaceChildren();
  ui.list.replaceChildren();
  ui.text.value = "";
  ui.conversation.hidden = true;
  ui.noSelection.hidden = false;
  ui.appView.hidden = true;
  ui.loginView.hidden = false;
  ui.loginError.textContent = message || "";
  setStatus("idle");
  ui.email.focus();
}

ui.loginForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  ui.loginError.textContent = "";
  ui.loginButton.disabled = true;
  try {
    const r = await api("POST", "/v1/agent/session", { email: ui.email.value.trim(), password: ui.password.value });
    ui.password.value = "";
    startApp(r.agent);
  } catch (err) {
    ui.loginError.textContent = err.status === 401 ? "Invalid email or password." : `Sign-in failed: ${err.message}`;
  } finally {
    ui.loginButton.disabled = false;
  }
});
ui.logout.addEventListener("click", async () => {
  await api("DELETE", "/v1/agent/session").catch(() => {});
  showLogin();
});
for (const b of tabs) {
  b.addEventListener("click", () => setTab(b.dataset.tab));
  b.addEventListener("keydown", (e) => {
    const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
    if (!d) return;
    const next = tabs[(tabs.indexOf(b) + d + tabs.length) % tabs.length];
    setTab(next.dataset.tab);
    next.focus();
  });
}
ui.list.addEventListener("click", (e) => {
  const li = e.target.closest(".conversation");
  if (li) select(li.dataset.id);
});
ui.claim.addEventListener("click", async () => {
  const id = selectedId;
  ui.claim.disabled = true;
  ui.error.textContent = "";
  try {
    await api("POST", `${convPath(id)}/claim`);
    const c = convs.get(id);
    if (c) { c.status = "open"; c.assigned_agent = { id: me.id, name: me.name }; }
    setTab("open");
    renderSelected();
    fetchMissing(thread(id));
    ui.text.focus();
  } catch (e) {
    if (e.status === 409) { ui.error.textContent = "Another agent already claimed this conversation"; reloadLists(); }
    else if (e.status !== 401) ui.error.textContent = `Could not claim: ${e.message}`;
  } finally {
    ui.claim.disabled = false;
  }
});
ui.close.addEventListener("click", async () => {
  const id = selectedId;
  ui.close.disabled = true;
  try {
    await api("POST", `${convPath(id)}/close`);
    const c = convs.get(id);
    if (c) c.status = "closed";
    renderList();
    renderSelected();
    fetchMissing(thread(id));
  } catch (e) {
    if (e.status !== 401) ui.error.textContent = `Could not close: ${e.message}`;
    renderSelected();
  }
});
ui.transferForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = selectedId;
  const agentId = ui.transferAgent.value;
  if (!id || !agentId) return;
  ui.transfer.disabled = true;
  ui.error.textContent = "";
  try {
    await api("POST", `${convPath(id)}/transfer`, { agent_id: agentId });
    const c = convs.get(id);
    const to = agents.find((a) => a.id === agentId);
    if (c && to && c.status !== "closed") { c.status = "open"; c.assigned_agent = { id: to.id, name: to.name }; }
    ui.transferAgent.value = "";
    renderList();
    renderSelected();
    fetchMissing(thread(id));
  } catch (err) {
    if (err.status === 409) { ui.error.textContent = "This conversation is already closed"; reloadLists(); }
    else if (err.status !== 401) ui.error.textContent = `Could not transfer: ${err.message}`;
  } finally {
    ui.transfer.disabled = false;
  }
});
ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
ui.text.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
ui.text.addEventListener("input", signalTyping);
setInterval(() => {
  for (const w of ui.list.querySelectorAll(".waiting")) {
    const c = convs.get(w.dataset.id);
    if (c) w.textContent = formatWait(waitingOf(c));
  }
}, 1000);

api("GET", "/v1/agent/me").then((r) => startApp(r.agent)).catch((e) => {
  showLogin(e.status === 0 ? "Cannot reach the server. Please try again." : "");
});
