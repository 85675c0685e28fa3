// Markdown → DOM for model output, which is untrusted: every node is made with
// createElement and every piece of text goes in through textContent, so nothing the model
// writes is ever parsed as HTML. Raw HTML and comments in the output stay literal text.
// A deliberately small subset: what chat answers use, nothing that needs a real parser.

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

/** The absolute URL if it may be a link (http, https, mailto), else null. Relative URLs
 * fail to parse without a base, which is what we want: they would resolve against this
 * server, where the model has no business pointing. */
export function safeUrl(raw) {
  let url;
  try {
    url = new URL(String(raw).trim());
  } catch {
    return null;
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function link(href, label) {
  const a = el("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  if (typeof label === "string") a.textContent = label;
  else a.append(...label);
  return a;
}

/** Copies text; where the clipboard API is refused (plain http on another host, no
 * permission) the text is selected instead so Ctrl+C still works. Resolves to true when
 * copied. */
export async function copyText(text, node) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (node) {
      const range = document.createRange();
      range.selectNodeContents(node);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
    return false;
  }
}

function flash(button, text) {
  const before = button.textContent;
  button.textContent = text;
  setTimeout(() => { button.textContent = before; }, 1200);
}

// ---------------------------------------------------------------- blocks

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;

/**
 * Renders `text` into a DocumentFragment.
 * options.citations: a Set of the source numbers that exist; only those [n] become
 *   citation buttons (a model may write [7] with five sources: that stays text).
 * options.onCite(n): called when a citation is clicked.
 */
export function renderMarkdown(text, options = {}) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n"), fragment, options, 0);
  return fragment;
}

function renderBlocks(lines, parent, options, depth) {
  let i = 0;
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) {
      const p = el("p");
      renderInline(paragraph.join("\n"), p, options);
      parent.append(p);
      paragraph = [];
    }
  };
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      flush();
      const fence = m[1];
      const body = [];
      i += 1;
      // an unclosed fence runs to the end: while streaming, the closing one has not come yet
      while (i < lines.length && !lines[i].trimStart().startsWith(fence)) body.push(lines[i++]);
      i += 1;
      parent.append(codeBlock(body.join("\n"), m[2]));
    } else if (!line.trim()) {
      flush();
      i += 1;
    } else if ((m = HEADING.exec(line))) {
      flush();
      const h = el(`h${Math.min(6, m[1].length + 2)}`, "md-heading");
      renderInline(m[2], h, options);
      parent.append(h);
      i += 1;
    } else if (RULE.test(line)) {
      flush();
      parent.append(el("hr"));
      i += 1;
    } else if (QUOTE.test(line) && depth < 8) {
      flush();
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { inner.push(m[1]); i += 1; }
      const quote = el("blockquote");
      renderBlocks(inner, quote, options, depth + 1);
      parent.append(quote);
    } else if ((m = ITEM.exec(line)) && depth < 8) {
      flush();
      i = renderList(lines, i, parent, options, depth);
    } else {
      paragraph.push(line);
      i += 1;
    }
  }
  flush();
}

function renderList(lines, start, parent, options, depth) {
  const first = ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let i = start;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = indent + m[2].length + 1;
    const body = [m[3]];
    i += 1;
    // continuation: indented lines (nested lists, more paragraphs), or a lazy line of text
    while (i < lines.length) {
      const next = lines[i];
      const nextItem = ITEM.exec(next);
      if (!next.trim()) {
        const after = lines[i + 1];
        if (after !== undefined && after.trim() && leading(after) >= contentIndent) {
          body.push("");
          i += 1;
          continue;
        }
        break;
      }
      if (leading(next) >= contentIndent) body.push(next.slice(contentIndent));
      else if (nextItem || FENCE.test(next) || HEADING.test(next) || QUOTE.test(next)) break;
      else body.push(next.trim());
      i += 1;
    }
    const li = el("li");
    const simple = body.length === 1 || body.every((l) => l.trim() && !ITEM.test(l)
      && !FENCE.test(l) && !QUOTE.test(l) && !HEADING.test(l));
    if (simple) renderInline(body.join("\n"), li, options);
    else renderBlocks(body, li, options, depth + 1);
    list.append(li);
    // a blank line between items of the same list keeps the list going
    if (i < lines.length && !lines[i].trim() && i + 1 < lines.length) {
      const again = ITEM.exec(lines[i + 1]);
      if (again && again[1].length === indent && /\d/.test(again[2]) === ordered) i += 1;
    }
  }
  parent.append(list);
  return i;
}

function leading(line) {
  return line.length - line.trimStart().length;
}

