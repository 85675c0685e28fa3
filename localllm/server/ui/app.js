// The chat page. It talks only to this server (the CSP allows nothing else); model output
// goes through markdown.js, which never parses it as HTML.
import { copyText, renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const KEY = "localllm.key";             // sessionStorage only: gone with the tab
const OPEN = "localllm.conversation";  // sessionStorage: reopened on reload
const THEME = "localllm.theme";        // localStorage: a preference, not a secret
const ANSWER_ROOM = 256;               // the fit check's room for the answer when max tokens is empty
const POLL_MS = 500;

const state = {
  key: sessionStorage.getItem(KEY) || "",
  models: [],
  conversations: [],
  conv: blankConversation(),
  collections: [],
  limits: { max_upload_bytes: 0, kinds: [] },
  panelCollection: null,    // the collection open in the Documents panel
  refused: new Map(),       // collection id -> [{name, error}]: uploads that never got indexed
  streaming: null,          // {controller, msg, node} while an answer runs
  checking: false,          // counting the fit before a send: a second Enter must not send twice
  editing: null,            // messages taken off by "Edit", put back by Cancel
  renaming: null,           // conversation id whose title is an <input>
  confirmDelete: null,      // conversation id waiting for the in-page confirm
  confirmCollection: null,
  sourcesFor: null,         // the answer whose sources the Sources panel lists
};

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// A new conversation keeps the model and settings in use: most people change neither.
function blankConversation(previous) {
  return { id: null, title: "", messages: [], collection: null,
    model: previous ? previous.model : null,
    settings: previous ? { ...previous.settings } : { system: "", temperature: null, max_tokens: null, seed: null } };
}

// Elements from data only: text goes in as textContent, handlers as listeners (the CSP
// refuses on* attributes anyway).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "testid") node.dataset.testid = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const button = (text, onclick, attrs = {}) => el("button", { type: "button", text, onclick, ...attrs });

// ---------------------------------------------------------------- API

async function api(path, { method = "GET", body, raw = false, headers = {}, signal } = {}) {
  const h = { ...headers };
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  if (body !== undefined && !raw) h["Content-Type"] = "application/json";
  const payload = body === undefined || raw ? body : JSON.stringify(body);
  const res = await fetch(path, { method, headers: h, body: payload, signal });
  if (res.ok) return res;
  let message = `HTTP ${res.status} ${res.statusText}`;
  try {
    const error = (await res.json()).error;
    if (error) message = error.message || String(error);
  } catch { /* not JSON: the status says enough */ }
  if (res.status === 401) askForKey(message);
  throw new ApiError(message, res.status);
}

const json = async (path, options) => (await api(path, options)).json();
const patchCurrent = async (fields) => state.conv.id
  && json(`/ui/api/conversations/${state.conv.id}`, { method: "PATCH", body: fields });

function showError(error) {
  if (error && error.status === 401) return; // the key form says it
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error-banner").hidden = false;
}

const guard = (fn) => (...args) => Promise.resolve().then(() => fn(...args)).catch(showError);

// ---------------------------------------------------------------- start, key

async function boot() {
  applyTheme(localStorage.getItem(THEME) || "system");
  bindEvents();
  let session = { auth: "none" };
  try {
    session = await (await fetch("/ui/api/session")).json();
  } catch (error) {
    showError(new Error(`The server did not answer: ${error.message}`));
  }
  $("loading").hidden = true;
  if (session.auth === "key" && !state.key) askForKey("");
  else await start();
}

function askForKey(message) {
  state.key = "";
  sessionStorage.removeItem(KEY);
  if (state.streaming) state.streaming.controller.abort();
  $("app").hidden = true;
  $("key-form").hidden = false;
  $("key-error").textContent = message;
  $("key-error").hidden = !message;
  $("api-key").value = "";
  $("api-key").focus();
}

async function start() {
  $("key-form").hidden = true;
  $("app").hidden = false;
  try {
    await loadConversations(); // first: a wrong key fails here and brings the form back
    await Promise.all([loadModels(), loadCollections(), loadLimits()]);
    const last = sessionStorage.getItem(OPEN);
    if (last && state.conversations.some((c) => c.id === last)) await openConversation(last);
    else showConversation(blankConversation(state.conv)); // keeps a model picked meanwhile
  } catch (error) {
    showError(error);
  }
  $("app").dataset.ready = "true"; // for scripts driving the page: everything is loaded
  $("composer").focus();
}

// ---------------------------------------------------------------- models, settings

async function loadModels() {
  state.models = (await json("/v1/models")).data || [];
  renderModels();
}

function renderModels() {
  const select = $("model-select");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.id,
    text: `${m.id} — ${m.loaded ? "loaded" : "not loaded"}${m.context_length ? ` · ${m.context_length} ctx` : ""}` })));
  const wanted = state.conv.model;
  const pick = state.models.find((m) => m.id === wanted)
    || state.models.find((m) => m.loaded) || state.models[0];
  if (pick) select.value = pick.id;
  if (wanted && pick && pick.id !== wanted) showError(new Error(`This conversation's model ${wanted} is not offered here`));
}

