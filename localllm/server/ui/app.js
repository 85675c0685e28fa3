// The chat page. It talks only to this server (the CSP allows nothing else); model output
// goes through markdown.js, which never parses it as HTML.
import { copyText, renderMarkdown } from "./markdown.js";
import {
  $, KEY, api, blankConversation, button, el, guard, hooks, json, patchCurrent, setPanel, showError, state,
} from "./core.js";
import {
  createCollection, loadCollections, loadLimits, openChunk, renderCollectionSelect, showSources, uploadFiles,
} from "./documents.js";

const OPEN = "localllm.conversation";  // sessionStorage: reopened on reload
const THEME = "localllm.theme";        // localStorage: a preference, not a secret
const ANSWER_ROOM = 256;               // the fit check's room for the answer when max tokens is empty

// ---------------------------------------------------------------- start, key

async function boot() {
  hooks.unauthorized = askForKey;
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

// ---------------------------------------------------------------- layout, theme, events

const wideScreen = () => window.matchMedia("(min-width: 1100px)").matches;

function setDrawer(open) {
  $("app").classList.toggle("drawer-open", open);
  $("scrim").hidden = !open;
  $("drawer-toggle").setAttribute("aria-expanded", String(open));
}
const closeDrawer = () => setDrawer(false);

const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

function applyTheme(theme) {
  const root = document.documentElement;
  if (theme === "system") delete root.dataset.theme;
  else root.dataset.theme = theme;
  root.dataset.scheme = theme === "system" ? (systemDark.matches ? "dark" : "light") : theme;
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
  systemDark.addEventListener("change", () => applyTheme(localStorage.getItem(THEME) || "system"));
}

boot();
