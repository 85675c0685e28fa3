"""The chat page in a real browser: Debian's chromium driven by Playwright against the real
server (in this process, on 127.0.0.1, started and stopped here) and the real default model.

What a person does on the page is what these tests do: type, press Enter, click Stop,
reload, rename, delete, upload documents, open a source. Where the model's wording would
decide the outcome (a 135M model may not write ``[1]``), the tests assert what the page
shows regardless of wording (sources, scores, chunks), and the hostile-output test uses a
scripted model, since no real model can be made to write an exact payload.

Screenshots go to build/test-artifacts/chat-page/.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright
from server_harness import APPS, served_in_thread

import localllm

pytestmark = pytest.mark.real_model

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts" / "chat-page"
UPLOAD_LIMIT = 64 * 1024
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
ZORBLAT = ("# The Zorblat bridge\n\nThe Zorblat bridge was built in 1873 by Ada Quill. It "
           "crosses the river Venn with seven stone arches and carries one lane of traffic.\n")
GARDEN = ("Tomatoes grow best in warm soil with plenty of sun. Water them deeply twice a "
          "week and stake the plants once they reach knee height.\n")
# many chunks on an unrelated subject: with a large max_tokens they cannot all fit
PASTA = "\n\n".join(
    f"Step {i}: bring a large pot of salted water to a rolling boil, add the pasta shape "
    f"number {i}, stir so it does not stick, taste it a minute before the time on the "
    f"packet, keep a cup of the cooking water for the sauce, drain and toss it with the "
    f"sauce of the day, which for day {i} is tomato, garlic, olive oil and basil."
    for i in range(1, 25))


# ------------------------------------------------------------------ fixtures, helpers

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the chat page tests drive Debian's chromium, which "
        "`make browser` installs (`make unit` and `make test` run it)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server (and one model load) for the module's tests without API keys."""
    data = tmp_path_factory.mktemp("chat-page-data")
    with served_in_thread([localllm.DEFAULT_MODEL], data_dir=str(data), api_keys=(),
                          context_length=2048, threads=2,
                          max_upload_bytes=UPLOAD_LIMIT) as base:
        yield base


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """A fresh browser context (its own sessionStorage) on the page, desktop-sized; fails
    the test if the page broke its own CSP or threw."""
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    problems: list[str] = []
    opened.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    opened.on("console", lambda msg: problems.append(msg.text)
              if msg.type == "error" and "Content Security Policy" in msg.text else None)
    opened.goto(server)
    ready(opened)
    yield opened
    context.close()
    assert not problems, problems


def ready(page: Page) -> None:
    """Until the page has loaded its lists and opened its conversation."""
    expect(page.locator("#app[data-ready]")).to_be_attached()


def reload(page: Page) -> None:
    page.reload()
    ready(page)


def open_settings(page: Page) -> None:
    if not page.locator("#settings").evaluate("d => d.open"):
        page.locator("#settings > summary").click()


def set_params(page: Page, *, max_tokens: int | str = "", temperature: str = "",
               seed: str = "") -> None:
    open_settings(page)
    page.get_by_test_id("max-tokens").fill(str(max_tokens))
    page.get_by_test_id("temperature").fill(temperature)
    page.get_by_test_id("seed").fill(seed)


def messages(page: Page, role: str | None = None) -> Locator:
    selector = '[data-testid="message"]' + (f'[data-role="{role}"]' if role else "")
    return page.locator(f"#messages {selector}")


def send(page: Page, text: str) -> None:
    page.get_by_test_id("composer").fill(text)
    page.get_by_test_id("composer").press("Enter")


def wait_answer(page: Page, timeout_ms: int = 60_000) -> str:
    """The last answer's stats, once it has finished."""
    stats = messages(page, "assistant").last.get_by_test_id("message-stats")
    expect(stats).to_contain_text("finish:", timeout=timeout_ms)
    return str(stats.inner_text())


def active_sequences(base: str) -> list[int]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return [int(v) for v in re.findall(r"^localllm_active_sequences\{[^}]*\} (\d+)$", text,
                                       re.MULTILINE)]