const currentModel = () => $("model-select").value;

function numberOrNull(id, integer) {
  const text = $(id).value.trim();
  const value = integer ? parseInt(text, 10) : parseFloat(text);
  return text && Number.isFinite(value) ? value : null;
}

function readSettings() {
  state.conv.settings = { system: $("system-prompt").value, temperature: numberOrNull("temperature"),
    max_tokens: numberOrNull("max-tokens", true), seed: numberOrNull("seed", true) };
  return state.conv.settings;
}

function writeSettings(s = {}) {
  $("system-prompt").value = s.system || "";
  $("temperature").value = s.temperature ?? "";
  $("max-tokens").value = s.max_tokens ?? "";
  $("seed").value = s.seed ?? "";
}

// Only what the user filled in goes out: an empty field means the model's own default.
function samplingParams() {
  const s = readSettings();
  return Object.fromEntries(["temperature", "max_tokens", "seed"]
    .filter((name) => s[name] !== null).map((name) => [name, s[name]]));
}

// The system prompt is a setting, not a stored message: it goes first on every request.
function wireMessages(messages) {
  const system = $("system-prompt").value.trim();
  return [...(system ? [{ role: "system", content: system }] : []),
    ...messages.map((m) => ({ role: m.role, content: m.content || "" }))];
}

// ---------------------------------------------------------------- context meter

let meterTimer = 0;
let meterSeq = 0;

function scheduleMeter() {
  clearTimeout(meterTimer);
  meterTimer = setTimeout(() => updateMeter().catch(() => {}), 400);
}

async function countTokens(messages) {
  const wire = wireMessages(messages);
  if (!wire.length) { // nothing to count (and the server refuses an empty chat)
    const model = state.models.find((m) => m.id === currentModel());
    return { used: 0, limit: (model && model.context_length) || 0 };
  }
  const r = await json("/tokenize", { method: "POST", body: { model: currentModel(), messages: wire } });
  return { used: r.n_tokens, limit: r.context_length };
}

function withDraft(messages = state.conv.messages) {
  const draft = $("composer").value;
  return draft.trim() ? [...messages, { role: "user", content: draft }] : [...messages];
}

async function updateMeter() {
  if (!currentModel()) return;
  const seq = ++meterSeq;
  const context = await countTokens(withDraft());
  if (seq === meterSeq) showContext(context); // a later count may have overtaken this one
}

const answerRoom = () => numberOrNull("max-tokens", true) ?? ANSWER_ROOM;
const fits = (context) => !context.limit || context.used + answerRoom() <= context.limit;

function showContext(context, note = "") {
  const meter = $("context-meter");
  meter.dataset.used = String(context.used);
  meter.dataset.limit = String(context.limit || 0);
  const bar = $("context-bar");
  bar.max = context.limit || 1;
  Object.assign(bar, { low: bar.max * 0.7, high: bar.max * 0.9 }); // colours: ok, filling, full
  bar.value = Math.min(context.used, bar.max);
  $("context-text").textContent = `${context.used}${context.limit ? ` / ${context.limit}` : ""} tokens of context`;
  const warn = !fits(context);
  meter.classList.toggle("over", warn);
  $("context-warning").hidden = !warn;
  $("context-warning-text").textContent = `${note}The next turn does not fit: the conversation uses `
    + `${context.used} of ${context.limit} tokens and the answer needs room for ${answerRoom()}. `
    + "Nothing is cut without you: drop the oldest turns, shorten the message, lower max tokens "
    + "or start a new conversation.";
  $("drop-oldest").hidden = !state.conv.messages.some((m) => m.role === "user");
}

// Drops the oldest turns (a user message and its answers), as many as it takes for the next
// turn to fit. Run only from its button: the page never cuts anything on its own.
async function dropOldest() {
  const messages = state.conv.messages;
  const alone = await countTokens(withDraft([]));
  if (!fits(alone)) {
    showContext(await countTokens(withDraft()), "Even without the earlier turns: ");
    return;
  }
  let context;
  do {
    const first = messages.findIndex((m) => m.role === "user");
    if (first < 0) break;
    let end = first + 1;
    while (end < messages.length && messages[end].role !== "user") end += 1;
    messages.splice(0, end);
    context = await countTokens(withDraft());
  } while (!fits(context));
  showContext(context || alone);
  renderMessages();
  await patchCurrent({ messages });
}

