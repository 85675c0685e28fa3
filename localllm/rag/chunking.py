"""Token-aware chunking of documents for the index, with overlap and source locations.

Chunks are built from whole lines (a line longer than a chunk is split at word
boundaries), so every chunk keeps the writer's own text and knows its first and last line
(and page, for PDFs). Sizes are counted in the embedder's tokens: a chunk never exceeds
what the embedder reads, so nothing is cut when it is embedded.
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from .._errors import ConfigError


@dataclass(frozen=True)
class Chunk:
    text: str
    line_start: int
    line_end: int
    page: int | None = None


@dataclass(frozen=True)
class _Unit:
    line: int
    text: str
    tokens: int


def chunk_file(path: Path, data: bytes, tokenizer: Any, size: int, overlap: int
               ) -> list[Chunk]:
    """Chunks of a .txt/.md file (lines), an .html page (its text, lines) or a .pdf (pages,
    then lines). ``path`` names the file for its kind and for messages; it is not read."""
    if path.suffix.lower() == ".pdf":
        out: list[Chunk] = []
        for number, page_text in enumerate(_pdf_pages(path, data), 1):
            out.extend(chunk_text(page_text, tokenizer, size, overlap, page=number))
        return out
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8 "
                          "before indexing") from None
    if path.suffix.lower() in (".html", ".htm"):
        text = html_text(text)
    return chunk_text(text, tokenizer, size, overlap)


class _TextOfHTML(HTMLParser):
    """The readable text of a page: block elements start new lines; scripts, styles and
    other non-content elements are dropped; entities are decoded."""

    BLOCKS = frozenset({"address", "article", "aside", "blockquote", "br", "dd", "div", "dl",
                        "dt", "figcaption", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
                        "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
                        "table", "td", "th", "tr", "ul"})
    HIDDEN = frozenset({"script", "style", "template", "noscript", "head", "svg"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_text(page: str) -> str:
    """The text of an HTML page, one line per block, runs of spaces collapsed."""
    parser = _TextOfHTML()
    parser.feed(page)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def chunk_text(text: str, tokenizer: Any, size: int, overlap: int, *,
               page: int | None = None) -> list[Chunk]:
    """Greedy chunks of at most ``size`` tokens; each new chunk starts with the previous
    chunk's last lines, up to ``overlap`` tokens, so a fact split across a boundary is
    whole in one of them."""
    units = _units(text, tokenizer, size)
    chunks: list[Chunk] = []
    current: list[_Unit] = []
    used = 0
    fresh = False  # whether ``current`` holds a unit not yet in an emitted chunk
    for unit in units:
        if current and used + unit.tokens > size:
            chunks.append(_emit(current, page))
            carried: list[_Unit] = []
            carry = 0
            for previous in reversed(current):
                if carry + previous.tokens > overlap or carry + previous.tokens + unit.tokens \
                        > size:
                    break
                carried.insert(0, previous)
                carry += previous.tokens
            current, used, fresh = carried, carry, False
        current.append(unit)
        used += unit.tokens
        fresh = fresh or bool(unit.text.strip())
    if current and fresh:
        chunks.append(_emit(current, page))
    return [c for c in chunks if c.text.strip()]


def _emit(units: list[_Unit], page: int | None) -> Chunk:
    return Chunk("\n".join(u.text for u in units).strip("\n"), units[0].line,
                 units[-1].line, page)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special=False, parse_special=False)) + 1


def _units(text: str, tokenizer: Any, size: int) -> list[_Unit]:
    """Lines with their token counts; lines over ``size`` split at spaces (a word over
    ``size`` at characters)."""
    units = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            units.append(_Unit(number, "", 0))
            continue
        n = _count(tokenizer, line)
        if n <= size:
            units.append(_Unit(number, line, n))
            continue
        piece, piece_n = "", 0
        for word in _words(line, tokenizer, size):
            w = _count(tokenizer, word)
            if piece and piece_n + w > size:
                units.append(_Unit(number, piece, piece_n))
                piece, piece_n = "", 0
            piece = f"{piece} {word}" if piece else word
            piece_n += w
        if piece:
            units.append(_Unit(number, piece, piece_n))
    return units


def _words(line: str, tokenizer: Any, size: int) -> list[str]:
    out = []
    for word in line.split():
        while _count(tokenizer, word) > size:  # a run without spaces (a URL, base64)
            cut = max(1, len(word) * size // (2 * _count(tokenizer, word)))
            out.append(word[:cut])
            word = word[cut:]
        out.append(word)
    return out


def _pdf_pages(path: Path, data: bytes) -> list[str]:
    try:
        import io

        import pypdf
    except ImportError as exc:
        raise ConfigError("indexing PDFs needs pypdf: pip install 'localllm[rag]'") from exc
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        return [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds on damaged files
        raise ConfigError(f"{path} is not a readable PDF: {exc}") from exc