def upload_and_wait(page: Page, files: list[Path], ready: int) -> str:
    """Creates nothing; uploads into the collection open in the Documents panel and waits
    until ``ready`` documents are indexed. Returns that collection's id."""
    page.get_by_test_id("upload-input").set_input_files([str(f) for f in files])
    expect(page.locator('[data-testid="document-item"][data-state="ready"]')).to_have_count(
        ready, timeout=120_000)
    return str(page.locator(".collection-item.current").get_attribute("data-id"))


def create_collection(page: Page, name: str) -> None:
    if page.locator("#docs-panel").is_hidden():
        page.get_by_test_id("documents-toggle").click()
    page.get_by_test_id("collection-name").fill(name)
    page.get_by_test_id("collection-create").click()
    expect(page.locator(".collection-item.current")).to_contain_text(name)


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # the drawer's slide after a viewport change
    page.screenshot(path=str(ARTIFACTS / name))


# ------------------------------------------------------------------ chat, stop, conversations

def test_streams_stops_and_keeps_conversations(page: Page, server: str,
                                               tmp_path: Path) -> None:
    set_params(page, max_tokens=40)
    # every change of the answer's text, as the browser saw it
    page.evaluate("""() => {
      window.__lengths = [];
      new MutationObserver(() => {
        const answers = document.querySelectorAll('#messages [data-role="assistant"]');
        const last = answers[answers.length - 1];
        const text = last ? last.querySelector('[data-testid="message-content"]').textContent : '';
        if (text && window.__lengths[window.__lengths.length - 1] !== text.length)
          window.__lengths.push(text.length);
      }).observe(document.getElementById('messages'),
                 {childList: true, subtree: true, characterData: true});
    }""")
    send(page, "Write a short poem about the sea.")
    expect(page.locator("#messages")).to_have_attribute("aria-busy", "true")
    stats = wait_answer(page)
    assert re.search(r"finish: (stop|length)", stats), stats
    assert "tokens" in stats and "TTFT" in stats, stats
    lengths = page.evaluate("window.__lengths")
    assert len(lengths) >= 2 and lengths == sorted(lengths), lengths
    expect(page.locator("#messages")).to_have_attribute("aria-busy", "false")
    meter = page.get_by_test_id("context-meter")
    expect(meter).not_to_have_attribute("data-used", "0")
    assert meter.get_attribute("data-limit") == "2048"
    shot(page, "chat.png")
    page.set_viewport_size(PHONE)
    shot(page, "chat-phone.png")
    page.locator("#drawer-toggle").click()
    expect(page.locator("#sidebar")).to_be_in_viewport()
    shot(page, "chat-phone-drawer.png")
    page.locator("#scrim").click(position={"x": PHONE["width"] - 20, "y": 400})
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.set_viewport_size(DESKTOP)
    # the theme follows the system until the toggle pins light, then dark
    html = page.locator("html")
    page.locator("#theme-toggle").click()
    expect(html).to_have_attribute("data-theme", "light")
    page.locator("#theme-toggle").click()
    expect(html).to_have_attribute("data-theme", "dark")
    shot(page, "chat-dark.png")
    expect(html).to_have_attribute("data-scheme", "dark")
    page.locator("#theme-toggle").click()
    expect(html).not_to_have_attribute("data-theme", re.compile("."))
    for scheme in ("dark", "light"):  # back on "system", the page follows the system's change
        page.emulate_media(color_scheme=scheme)
        expect(html).to_have_attribute("data-scheme", scheme)

    # a long answer, stopped mid-stream: the server must cancel it
    set_params(page, max_tokens=400)
    send(page, "Tell me a long story about a dragon and a knight.")
    answer = messages(page, "assistant").nth(1).get_by_test_id("message-content")
    expect(answer).to_have_text(re.compile(r"\S{3}.*\S{3}", re.S), timeout=60_000)
    page.get_by_test_id("stop").click()
    stats = wait_answer(page, 10_000)
    assert "finish: stopped" in stats, stats
    deadline = time.monotonic() + 10
    while active_sequences(server) != [0] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_sequences(server) == [0], "the stopped request still runs on the server"
    stopped_text = str(answer.text_content())

    # reload: the list and the open conversation come back, as saved after each turn
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(1)
    conversation_id = str(items.first.get_attribute("data-id"))
    expect(items.first).to_contain_text("Write a short poem about the sea.")
    reload(page)
    expect(messages(page)).to_have_count(4)
    expect(messages(page, "assistant").nth(1).get_by_test_id("message-content")).to_have_text(
        stopped_text)
    expect(messages(page, "assistant").nth(1).get_by_test_id("message-stats")).to_contain_text(
        "stopped")

    # rename inline; the new title survives a reload
    page.get_by_test_id("conversation-rename").click()
    page.get_by_test_id("conversation-title-input").fill("Sea and dragons")
    page.get_by_test_id("conversation-title-input").press("Enter")
    expect(items.first).to_contain_text("Sea and dragons")
    reload(page)
    expect(page.get_by_test_id("conversation-item").first).to_contain_text("Sea and dragons")

    # export all as a download, import it back as a second conversation
    with page.expect_download() as download_info:
        page.get_by_test_id("export-all").click()
    exported = tmp_path / "export.json"
    download_info.value.save_as(exported)
    envelope = json.loads(exported.read_text())
    assert envelope["format"] == "localllm-conversations"
    assert [c["title"] for c in envelope["conversations"]] == ["Sea and dragons"]
    page.get_by_test_id("import-file").set_input_files(str(exported))
    expect(page.get_by_test_id("conversation-item")).to_have_count(2)
    with page.expect_download() as download_info:
        page.get_by_test_id("export-one").first.click()
    one = json.loads(Path(download_info.value.path()).read_text())
    assert one["format"] == "localllm-conversations" and len(one["conversations"]) == 1
    assert len(one["conversations"][0]["messages"]) == 4

    # delete asks inside the page first; gone after a reload
    for _ in range(2):
        item = page.get_by_test_id("conversation-item").first
        item.get_by_test_id("conversation-delete").click()
        item.get_by_test_id("conversation-delete-confirm").click()
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)
    reload(page)
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)
    assert httpx.get(f"{server}/ui/api/conversations/{conversation_id}",
                     timeout=10).status_code == 404