// ---------------------------------------------------------------- conversations

async function loadConversations() {
  state.conversations = (await json("/ui/api/conversations")).data || [];
  renderConversationList();
}

function renderConversationList() {
  const redraw = (changes) => () => { Object.assign(state, changes); renderConversationList(); };
  $("conversation-list").replaceChildren(...state.conversations.map((c) => {
    const current = c.id === state.conv.id;
    const title = c.title || "Untitled";
    const item = el("li", { class: `conversation-item${current ? " current" : ""}`,
      testid: "conversation-item", "data-id": c.id });
    if (state.renaming === c.id) {
      item.append(titleInput(c, title));
    } else {
      item.append(button(title, guard(() => openConversation(c.id)), { class: "conversation-open",
        title, "aria-current": current ? "true" : null }));
    }
    if (state.confirmDelete === c.id) {
      item.append(el("span", { class: "confirm" }, el("span", { text: "Delete?" }),
        button("Delete", guard(() => deleteConversation(c.id)), { class: "danger",
          testid: "conversation-delete-confirm", "aria-label": `Delete ${title} for good` }),
        button("Keep", redraw({ confirmDelete: null }), { class: "ghost" })));
    } else {
      item.append(el("span", { class: "item-actions" },
        button("✎", redraw({ renaming: c.id }), { class: "icon-button",
          testid: "conversation-rename", "aria-label": `Rename ${title}` }),
        button("⤓", guard(() => exportOne(c.id)), { class: "icon-button", testid: "export-one",
          "aria-label": `Export ${title}` }),
        button("×", redraw({ confirmDelete: c.id }), { class: "icon-button",
          testid: "conversation-delete", "aria-label": `Delete ${title}` })));
    }
    return item;
  }));
}

// Renaming happens in the list itself: Enter or leaving the field saves, Esc cancels.
function titleInput(c, title) {
  const input = el("input", { class: "title-input", value: title,
    testid: "conversation-title-input", "aria-label": "Conversation title" });
  let done = false;
  const finish = guard(async (commit) => {
    if (done) return;
    done = true;
    state.renaming = null;
    const value = input.value.trim();
    if (!commit || !value || value === c.title) return renderConversationList();
    await json(`/ui/api/conversations/${c.id}`, { method: "PATCH", body: { title: value } });
    if (state.conv.id === c.id) state.conv.title = value;
    await loadConversations();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      finish(e.key === "Enter");
    }
  });
  input.addEventListener("blur", () => finish(true));
  requestAnimationFrame(() => { input.focus(); input.select(); });
  return input;
}

async function openConversation(id) {
  if (state.streaming) return;
  const conv = await json(`/ui/api/conversations/${id}`);
  showConversation({ ...conv, settings: conv.settings || {}, messages: conv.messages || [] });
  closeDrawer();
}

function showConversation(conv) {
  state.conv = conv;
  state.editing = null;
  $("edit-note").hidden = true;
  if (conv.id) sessionStorage.setItem(OPEN, conv.id);
  else sessionStorage.removeItem(OPEN);
  writeSettings(conv.settings);
  if (state.models.length) renderModels();
  if (!conv.model) conv.model = currentModel();
  renderCollectionSelect();
  renderConversationList();
  renderMessages();
  showSources([...conv.messages].reverse().find((m) => m.sources || m.left_out) || null, false);
  scheduleMeter();
}

async function deleteConversation(id) {
  await json(`/ui/api/conversations/${id}`, { method: "DELETE" });
  state.confirmDelete = null;
  if (state.conv.id === id) showConversation(blankConversation(state.conv));
  await loadConversations();
}

// Created on the first send, titled by the first user message.
async function ensureSaved() {
  const conv = state.conv;
  if (conv.id) return;
  const first = (conv.messages.find((m) => m.role === "user") || { content: "New conversation" })
    .content.replace(/\s+/g, " ").trim();
  const title = first.length > 40 ? `${first.slice(0, 40).trimEnd()}…` : first;
  const created = await json("/ui/api/conversations", { method: "POST", body: { title,
    model: currentModel(), collection: conv.collection, settings: readSettings(), messages: conv.messages } });
  Object.assign(conv, { id: created.id, title: created.title });
  sessionStorage.setItem(OPEN, conv.id);
  await loadConversations();
}

function download(name, data) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

async function exportOne(id) {
  const conv = await json(`/ui/api/conversations/${id}`);
  const name = (conv.title || "conversation").replace(/[^\w .-]+/g, "_").slice(0, 60);
  download(`${name}.json`, { format: "localllm-conversations", version: 1, conversations: [conv] });
}