function codeBlock(code, language) {
  const wrap = el("div", "code-block");
  const head = el("div", "code-head");
  const lang = language.replace(/[^\w+#.-]/g, "").slice(0, 32);
  head.append(el("span", "code-lang", lang || "text"));
  const copy = el("button", "code-copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", `Copy ${lang || "code"}`);
  const pre = el("pre");
  const codeEl = el("code", null, code);
  if (lang) codeEl.dataset.lang = lang;
  pre.append(codeEl);
  copy.addEventListener("click", async () => {
    flash(copy, (await copyText(code, codeEl)) ? "Copied" : "Selected");
  });
  wrap.append(head, pre);
  head.append(copy);
  return wrap;
}

// ---------------------------------------------------------------- inline

const BARE_URL = /^(https?:\/\/|mailto:)[^\s<>"]+/i;
const AUTOLINK = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i;
const CITATION = /^\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]/;

function renderInline(text, parent, options) {
  let buffer = "";
  const out = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const rest = text.slice(i);
    let m;
    if (c === "\\" && i + 1 < text.length && /[\\`*_{}[\]()#+\-.!~<>|]/.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
    } else if (c === "\n") {
      out();
      parent.append(el("br"));
      i += 1;
    } else if (c === "`") {
      const run = /^`+/.exec(rest)[0];
      const end = text.indexOf(run, i + run.length);
      if (end < 0) { buffer += run; i += run.length; continue; }
      out();
      parent.append(el("code", "md-code", text.slice(i + run.length, end).replace(/\n/g, " ")));
      i = end + run.length;
    } else if (c === "!" && text[i + 1] === "[" && (m = linkAt(text, i + 1))) {
      // images become links: an <img> would fetch from wherever the model points
      out();
      const href = safeUrl(m.url);
      const label = m.label || m.url;
      if (href) parent.append(link(href, `image: ${label}`));
      else buffer += text.slice(i, m.end);
      i = m.end;
    } else if (c === "[" && (m = CITATION.exec(rest)) && citable(m[1], options)) {
      out();
      m[1].split(",").forEach((n, k) => {
        if (k) parent.append(document.createTextNode(" "));
        parent.append(citation(parseInt(n, 10), options));
      });
      i += m[0].length;
    } else if (c === "[" && !options.noLinks && (m = linkAt(text, i))) {
      const href = safeUrl(m.url);
      if (href) {
        out();
        const inner = document.createDocumentFragment();
        renderInline(m.label, inner, { ...options, noLinks: true });
        parent.append(link(href, inner.childNodes.length ? [...inner.childNodes] : m.url));
      } else {
        buffer += text.slice(i, m.end);
      }
      i = m.end;
    } else if (c === "<" && (m = AUTOLINK.exec(rest)) && safeUrl(m[1]) && !options.noLinks) {
      out();
      parent.append(link(safeUrl(m[1]), m[1]));
      i += m[0].length;
    } else if ((c === "h" || c === "H" || c === "m" || c === "M") && !options.noLinks
               && !/\w/.test(text[i - 1] || "") && (m = BARE_URL.exec(rest))) {
      const url = trimUrl(m[0]);
      const href = safeUrl(url);
      if (href) {
        out();
        parent.append(link(href, url));
      } else {
        buffer += url;
      }
      i += url.length;
    } else if ((c === "*" || c === "_" || c === "~") && (m = emphasisAt(text, i))) {
      out();
      const node = el(m.tag);
      renderInline(m.inner, node, options);
      parent.append(node);
      i = m.end;
    } else {
      buffer += c;
      i += 1;
    }
  }
  out();
}

function citable(list, options) {
  const known = options.citations;
  return Boolean(known && known.size)
    && list.split(",").every((n) => known.has(parseInt(n, 10)));
}

function citation(n, options) {
  const button = el("button", "citation", `[${n}]`);
  button.type = "button";
  button.dataset.testid = "citation";
  button.dataset.n = String(n);
  button.setAttribute("aria-label", `Source ${n}`);
  button.addEventListener("click", () => options.onCite && options.onCite(n));
  return button;
}

/** `[label](url "title")` starting at `start`, brackets and parentheses balanced. */
function linkAt(text, start) {
  let depth = 0;
  let i = start;
  for (; i < text.length; i += 1) {
    if (text[i] === "\\") { i += 1; continue; }
    if (text[i] === "[") depth += 1;
    else if (text[i] === "]" && --depth === 0) break;
    else if (text[i] === "\n" && text[i + 1] === "\n") return null;
  }
  if (i >= text.length || text[i + 1] !== "(") return null;
  const label = text.slice(start + 1, i);
  let j = i + 2;
  depth = 1;
  for (; j < text.length; j += 1) {
    if (text[j] === "(") depth += 1;
    else if (text[j] === ")" && --depth === 0) break;
    else if (text[j] === "\n") return null;
  }
  if (j >= text.length) return null;
  let url = text.slice(i + 2, j).trim();
  const titled = /^(\S+)\s+["'(].*["')]$/.exec(url);
  if (titled) url = titled[1];
  if (url.startsWith("<") && url.endsWith(">")) url = url.slice(1, -1);
  return { label, url, end: j + 1 };
}

/** A bare URL ends before trailing punctuation and before an unbalanced ")". */
function trimUrl(url) {
  let out = url.replace(/[.,;:!?'"*_]+$/, "");
  while (out.endsWith(")") && count(out, "(") < count(out, ")")) out = out.slice(0, -1);
  return out;
}

function count(text, ch) {
  return text.split(ch).length - 1;
}

function emphasisAt(text, i) {
  const c = text[i];
  if (c !== "~" && text.startsWith(c.repeat(3), i)) { // ***both***: bold around italic
    const end = text.indexOf(c.repeat(3), i + 3);
    if (end > i + 3 && !/\s/.test(text[i + 3]) && !/\s/.test(text[end - 1])) {
      return { tag: "strong", inner: text.slice(i + 2, end + 1), end: end + 3 };
    }
  }
  const double = text[i + 1] === c;
  if (c === "~" && !double) return null;
  const marker = double ? c + c : c;
  const after = text[i + marker.length];
  if (!after || /\s/.test(after)) return null;
  // `_` inside words (snake_case) is not emphasis
  if (c === "_" && /\w/.test(text[i - 1] || "")) return null;
  let from = i + marker.length;
  while (true) {
    const end = text.indexOf(marker, from);
    if (end < 0) return null;
    const before = text[end - 1];
    const next = text[end + marker.length];
    const closes = end > i + marker.length && !/\s/.test(before)
      && !(c === "_" && /\w/.test(next || ""))
      && (double || next !== c);
    if (closes) {
      const tag = c === "~" ? "del" : double ? "strong" : "em";
      return { tag, inner: text.slice(i + marker.length, end), end: end + marker.length };
    }
    from = end + 1;
  }
}