def test_edit_regenerate_and_context_never_cut_silently(page: Page, server: str) -> None:
    set_params(page, max_tokens=12)
    composer = page.get_by_test_id("composer")
    composer.fill("line one")
    composer.press("Shift+Enter")
    composer.press_sequentially("line two")
    expect(composer).to_have_value("line one\nline two")
    expect(messages(page)).to_have_count(0)
    send(page, "Hi")
    wait_answer(page)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = messages(page, "assistant").last.get_by_test_id("copy")
    copy.click()
    expect(copy).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip(), "the answer was not copied"
    messages(page, "assistant").last.get_by_test_id("regenerate").click()
    wait_answer(page)
    expect(messages(page)).to_have_count(2)

    # edit the last message: it comes back into the composer, its answer goes
    messages(page, "user").last.get_by_test_id("edit-last").click()
    expect(page.get_by_test_id("composer")).to_have_value("Hi")
    expect(messages(page)).to_have_count(0)
    send(page, "Hello there")
    wait_answer(page)
    send(page, "Name a colour.")
    wait_answer(page)
    expect(messages(page)).to_have_count(4)
    expect(messages(page, "user").first.get_by_test_id("message-content")).to_have_text(
        "Hello there")

    # the meter counts the conversation and the draft as the server does
    draft = "And another one?"
    page.get_by_test_id("composer").fill(draft)
    conversation = page.locator(".conversation-item.current").get_attribute("data-id")
    deadline = time.monotonic() + 10  # the page saves right after the answer ends
    while True:
        stored = httpx.get(f"{server}/ui/api/conversations/{conversation}", timeout=10).json()
        if len(stored["messages"]) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    chat = [{"role": m["role"], "content": m["content"]} for m in stored["messages"]]
    assert len(chat) == 4, chat
    counted = httpx.post(f"{server}/tokenize", timeout=30, json={
        "model": page.get_by_test_id("model-select").input_value(),
        "messages": [*chat, {"role": "user", "content": draft}]}).json()
    meter = page.get_by_test_id("context-meter")
    expect(meter).to_have_attribute("data-used", str(counted["n_tokens"]))
    expect(meter).to_have_attribute("data-limit", str(counted["context_length"]))

    # ask for an answer that cannot fit: a warning, sending refused, nothing dropped
    set_params(page, max_tokens=counted["context_length"] - counted["n_tokens"] + 4)
    warning = page.get_by_test_id("context-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("does not fit")
    page.get_by_test_id("composer").press("Enter")
    page.wait_for_timeout(1000)
    expect(messages(page)).to_have_count(4)
    expect(page.get_by_test_id("composer")).to_have_value("And another one?")
    page.get_by_test_id("drop-oldest").click()
    expect(warning).to_be_hidden()
    expect(messages(page)).to_have_count(2)
    expect(messages(page, "user").first.get_by_test_id("message-content")).to_have_text(
        "Name a colour.")


def test_thinking_tool_calls_and_stream_errors(page: Page) -> None:
    """Thinking and tool calls arrive in pieces, as OpenAI's stream sends them. The default
    model does neither on request, so the server's reply is replaced in the browser
    (page.route) by a scripted stream; everything after the network is the page's own."""
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Let me "}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "think."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1",
            "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"city": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 7}},
    ]
    script = {"body": "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"}
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=script["body"]))
    send(page, "What is the weather in Paris?")
    stats = wait_answer(page)
    assert "7 tokens" in stats and "finish: tool_calls" in stats, stats
    answer = messages(page, "assistant").last
    thinking = answer.locator("details.thinking")
    expect(thinking.locator("summary")).to_have_text("Thinking")
    assert thinking.evaluate("d => d.open") is False  # folded
    expect(thinking).to_contain_text("Let me think.")
    expect(answer.locator(".tool-name")).to_contain_text("get_weather")
    expect(answer.locator(".tool-call pre > code")).to_have_text('{"city": "Paris"}')

    # an error inside the stream: shown on the answer and in the banner, never a broken page
    script["body"] = ('data: {"choices": [{"index": 0, "delta": {"content": "Par"}}]}\n\n'
                      'data: {"error": {"message": "the model fell over", "type": "x"}}\n\n')
    answer.get_by_test_id("regenerate").click()
    stats = wait_answer(page)
    assert "finish: error" in stats, stats
    expect(page.get_by_test_id("error-banner")).to_contain_text("the model fell over")
    expect(messages(page, "assistant").last).to_contain_text("the model fell over")
    page.locator("#error-close").click()
    expect(page.get_by_test_id("error-banner")).to_be_hidden()