async function importFile(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  let envelope;
  try {
    envelope = JSON.parse(await file.text());
  } catch {
    throw new Error(`${file.name} is not JSON`);
  }
  await json("/ui/api/import", { method: "POST", body: envelope });
  await loadConversations();
}

// ---------------------------------------------------------------- messages

// The list is a live region: only messages that changed get new nodes, so a screen reader
// announces what is new rather than the whole conversation again.
const rendered = new WeakMap(); // message -> {node, key}
const emptyHint = el("p", { class: "empty-hint", text: "Ask something to start a conversation." });

function renderMessages() {
  const list = $("messages");
  const messages = state.conv.messages;
  const lastUser = messages.map((m) => m.role).lastIndexOf("user");
  const idle = !state.streaming;
  const nodes = messages.map((m, i) => {
    const flags = { canEdit: idle && i === lastUser,
      canRegenerate: idle && m.role === "assistant" && i === messages.length - 1 && i > 0 };
    const key = JSON.stringify([m, flags, Boolean(state.streaming && state.streaming.msg === m)]);
    const known = rendered.get(m);
    if (known && known.key === key) return known.node;
    const node = messageNode(m, flags);
    rendered.set(m, { node, key });
    return node;
  });
  if (!nodes.length) nodes.push(emptyHint);
  nodes.forEach((node, i) => {
    if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
  });
  while (list.children.length > nodes.length) list.lastElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

// While streaming only the running answer is rebuilt, at most once a frame.
let frame = 0;
function refreshStreaming() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const s = state.streaming;
    if (!s || !s.node) return;
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const node = messageNode(s.msg, {});
    s.node.replaceWith(node);
    s.node = node;
    rendered.delete(s.msg);
    if (atBottom) list.scrollTop = list.scrollHeight;
  });
}

function messageNode(m, { canEdit, canRegenerate }) {
  const node = el("article", { class: `message ${m.role}`, testid: "message", "data-role": m.role },
    el("div", { class: "message-role", text: m.role === "user" ? "You" : "Assistant" }));
  if (m.reasoning) {
    node.append(el("details", { class: "thinking" }, el("summary", { text: "Thinking" }),
      el("div", { class: "thinking-text", text: m.reasoning })));
  }
  const content = el("div", { class: "message-content", testid: "message-content" });
  if (m.role === "assistant") {
    content.append(renderMarkdown(m.content || "", { citations: new Set((m.sources || []).map((s) => s.n)),
      onCite: (n) => openChunk((m.sources || []).find((s) => s.n === n), m) }));
  } else {
    content.textContent = m.content;
  }
  node.append(content);
  for (const call of m.tool_calls || []) {
    node.append(el("div", { class: "tool-call" },
      el("div", { class: "tool-name", text: `Tool call: ${call.function.name || "?"}` }),
      el("pre", {}, el("code", { text: call.function.arguments || "" }))));
  }
  if (m.error) node.append(el("div", { class: "message-error", role: "alert", text: m.error }));
  const actions = el("div", { class: "message-actions" });
  if (m.role === "assistant") {
    const running = state.streaming && m === state.streaming.msg;
    node.append(el("div", { class: `message-stats${running ? " pending" : ""}`, testid: "message-stats",
      text: running ? "generating…" : statsText(m.stats) }));
    if (running) return node;
    const copy = button("Copy", async () => {
      copy.textContent = (await copyText(m.content || "", content)) ? "Copied" : "Selected";
      setTimeout(() => { copy.textContent = "Copy"; }, 1200);
    }, { class: "ghost small", testid: "copy", "aria-label": "Copy answer" });
    actions.append(copy);
    if (canRegenerate) actions.append(button("Regenerate", guard(regenerate), { class: "ghost small",
      testid: "regenerate", "aria-label": "Regenerate this answer" }));
    if (m.sources || m.left_out) actions.append(button(`Sources (${(m.sources || []).length})`,
      () => showSources(m, true), { class: "ghost small", testid: "show-sources" }));
  } else if (canEdit) {
    actions.append(button("Edit", editLast, { class: "ghost small", testid: "edit-last",
      "aria-label": "Edit and resend your last message" }));
  }
  if (actions.childElementCount) node.append(actions);
  return node;
}

function statsText(s) {
  if (!s) return "";
  return [s.completion_tokens != null && `${s.approximate ? "≈" : ""}${s.completion_tokens} tokens`,
    s.ttft_ms != null && `TTFT ${Math.round(s.ttft_ms)} ms`,
    s.tokens_per_s && `${s.tokens_per_s.toFixed(1)} tok/s`,
    `finish: ${s.finish_reason || "unknown"}`].filter(Boolean).join(" · ");
}

