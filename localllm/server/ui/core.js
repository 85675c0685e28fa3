// What the chat page's modules share: the page state, building elements from data, the
// server's API and how errors are shown. Nothing here touches model output as HTML.

export const $ = (id) => document.getElementById(id);
export const KEY = "localllm.key";      // sessionStorage only: gone with the tab

// Set by app.js: what a 401 does (bring back the key form).
export const hooks = { unauthorized: (message) => { throw new Error(message); } };

export const state = {
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
export function blankConversation(previous) {
  return { id: null, title: "", messages: [], collection: null,
    model: previous ? previous.model : null,
    settings: previous ? { ...previous.settings } : { system: "", temperature: null, max_tokens: null, seed: null } };
}

// Elements from data only: text goes in as textContent, handlers as listeners (the CSP
// refuses on* attributes anyway).
export function el(tag, attrs = {}, ...children) {
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

export const button = (text, onclick, attrs = {}) => el("button", { type: "button", text, onclick, ...attrs });

// ---------------------------------------------------------------- API

export async function api(path, { method = "GET", body, raw = false, headers = {}, signal } = {}) {
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
  if (res.status === 401) hooks.unauthorized(message);
  throw new ApiError(message, res.status);
}

export const json = async (path, options) => (await api(path, options)).json();
export const patchCurrent = async (fields) => state.conv.id
  && json(`/ui/api/conversations/${state.conv.id}`, { method: "PATCH", body: fields });

export function showError(error) {
  if (error && error.status === 401) return; // the key form says it
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error-banner").hidden = false;
}

export const guard = (fn) => (...args) => Promise.resolve().then(() => fn(...args)).catch(showError);

// ---------------------------------------------------------------- panels

// One side panel at a time: on narrow screens they cover the chat.
export function setPanel(id, open) {
  if (open) $(id === "docs-panel" ? "sources-panel" : "docs-panel").hidden = true;
  $(id).hidden = !open;
  $("documents-toggle").setAttribute("aria-expanded", String(!$("docs-panel").hidden));
  $("sources-toggle").setAttribute("aria-expanded", String(!$("sources-panel").hidden));
  $("app").classList.toggle("with-panel", !$("docs-panel").hidden || !$("sources-panel").hidden);
}