# ------------------------------------------------------------------ documents and sources

def test_documents_sources_and_left_out(page: Page, tmp_path: Path) -> None:
    files = {"zorblat.md": ZORBLAT, "garden.txt": GARDEN, "pasta.txt": PASTA,
             "virus.exe": "not a document"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "big.txt").write_text("x" * (UPLOAD_LIMIT + 1))
    create_collection(page, "facts")
    collection = upload_and_wait(
        page, [tmp_path / n for n in [*files, "latin1.txt", "big.txt"]], ready=3)
    # refused by the page before upload, or by the server: each shown next to its file
    refused = page.locator('[data-testid="document-item"][data-state="failed"]')
    expect(refused).to_have_count(3)
    expect(refused.filter(has_text="big.txt").get_by_test_id("document-error")).to_contain_text(
        "Too large")
    expect(refused.filter(has_text="virus.exe").get_by_test_id("document-error")).to_contain_text(
        "Not accepted")
    expect(refused.filter(has_text="latin1.txt").get_by_test_id("document-error")).to_contain_text(
        "UTF-8")
    shot(page, "documents.png")
    unnamed = page.evaluate("""() => [...document.querySelectorAll(
        'button, input, select, textarea, meter, progress')].filter((c) => {
          if (c.closest('[hidden]')) return false;
          const named = c.getAttribute('aria-label') || (c.labels && c.labels.length)
            || (c.tagName === 'BUTTON' && c.textContent.trim());
          return !named;
        }).map((c) => c.outerHTML.slice(0, 120))""")
    assert unnamed == [], f"controls without a label: {unnamed}"

    page.get_by_test_id("collection-select").select_option(collection)
    set_params(page, max_tokens=32)
    send(page, "Who built the Zorblat bridge?")
    wait_answer(page)
    answer = messages(page, "assistant").last
    answer.get_by_test_id("show-sources").click()
    panel = page.get_by_test_id("sources-panel")
    expect(panel).to_be_visible()
    shown = panel.locator('[data-testid="source-item"]:not([data-left-out])')
    assert shown.count() >= 2
    scores = [float(re.search(r"score (-?[\d.]+)", t).group(1))  # type: ignore[union-attr]
              for t in shown.all_inner_texts()]
    best = shown.nth(scores.index(max(scores)))
    expect(best).to_contain_text("zorblat.md")
    best.click()
    expect(best).to_have_class(re.compile(r"\bactive\b"))
    opened = page.get_by_test_id("source-open")
    expect(opened).to_be_visible()
    expect(opened).to_contain_text("The Zorblat bridge was built in 1873 by Ada Quill.")
    expect(opened).to_contain_text("zorblat.md")
    citations = answer.get_by_test_id("citation")
    if citations.count():  # the model may cite: then each [n] opens its own chunk
        n = citations.first.get_attribute("data-n")
        citations.first.click()
        expect(panel.locator(f'[data-testid="source-item"][data-n="{n}"]')).to_have_class(
            re.compile(r"\bactive\b"))
    shot(page, "sources.png")
    page.set_viewport_size(PHONE)
    shot(page, "sources-phone.png")
    page.set_viewport_size(DESKTOP)

    # a large answer budget leaves room for few chunks: the rest is listed as left out
    page.get_by_test_id("new-conversation").click()
    page.get_by_test_id("collection-select").select_option(collection)
    set_params(page, max_tokens=1750)
    send(page, "How do I cook pasta?")
    left_out = panel.locator('[data-testid="source-item"][data-left-out="true"]')
    expect(left_out.first).to_be_visible(timeout=60_000)
    page.keyboard.press("Escape")  # stops the answer, as the Stop button does
    stats = wait_answer(page, 10_000)
    assert "finish: stopped" in stats, stats
    expect(panel).to_contain_text("did not fit the context")
    assert left_out.count() >= 1
    assert left_out.count() + shown.count() >= 4

    # a document, then the collection (after an in-page confirm), deleted
    page.get_by_test_id("documents-toggle").click()
    garden = page.locator('[data-testid="document-item"]', has_text="garden.txt")
    garden.get_by_test_id("document-delete").click()
    expect(garden).to_have_count(0)
    expect(page.locator('[data-testid="document-item"][data-state="ready"]')).to_have_count(2)
    item = page.get_by_test_id("collection-item")
    item.get_by_test_id("collection-delete").click()
    item.get_by_test_id("collection-delete-confirm").click()
    expect(page.get_by_test_id("collection-item")).to_have_count(0)
    expect(page.get_by_test_id("collection-select")).to_have_value("")