function setBusy(busy) {
  $("messages").setAttribute("aria-busy", String(busy)); // no announcement per token
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("model-select").disabled = busy;
  $("collection-select").disabled = busy;
}

async function send() {
  const text = $("composer").value;
  if (state.streaming || state.checking || !text.trim()) return;
  if (!currentModel()) throw new Error("No model is offered by this server");
  state.checking = true;
  let context;
  try {
    context = await countTokens(withDraft());
  } finally {
    state.checking = false;
  }
  showContext(context);
  if (!fits(context)) return; // the warning says why; nothing is sent, nothing dropped
  state.conv.messages.push({ role: "user", content: text });
  state.editing = null;
  $("edit-note").hidden = true;
  $("composer").value = "";
  renderMessages();
  await ensureSaved();
  await runTurn();
}

async function regenerate() {
  const messages = state.conv.messages;
  if (state.streaming || messages[messages.length - 1].role !== "assistant") return;
  messages.pop();
  await runTurn();
}

function editLast() {
  const messages = state.conv.messages;
  const last = messages.map((m) => m.role).lastIndexOf("user");
  if (last < 0 || state.streaming) return;
  state.editing = messages.splice(last);
  $("composer").value = state.editing[0].content;
  $("edit-note").hidden = false;
  renderMessages();
  $("composer").focus();
  scheduleMeter();
}

function cancelEdit() {
  if (!state.editing) return;
  state.conv.messages.push(...state.editing);
  state.editing = null;
  $("composer").value = "";
  $("edit-note").hidden = true;
  renderMessages();
  scheduleMeter();
}

async function runTurn() {
  const conv = state.conv;
  const msg = { role: "assistant", content: "" };
  const history = [...conv.messages];
  conv.messages.push(msg);
  const controller = new AbortController();
  state.streaming = { controller, msg, node: null };
  setBusy(true);
  renderMessages();
  state.streaming.node = $("messages").lastElementChild;
  const params = samplingParams();
  const t = { sent: 0, first: 0, deltas: 0, usage: null, finish: null };
  try {
    let outgoing = wireMessages(history);
    if (conv.collection) {
      const found = await json(`/ui/api/collections/${conv.collection}/retrieve`, { method: "POST",
        signal: controller.signal, body: { model: currentModel(), messages: outgoing,
          ...(params.max_tokens ? { max_tokens: params.max_tokens } : {}) } });
      outgoing = found.messages;
      Object.assign(msg, { sources: found.sources || [], left_out: found.left_out || [] });
      showSources(msg, wideScreen());
    }
    t.sent = performance.now(); // time to first token is the model's: from this request on
    const res = await api("/v1/chat/completions", { method: "POST", signal: controller.signal,
      body: { model: currentModel(), messages: outgoing, stream: true,
        stream_options: { include_usage: true }, ...params } });
    await readEvents(res, (chunk) => onChunk(chunk, msg, t));
  } catch (error) {
    if (error.name === "AbortError") t.finish = "stopped";
    else {
      t.finish = "error";
      msg.error = error.message;
      showError(error);
    }
  } finally {
    controller.abort(); // lets go of a stream left open after an error event
  }
  const end = performance.now();
  const tokens = t.usage ? t.usage.completion_tokens : t.deltas;
  msg.stats = { completion_tokens: tokens, prompt_tokens: t.usage ? t.usage.prompt_tokens : null,
    ttft_ms: t.first ? t.first - t.sent : null,
    tokens_per_s: t.first && tokens > 1 && end > t.first ? (tokens - 1) / ((end - t.first) / 1000) : null,
    finish_reason: t.finish || "unknown" };
  if (!t.usage) msg.stats.approximate = true; // stopped: no usage chunk, deltas counted instead
  if (msg.tool_calls) msg.tool_calls = msg.tool_calls.filter(Boolean);
  state.streaming = null;
  setBusy(false);
  renderMessages();
  try {
    await patchCurrent({ messages: conv.messages, settings: readSettings(), model: currentModel() });
    await Promise.all([loadConversations(), loadModels()]); // the model may have loaded now
  } catch (error) {
    showError(error);
  }
  scheduleMeter();
}

