// The Documents panel (collections, uploads, indexing progress) and the Sources panel (the
// chunks an answer was given, with their scores, and those left out of the context).
import { $, api, button, el, guard, json, patchCurrent, setPanel, showError, state } from "./core.js";

const POLL_MS = 500;

export async function loadLimits() {
  state.limits = await json("/ui/api/limits");
  $("upload-input").accept = state.limits.kinds.join(",");
  $("upload-hint").textContent = `Accepted: ${state.limits.kinds.join(" ")}, up to `
    + `${formatBytes(state.limits.max_upload_bytes)} each.`;
}

function formatBytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(n % (1 << 20) ? 1 : 0)} MB`;
  return n >= 1024 ? `${Math.round(n / 1024)} KB` : `${n} bytes`;
}

export async function loadCollections() {
  state.collections = (await json("/ui/api/collections")).data || [];
  renderCollections();
  renderCollectionSelect();
}

export function renderCollectionSelect() {
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
export async function uploadFiles(event) {
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

export async function createCollection(event) {
  event.preventDefault();
  const name = $("collection-name").value.trim();
  if (!name) return;
  const created = await json("/ui/api/collections", { method: "POST", body: { name } });
  $("collection-name").value = "";
  await loadCollections();
  await openCollection(created.id);
}

// ---------------------------------------------------------------- sources

export function showSources(msg, open) {
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
export const openChunk = guard(async (s, msg) => {
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