# ------------------------------------------------------------------ hostile output

PAYLOAD = (
    "# Report\n\n"
    'Hello <img src=x onerror="window.__pwned=1"> there '
    "<script>window.__pwned=2</script> end.\n\n"
    "[click](javascript:window.__pwned=3) and [ok](https://example.com/) "
    "<!-- comment --> and ![pic](data:image/png;base64,AAAA)\n\n"
    "As the source says [1].\n\n"
    "```python\nprint('<b>bold</b>')\n```\n"
)


def test_hostile_output_stays_text(page: Page, server: str, tmp_path: Path) -> None:
    """Model output is untrusted. A real model cannot be made to write an exact payload,
    so a scripted model (``FakeModel``, one token per byte, repeating its reply until
    ``max_tokens``) stands in for it, registered in the running server's registry."""
    from localllm.server._registry import ServedModel
    from localllm.testing import FakeModel

    registry = APPS[server].state.localllm.registry
    served = ServedModel("hostile", "fake", 0)
    served.model = FakeModel(PAYLOAD, context_length=4096)
    registry.models["hostile"] = served
    reload(page)  # the model list now has it
    page.get_by_test_id("model-select").select_option("hostile")

    (tmp_path / "source.txt").write_text("The hostile test's only source: a harmless note.\n")
    create_collection(page, "hostile-docs")
    collection = upload_and_wait(page, [tmp_path / "source.txt"], ready=1)
    page.get_by_test_id("collection-select").select_option(collection)
    set_params(page, max_tokens=len(PAYLOAD.encode()))  # no temperature or seed: fake
    send(page, "Report, please.")
    wait_answer(page)

    content = messages(page, "assistant").last.get_by_test_id("message-content")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("#messages img, #messages script, #messages iframe").count() == 0
    assert page.locator('a[href^="javascript:"], a[href^="data:"]').count() == 0
    comments = page.evaluate("""() => {
      const walker = document.createTreeWalker(document.getElementById('messages'),
                                               NodeFilter.SHOW_COMMENT);
      let n = 0;
      while (walker.nextNode()) n += 1;
      return n;
    }""")
    assert comments == 0
    text = content.inner_text()
    for literal in ("<script>window.__pwned=2</script>", '<img src=x onerror="window.__pwned=1">',
                    "<!-- comment -->", "[click](javascript:window.__pwned=3)"):
        assert literal in text, (literal, text)
    safe = content.locator('a[href="https://example.com/"]')
    expect(safe).to_have_text("ok")
    assert "noopener" in str(safe.get_attribute("rel"))
    assert safe.get_attribute("target") == "_blank"
    expect(content.locator("pre > code")).to_have_text("print('<b>bold</b>')")
    expect(content.locator(".code-lang")).to_have_text("python")
    expect(content.locator("h3, h4, h5, h6, h1, h2").first).to_have_text("Report")
    shot(page, "hostile.png")

    # the citation opens its chunk in the Sources panel
    citation = content.get_by_test_id("citation")
    expect(citation).to_have_count(1)
    assert citation.get_attribute("data-n") == "1"
    citation.click()
    expect(page.get_by_test_id("source-open")).to_contain_text("a harmless note")
    expect(page.locator('[data-testid="source-item"][data-n="1"]')).to_have_class(
        re.compile(r"\bactive\b"))

    csp = httpx.get(f"{server}/", headers={"Accept": "text/html"}, timeout=10).headers[
        "content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp, csp
    for name in ("app.js", "markdown.js", "app.css"):
        assert httpx.get(f"{server}/ui/{name}", timeout=10).status_code == 200


# ------------------------------------------------------------------ API keys

def test_keys_see_only_their_own(browser: Browser, tmp_path: Path) -> None:
    with served_in_thread([localllm.DEFAULT_MODEL], data_dir=str(tmp_path),
                          api_keys=["key-a", "key-b"], context_length=2048,
                          threads=2) as base:
        def login(key: str) -> Page:
            context = browser.new_context(viewport=DESKTOP)
            opened = context.new_page()
            opened.set_default_timeout(30_000)
            opened.goto(base)
            key_input = opened.get_by_test_id("api-key-input")
            expect(key_input).to_be_visible()
            assert key_input.get_attribute("type") == "password"
            expect(opened.locator("#app")).to_be_hidden()
            if key == "key-a":
                shot(opened, "api-key.png")
            key_input.fill(key)
            opened.get_by_test_id("api-key-submit").click()
            ready(opened)
            expect(opened.get_by_test_id("composer")).to_be_visible()
            return opened

        a = login("key-a")
        set_params(a, max_tokens=8)
        send(a, "Hello")
        wait_answer(a)
        create_collection(a, "a's documents")
        conversation = str(a.get_by_test_id("conversation-item").first.get_attribute("data-id"))
        collection = str(a.get_by_test_id("collection-item").first.get_attribute("data-id"))
        stored = a.evaluate("() => [JSON.stringify(localStorage), document.cookie]")
        assert "key-a" not in stored[0] and "key-a" not in stored[1]

        # a key the server refuses (here: one changed behind the page) brings the form back
        a.evaluate("sessionStorage.setItem('localllm.key', 'wrong')")
        a.reload()
        expect(a.get_by_test_id("api-key-input")).to_be_visible()
        expect(a.locator("#key-error")).to_be_visible()
        assert a.evaluate("sessionStorage.getItem('localllm.key')") is None

        b = login("key-b")
        expect(b.get_by_test_id("conversation-item")).to_have_count(0)
        b.get_by_test_id("documents-toggle").click()
        expect(b.get_by_test_id("collection-item")).to_have_count(0)
        expect(b.get_by_test_id("collection-select").locator("option")).to_have_count(1)

        def get(key: str, path: str) -> int:
            return httpx.get(f"{base}{path}", timeout=10,
                             headers={"Authorization": f"Bearer {key}"}).status_code

        for path in (f"/ui/api/conversations/{conversation}",
                     f"/ui/api/collections/{collection}"):
            assert get("key-b", path) == 404, path
            assert get("key-a", path) == 200, path
        a.context.close()
        b.context.close()