function onChunk(chunk, msg, t) {
  if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
  if (chunk.usage) t.usage = chunk.usage;
  const choice = chunk.choices && chunk.choices[0];
  if (!choice) return;
  const delta = choice.delta || {};
  if (delta.content || delta.reasoning_content) {
    t.first = t.first || performance.now();
    t.deltas += 1;
  }
  if (delta.content) msg.content += delta.content;
  if (delta.reasoning_content) msg.reasoning = (msg.reasoning || "") + delta.reasoning_content;
  for (const call of delta.tool_calls || []) { // pieces of each call, by index
    msg.tool_calls = msg.tool_calls || [];
    const slot = msg.tool_calls[call.index ?? 0]
      || (msg.tool_calls[call.index ?? 0] = { id: "", type: "function", function: { name: "", arguments: "" } });
    if (call.id) slot.id = call.id;
    slot.function.name += (call.function && call.function.name) || "";
    slot.function.arguments += (call.function && call.function.arguments) || "";
  }
  if (choice.finish_reason) t.finish = choice.finish_reason;
  refreshStreaming();
}

// Server-sent events: `data: {...}` lines, `data: [DONE]` at the end.
async function readEvents(res, handle) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      if (data) handle(JSON.parse(data));
    }
  }
}

const stop = () => state.streaming && state.streaming.controller.abort();

// ---------------------------------------------------------------- documents

async function loadLimits() {
  state.limits = await json("/ui/api/limits");
  $("upload-input").accept = state.limits.kinds.join(",");
  $("upload-hint").textContent = `Accepted: ${state.limits.kinds.join(" ")}, up to `
    + `${formatBytes(state.limits.max_upload_bytes)} each.`;
}

function formatBytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(n % (1 << 20) ? 1 : 0)} MB`;
  return n >= 1024 ? `${Math.round(n / 1024)} KB` : `${n} bytes`;
}

async function loadCollections() {
  state.collections = (await json("/ui/api/collections")).data || [];
  renderCollections();
  renderCollectionSelect();
}

function renderCollectionSelect() {
  const select = $("collection-select");
  const attached = state.conv.collection;
  select.replaceChildren(el("option", { value: "", text: "No documents" }),
    ...state.collections.map((c) => el("option", { value: c.id, text: c.name })));
  if (attached && !state.collections.some((c) => c.id === attached)) {
    select.append(el("option", { value: attached, text: "(deleted collection)" }));
  }
  select.value = attached || "";
}

function renderCollections() {
  const open = state.panelCollection && state.panelCollection.id;
  const confirm = (id) => () => { state.confirmCollection = id; renderCollections(); };
  $("collection-list").replaceChildren(...state.collections.map((c) => el("li", {
    class: `collection-item${c.id === open ? " current" : ""}`, testid: "collection-item", "data-id": c.id },
  button(`${c.name} · ${c.documents} doc${c.documents === 1 ? "" : "s"}, ${c.chunks || 0} chunks`,
    guard(() => openCollection(c.id)), { class: "collection-open", "aria-current": c.id === open ? "true" : null }),
  ...(state.confirmCollection === c.id
    ? [button("Delete", guard(() => deleteCollection(c.id)), { class: "danger small",
      testid: "collection-delete-confirm", "aria-label": `Delete collection ${c.name} for good` }),
    button("Keep", confirm(null), { class: "ghost small" })]
    : [button("×", confirm(c.id), { class: "icon-button", testid: "collection-delete",
      "aria-label": `Delete collection ${c.name}` })]))));
}

let pollTimer = 0;

async function openCollection(id) {
  clearTimeout(pollTimer);
  state.panelCollection = await json(`/ui/api/collections/${id}`);
  renderCollections();
  renderDocuments();
  const pending = state.panelCollection.documents.some((d) => d.state === "queued" || d.state === "indexing");
  // polled while anything is indexing; the list's counts are refreshed when it is done
  if (pending) pollTimer = setTimeout(() => pollCollection(id), POLL_MS);
}

async function pollCollection(id) {
  if (!state.panelCollection || state.panelCollection.id !== id) return;
  try {
    await openCollection(id);
    const c = state.panelCollection;
    if (c && !c.documents.some((d) => d.state === "queued" || d.state === "indexing")) await loadCollections();
  } catch (error) {
    if (error.status !== 404) showError(error);
  }
}

function renderDocuments() {
  const c = state.panelCollection;
  $("collection-detail").hidden = !c;
  if (!c) return;
  $("collection-title").textContent = c.name;
  const refused = state.refused.get(c.id) || [];
  const error = (text) => text && el("span", { class: "document-error", testid: "document-error", role: "alert", text });
  $("document-list").replaceChildren(...c.documents.map((d) => {
    const busy = d.state === "indexing" || d.state === "queued";
    return el("li", { class: `document-item ${d.state}`, testid: "document-item", "data-state": d.state, "data-id": d.id },
      el("span", { class: "document-name", text: d.name, title: d.name }),
      el("span", { class: "document-state", text: d.state === "indexing" ? `indexing ${d.done || 0}/${d.total || "?"}`
        : d.state === "ready" ? `${d.chunks} chunk${d.chunks === 1 ? "" : "s"}` : d.state }),
      button("×", guard(() => deleteDocument(c.id, d.id)), { class: "icon-button", testid: "document-delete",
        "aria-label": `Delete ${d.name}` }),
      busy ? el("progress", { max: d.total || 1, value: d.done || 0, "aria-label": `Indexing ${d.name}` }) : null,
      error(d.error));
  }), ...refused.map((r, k) => el("li", { class: "document-item failed", testid: "document-item", "data-state": "failed" },
    el("span", { class: "document-name", text: r.name, title: r.name }), el("span", { class: "document-state", text: "refused" }),
    button("×", () => { refused.splice(k, 1); renderDocuments(); }, { class: "icon-button", "aria-label": `Dismiss ${r.name}` }),
    error(r.error))));
}

// Each file's kind and size are checked here first, so a refused one costs no upload; the
// server checks again, and its refusal is shown next to the file the same way.
async function uploadFiles(event) {
  const files = [...event.target.files];
  event.target.value = "";
  const c = state.panelCollection;
  if (!c || !files.length) return;
  const refused = state.refused.get(c.id) || [];
  state.refused.set(c.id, refused);
  const { kinds, max_upload_bytes: limit } = state.limits;
  for (const file of files) {
    const kind = file.name.includes(".") ? file.name.slice(file.name.lastIndexOf(".")).toLowerCase() : "";
    let error = !kinds.includes(kind) ? `Not accepted: ${kind || "no extension"} (accepted: ${kinds.join(" ")})`
      : file.size > limit ? `Too large: ${formatBytes(file.size)} (the limit is ${formatBytes(limit)})` : null;
    if (!error) {
      try {
        await api(`/ui/api/collections/${c.id}/documents?name=${encodeURIComponent(file.name)}`, { method: "POST",
          body: file, raw: true, headers: { "Content-Type": file.type || "application/octet-stream" } });
      } catch (failure) {
        if (failure.status === 401) return;
        error = failure.message;
      }
    }
    if (error) refused.push({ name: file.name, error });
  }
  await openCollection(c.id);
  await loadCollections();
}

async function deleteDocument(cid, did) {
  await json(`/ui/api/collections/${cid}/documents/${did}`, { method: "DELETE" });
  await openCollection(cid);
  await loadCollections();
}

async function deleteCollection(id) {
  await json(`/ui/api/collections/${id}`, { method: "DELETE" });
  state.confirmCollection = null;
  if (state.panelCollection && state.panelCollection.id === id) state.panelCollection = null;
  renderDocuments();
  if (state.conv.collection === id) {
    state.conv.collection = null;
    await patchCurrent({ collection: null });
  }
  await loadCollections();
}

async function createCollection(event) {
  event.preventDefault();
  const name = $("collection-name").value.trim();
  if (!name) return;
  const created = await json("/ui/api/collections", { method: "POST", body: { name } });
  $("collection-name").value = "";
  await loadCollections();
  await openCollection(created.id);
}

// ---------------------------------------------------------------- sources

function showSources(msg, open) {
  state.sourcesFor = msg;
  const sources = (msg && msg.sources) || [];
  const leftOut = (msg && msg.left_out) || [];
  $("sources-empty").hidden = Boolean(sources.length || leftOut.length);
  $("source-list").replaceChildren(...sources.map((s) => sourceItem(msg, s, false)));
  $("left-out-list").replaceChildren(...leftOut.map((s) => sourceItem(msg, s, true)));
  $("left-out-head").hidden = !leftOut.length;
  $("source-open").hidden = true;
  if (open) setPanel("sources-panel", true);
}

function where(s) {
  return [s.document, s.page && `page ${s.page}`, s.line_start && `lines ${s.line_start}–${s.line_end}`]
    .filter(Boolean).join(" · ");
}

function sourceItem(msg, s, leftOut) {
  const label = `${leftOut ? "" : `[${s.n}] `}${where(s)}`;
  return el("li", { class: `source-item${leftOut ? " left-out" : ""}`, testid: "source-item",
    "data-chunk-id": String(s.chunk_id), "data-n": leftOut ? null : String(s.n), "data-left-out": leftOut ? "true" : null },
  el("button", { type: "button", class: "source-button", "aria-label": `Open ${label}`, onclick: () => openChunk(s, msg) },
    el("span", { class: "source-where", text: label }),
    el("span", { class: "source-score", text: `score ${Number(s.score).toFixed(3)}` }),
    leftOut ? el("span", { class: "source-flag", text: "left out: did not fit the context" }) : null,
    el("span", { class: "source-snippet", text: (s.text || "").slice(0, 140) })));
}

// Opens a chunk in the Sources panel and highlights its entry. The text stored with the
// answer is the chunk the model saw; the server is asked only when it is missing.
const openChunk = guard(async (s, msg) => {
  if (!s) return;
  if (msg && msg !== state.sourcesFor) showSources(msg, true);
  const chunk = !s.text && state.conv.collection
    ? await json(`/ui/api/collections/${state.conv.collection}/chunks/${s.chunk_id}`) : s;
  for (const item of document.querySelectorAll(".source-item")) {
    const on = item.dataset.chunkId === String(s.chunk_id);
    item.classList.toggle("active", on);
    if (on) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  }
  $("source-open-title").textContent = where(chunk);
  $("source-open-text").textContent = chunk.text || "";
  $("source-open").hidden = false;
  setPanel("sources-panel", true);
  $("sources-panel").scrollTop = 0; // the opened chunk sits at the top, above the list
});

// ---------------------------------------------------------------- layout, theme, events

const wideScreen = () => window.matchMedia("(min-width: 1100px)").matches;

// One side panel at a time: on narrow screens they cover the chat.
function setPanel(id, open) {
  if (open) $(id === "docs-panel" ? "sources-panel" : "docs-panel").hidden = true;
  $(id).hidden = !open;
  $("documents-toggle").setAttribute("aria-expanded", String(!$("docs-panel").hidden));
  $("sources-toggle").setAttribute("aria-expanded", String(!$("sources-panel").hidden));
  $("app").classList.toggle("with-panel", !$("docs-panel").hidden || !$("sources-panel").hidden);
}

function setDrawer(open) {
  $("app").classList.toggle("drawer-open", open);
  $("scrim").hidden = !open;
  $("drawer-toggle").setAttribute("aria-expanded", String(open));
}
const closeDrawer = () => setDrawer(false);

function applyTheme(theme) {
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  localStorage.setItem(THEME, theme);
  $("theme-toggle").setAttribute("aria-label", `Theme: ${theme} (change)`);
  $("theme-toggle").title = `Theme: ${theme}`;
}

function bindEvents() {
  const on = (id, type, fn) => $(id).addEventListener(type, fn);
  on("key-form", "submit", (e) => {
    e.preventDefault();
    state.key = $("api-key").value.trim();
    if (!state.key) return;
    sessionStorage.setItem(KEY, state.key);
    start();
  });
  on("composer-form", "submit", (e) => { e.preventDefault(); guard(send)(); });
  on("composer", "keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); guard(send)(); }
  });
  on("composer", "input", scheduleMeter);
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (state.streaming) { e.preventDefault(); stop(); } else closeDrawer();
  });
  on("stop", "click", stop);
  on("edit-cancel", "click", cancelEdit);
  on("drop-oldest", "click", guard(dropOldest));
  for (const id of ["system-prompt", "temperature", "max-tokens", "seed"]) {
    on(id, "input", scheduleMeter);
    on(id, "change", guard(() => patchCurrent({ settings: readSettings() })));
  }
  on("model-select", "change", guard(() => {
    state.conv.model = currentModel();
    scheduleMeter();
    return patchCurrent({ model: state.conv.model });
  }));
  on("collection-select", "change", guard(() => {
    state.conv.collection = $("collection-select").value || null;
    return patchCurrent({ collection: state.conv.collection });
  }));
  on("new-conversation", "click", () => {
    if (state.streaming) return;
    readSettings();
    showConversation(blankConversation(state.conv));
    closeDrawer();
    $("composer").focus();
  });
  on("export-all", "click", guard(async () => download("localllm-conversations.json", await json("/ui/api/export"))));
  on("import-file", "change", guard(importFile));
  on("collection-form", "submit", guard(createCollection));
  on("upload-input", "change", guard(uploadFiles));
  on("documents-toggle", "click", () => setPanel("docs-panel", $("docs-panel").hidden));
  on("sources-toggle", "click", () => setPanel("sources-panel", $("sources-panel").hidden));
  for (const close of document.querySelectorAll("[data-close]")) {
    close.addEventListener("click", () => setPanel(close.dataset.close, false));
  }
  on("drawer-toggle", "click", () => setDrawer(!$("app").classList.contains("drawer-open")));
  on("scrim", "click", closeDrawer);
  on("theme-toggle", "click", () => {
    const order = ["system", "light", "dark"];
    applyTheme(order[(order.indexOf(localStorage.getItem(THEME) || "system") + 1) % order.length]);
  });
  on("error-close", "click", () => { $("error-banner").hidden = true; });
}

boot();
