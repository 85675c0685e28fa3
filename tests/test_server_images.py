"""Images over the wire: each API's image shapes read into localllm's image parts, and
written back by the client side of each codec; then end to end, the official clients
against a server whose model has a (synthetic) vision projector.

The codec tests need no model. What they hold the codecs to: the image part a request
yields holds exactly the bytes sent; a request can never make the server read a file (a
path, a ``file:`` URL, localllm's own ``{"type": "image", "image": PATH}`` part are all
refused, and no file is opened); base64 that does not decode is a 400 naming the field;
and a message written by ``connect()``'s side of a codec reads back, on the server's side,
as the same bytes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from localllm import _types
from localllm._errors import ConfigError, RequestError
from localllm._types import Completion, ImagePart, Message, Timings, Usage
from localllm.core.request import GenerationRequest, build_request
from localllm.protocols import anthropic, ollama, openai, responses


def make_png(color: tuple[int, int, int] = (200, 30, 90), size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()


PNG = make_png()
B64 = base64.b64encode(PNG).decode()
DATA_URI = f"data:image/png;base64,{B64}"
URL = "https://example.com/cat.png"


@pytest.fixture(autouse=True)
def no_file_is_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every test here fails if localllm opens an image file: wire requests carry bytes."""
    opened: list[Any] = []

    def refuse(path: Any) -> bytes:
        opened.append(path)
        raise AssertionError(f"a wire request made localllm read the file {path}")

    monkeypatch.setattr(_types, "read_image_file", refuse)
    yield opened
    assert not opened


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A real image file on the server's disk that no request may reach."""
    path = tmp_path / "secret.png"
    path.write_bytes(make_png((1, 2, 3)))
    return path


def messages_of(call: Any) -> tuple[Message, ...]:
    request: GenerationRequest = call.requests[0]
    assert request.messages is not None
    return request.messages


def openai_chat(*content: Any) -> tuple[Message, ...]:
    return messages_of(openai.ChatCodec().parse(
        {"model": "m", "messages": [{"role": "user", "content": list(content)}]}))


def ollama_chat(content: Any = "What is it?", images: Any = None) -> tuple[Message, ...]:
    m: dict[str, Any] = {"role": "user", "content": content}
    if images is not None:
        m["images"] = images
    return messages_of(ollama.ChatCodec().parse({"model": "m", "messages": [m]}))


def anthropic_chat(*blocks: Any) -> tuple[Message, ...]:
    return messages_of(anthropic.MessagesCodec().parse(
        {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": list(blocks)}]}))


class MemoryStore:
    """The Responses store as the server's is: records go through JSON."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def load(self, response_id: str, caller: str) -> dict[str, Any] | None:
        row = self.rows.get(response_id)
        return json.loads(row) if row else None

    def save(self, response_id: str, caller: str, record: dict[str, Any]) -> None:
        self.rows[response_id] = json.dumps(record)


def responses_chat(*parts: Any, store: MemoryStore | None = None) -> tuple[Message, ...]:
    codec = responses.ResponsesCodec(store or MemoryStore())
    return messages_of(codec.parse(
        {"model": "m", "input": [{"role": "user", "content": list(parts)}]}))


def refused(read: Any, *args: Any, param: str | None = None, match: str | None = None
            ) -> RequestError:
    with pytest.raises(RequestError, match=match) as info:
        read(*args)
    if param is not None:
        assert info.value.param == param
    return info.value


IMAGE_BLOCK = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                           "data": B64}}


# ---------------------------------------------------------------- server side: the bytes
def test_openai_image_url_parts_hold_the_bytes_in_order() -> None:
    (m,) = openai_chat({"type": "text", "text": "Compare "},
                       {"type": "image_url", "image_url": {"url": DATA_URI, "detail": "low"}},
                       {"type": "text", "text": " with "},
                       {"type": "image_url", "image_url": URL})  # the bare-string form
    kinds = [type(p).__name__ for p in m.content]  # type: ignore[union-attr]
    assert kinds == ["TextPart", "ImagePart", "TextPart", "ImagePart"]
    assert m.images[0].data == PNG and m.images[1].url == URL and not m.images[1].data
    assert m.text == "Compare  with "


def test_ollama_images_come_before_the_text() -> None:
    other = make_png((0, 0, 255))
    (m,) = ollama_chat("What is it?", [B64, base64.b64encode(other).decode()])
    assert [p.data for p in m.images] == [PNG, other]
    assert isinstance(m.content, tuple) and m.content[-1] == _types.TextPart(text="What is it?")
    (alone,) = ollama_chat("", [B64])
    assert alone.content == (ImagePart(data=PNG),)
    # /api/generate: the images join the templated prompt's user turn
    gen = messages_of(ollama.GenerateCodec().parse({"model": "m", "prompt": "Describe it.",
                                                    "images": [B64], "system": "Be brief."}))
    assert gen[0].role == "system" and gen[1].images[0].data == PNG
    assert gen[1].text == "Describe it."


def test_ollama_generate_refuses_images_with_a_raw_prompt() -> None:
    refused(ollama.GenerateCodec().parse, {"model": "m", "prompt": "x", "raw": True,
                                           "images": [B64]},
            param="images", match="chat template")


def test_anthropic_image_blocks() -> None:
    (m,) = anthropic_chat(IMAGE_BLOCK, {"type": "text", "text": "What is it?"},
                          {"type": "image", "source": {"type": "url", "url": URL}})
    assert m.images[0].data == PNG and m.images[1].url == URL and m.text == "What is it?"
    refused(anthropic_chat, {"type": "image", "source": {"type": "file", "file_id": "f"}},
            param="messages.0.content.0.source.type", match="'file' is not supported")
    refused(anthropic_chat, {"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": B64}},
        param="messages.0.content.0.source.media_type")
    # images are a user's: an assistant turn cannot carry one
    with pytest.raises(RequestError, match="'image' block"):
        anthropic.read_messages(None, [{"role": "assistant", "content": [IMAGE_BLOCK]}])


def test_responses_input_image_parts() -> None:
    (m,) = responses_chat({"type": "input_text", "text": "What is it?"},
                          {"type": "input_image", "image_url": DATA_URI, "detail": "auto"},
                          {"type": "input_image", "image_url": URL, "detail": "high"})
    assert m.text == "What is it?" and m.images[0].data == PNG and m.images[1].url == URL
    err = refused(responses_chat, {"type": "input_image", "file_id": "file-123"},
                  param="input.0.content.0.file_id")
    assert "file ids are not supported" in str(err)


def test_responses_stores_an_image_turn_and_continues_it() -> None:
    """The stored history is JSON: an image part goes in as a data: URI and comes back as
    the same bytes when a later request names the response."""
    store = MemoryStore()
    codec = responses.ResponsesCodec(store)
    call = codec.parse({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": DATA_URI}]}]})
    done = Completion(text="A square.", token_ids=(1,), finish_reason="stop", seed=0,
                      usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
                      timings=Timings(load_s=0, time_to_first_token_s=0, prompt_s=0,
                                      generation_s=0, prompt_tokens_per_s=0,
                                      generation_tokens_per_s=0))
    first = codec.reply(call, [done], 0.0)
    again = messages_of(codec.parse({"model": "m", "previous_response_id": first["id"],
                                     "input": "And its colour?"}))
    assert [m.role for m in again] == ["user", "assistant", "user"]
    assert again[0].images[0].data == PNG and again[0].text == "What is it?"


# ---------------------------------------------------------------- server side: refusals
def test_a_request_never_names_a_file(secret: Path, no_file_is_read: list[Any]) -> None:
    path, uri = str(secret), secret.as_uri()
    for content in ([{"type": "image", "image": path}], [{"type": "image", "path": path}],
                    [{"type": "input_audio", "input_audio": {}}]):
        refused(openai_chat, *content, param="messages.0.content.0", match="content part")
    for url in (path, uri, "/etc/passwd", "file:///etc/passwd", "ftp://host/x.png"):
        err = refused(openai_chat, {"type": "image_url", "image_url": {"url": url}},
                      param="messages.0.content.0.image_url.url")
        assert "never reads a file" in str(err)
        refused(openai_chat, {"type": "image_url", "image_url": url},
                param="messages.0.content.0.image_url")
        refused(anthropic_chat, {"type": "image", "source": {"type": "url", "url": url}},
                param="messages.0.content.0.source.url")
        refused(responses_chat, {"type": "input_image", "image_url": url},
                param="input.0.content.0.image_url")
    # fields beside the URL are not read: a path there reaches nothing
    (m,) = openai_chat({"type": "image_url", "image_url": {"url": DATA_URI, "path": path},
                        "image": path, "path": path})
    assert m.images[0].data == PNG
    # Ollama's content is a string: a list of parts (any shape) is refused
    refused(ollama_chat, [{"type": "image", "image": path}], param="messages.0.content")
    # a path among Ollama's images is not base64
    refused(ollama_chat, "x", [path], param="messages.0.images.0", match="base64")
    assert not no_file_is_read


@pytest.mark.parametrize("bad", ["not base64!", "iVBORw0KGgo", "@@@@"])
def test_base64_that_does_not_decode_is_a_400_naming_the_field(bad: str) -> None:
    refused(openai_chat, {"type": "image_url",
                          "image_url": {"url": f"data:image/png;base64,{bad}"}},
            param="messages.0.content.0.image_url.url", match="base64")
    refused(ollama_chat, "x", [bad], param="messages.0.images.0", match="base64")
    refused(ollama.GenerateCodec().parse, {"model": "m", "prompt": "x", "images": [bad]},
            param="images.0", match="base64")
    refused(anthropic_chat, {"type": "image", "source": {"type": "base64",
                                                         "media_type": "image/png",
                                                         "data": bad}},
            param="messages.0.content.0.source.data", match="base64")
    refused(responses_chat, {"type": "input_image",
                             "image_url": f"data:image/png;base64,{bad}"},
            param="input.0.content.0.image_url", match="base64")


def test_other_malformed_images_are_400s() -> None:
    refused(openai_chat, {"type": "image_url", "image_url": "data:image/png,rawbytes"},
            param="messages.0.content.0.image_url", match="base64")
    refused(openai_chat, {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
            param="messages.0.content.0.image_url.url", match="no image")
    refused(openai_chat, {"type": "image_url", "image_url": {}},
            param="messages.0.content.0.image_url.url")
    refused(ollama_chat, "x", [""], param="messages.0.images.0", match="no image")
    refused(ollama_chat, "x", [7], param="messages.0.images.0", match="base64 text")
    refused(ollama_chat, "x", B64, param="messages.0.images", match="list")
    refused(anthropic_chat, {"type": "image", "source": "x"},
            param="messages.0.content.0.source")


def test_base64_wrapped_in_lines_and_data_uris_are_read() -> None:
    """What some clients send: base64 in 76-column lines, or a data: URI in Ollama's
    images; both are the same bytes."""
    wrapped = "\n".join(B64[i:i + 76] for i in range(0, len(B64), 76))
    assert ollama_chat("x", [wrapped])[0].images[0].data == PNG
    assert ollama_chat("x", [DATA_URI])[0].images[0].data == PNG


# ---------------------------------------------------------------- client side, round trip
def image_chat(*images: ImagePart) -> GenerationRequest:
    return build_request(messages=[
        {"role": "system", "content": "Be brief."},
        Message(role="user", content=(_types.TextPart(text="Compare "), images[0],
                                      _types.TextPart(text=" and "), *images[1:])),
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Again."}], max_tokens=8)


def over_the_wire(body: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(body)))


def client_body(api: str, request: GenerationRequest) -> dict[str, Any]:
    """The body ``connect()`` sends for ``request`` over ``api``."""
    if api == "openai":
        return openai.client_body(request, "m", max_completion_tokens=False,
                                  stream_usage=False, wire_format=None)[1]
    if api == "ollama":
        return ollama.client_body(request, "m", None)[1]
    if api == "anthropic":
        return anthropic.client_body(request, "m")[1]
    return responses.client_body(request, "m", None)[1]


def server_messages(api: str, body: dict[str, Any]) -> tuple[Message, ...]:
    codec: Any = {"openai": openai.ChatCodec(), "ollama": ollama.ChatCodec(),
                  "anthropic": anthropic.MessagesCodec(),
                  "responses": responses.ResponsesCodec(MemoryStore())}[api]
    return messages_of(codec.parse(over_the_wire(body)))


def test_each_client_writes_its_apis_shape() -> None:
    sent = image_chat(ImagePart(data=PNG))
    bodies = {api: client_body(api, sent) for api in ("openai", "ollama", "anthropic",
                                                      "responses")}
    parts = bodies["openai"]["messages"][1]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": DATA_URI}}
    assert bodies["ollama"]["messages"][1]["images"] == [B64]
    assert bodies["ollama"]["messages"][1]["content"] == "Compare  and "
    assert bodies["anthropic"]["messages"][0]["content"][1] == IMAGE_BLOCK
    assert bodies["responses"]["input"][0]["content"][1] == {"type": "input_image",
                                                             "image_url": DATA_URI}
    # turns without images are written as before: content as one string
    assert bodies["openai"]["messages"][2]["content"] == "Done."
    assert bodies["responses"]["input"][1]["content"] == "Done."


@pytest.mark.parametrize("api", ["openai", "ollama", "anthropic", "responses"])
def test_a_message_with_images_reads_back_as_the_same_bytes(api: str) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(jpeg, "JPEG")
    sent = image_chat(ImagePart(data=PNG), ImagePart(data=jpeg.getvalue()))
    assert sent.messages is not None
    got = server_messages(api, client_body(api, sent))
    want = [m for m in sent.messages if m.role != "system"]
    user = next(m for m in got if m.images)
    assert [p.data for p in user.images] == [p.data for p in want[0].images]
    assert user.text == want[0].text
    assert [m.text for m in got if not m.images and m.role != "system"] == \
        [m.text for m in want[1:]]


@pytest.mark.parametrize("api", ["openai", "anthropic", "responses"])
def test_an_image_url_goes_out_as_that_url(api: str) -> None:
    got = server_messages(api, client_body(api, image_chat(ImagePart(url=URL))))
    assert next(m for m in got if m.images).images[0].url == URL


def test_what_an_api_cannot_carry_is_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match="not URLs"):
        client_body("ollama", image_chat(ImagePart(url=URL)))
    for api in ("openai", "anthropic", "responses"):
        with pytest.raises(ConfigError, match="not PNG, JPEG, WebP or GIF"):
            client_body(api, image_chat(ImagePart(data=b"BM not an image")))
    for role in ("system", "tool"):
        turn = Message(role=role, content=(ImagePart(data=PNG),), tool_call_id="call_0")
        odd = build_request(messages=[{"role": "user", "content": "Hi"}, turn])
        for api in ("anthropic", "responses"):
            with pytest.raises(ConfigError, match=f"{role} message"):
                client_body(api, odd)


# ---------------------------------------------------------------- end to end (real model)
# A server whose model reads images: the real default text model with the seeded synthetic
# LLaVA-1.5 projector of tests/vision_oracle.py beside it (found there, as a downloaded
# mmproj would be), next to the same model served without one.
VISION = "vision-smollm2"
TEXT = "smollm2-135m-instruct"
QUESTION = "Describe the picture in one sentence."


@pytest.fixture(scope="module")
def picture() -> bytes:
    from vision_oracle import VisionConfig, draw_images

    rgb = draw_images(VisionConfig().image_size)["picture"]
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def image_tokens() -> int:
    from vision_oracle import VisionConfig

    config = VisionConfig()
    return (config.image_size // config.patch_size) ** 2  # 16


@pytest.fixture(scope="module")
def served(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    from server_harness import served_in_thread
    from vision_oracle import VisionConfig, write_projector

    folder = tmp_path_factory.mktemp("vision-model")
    model = folder / f"{VISION}.gguf"
    try:  # a hard link: the registry resolves symlinks, and a copy is 100+ MB
        os.link(default_model_path, model)
    except OSError:
        shutil.copyfile(default_model_path, model)
    write_projector(folder / "mmproj-synthetic.gguf", VisionConfig())
    with served_in_thread([str(model), TEXT], parallel=1, context_length=1024,
                          threads=2) as base:
        yield base


def _vision_chat(image: bytes | None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": QUESTION}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(image).decode()}})
    return [{"role": "user", "content": content}]


@pytest.mark.real_model
def test_openai_client_sends_an_image(served: str, picture: bytes, image_tokens: int) -> None:
    import openai as sdk

    client = sdk.OpenAI(base_url=f"{served}/v1", api_key="none")
    plain = client.chat.completions.create(model=VISION, messages=_vision_chat(None),
                                           max_tokens=4, temperature=0)
    seen = client.chat.completions.create(model=VISION, messages=_vision_chat(picture),
                                          max_tokens=4, temperature=0)
    assert seen.choices[0].message.content
    assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + image_tokens
    with pytest.raises(sdk.BadRequestError, match="projector"):
        client.chat.completions.create(model=TEXT, messages=_vision_chat(picture),
                                       max_tokens=4)
    with pytest.raises(sdk.BadRequestError, match="fetch-images"):
        client.chat.completions.create(model=VISION, max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": URL}}]}])
    for url, why in (("data:image/png;base64,@@@@", "base64"),
                     ("/etc/passwd", "never reads a file")):
        with pytest.raises(sdk.BadRequestError, match=why) as bad:
            client.chat.completions.create(model=VISION, max_tokens=4, messages=[
                {"role": "user", "content": [{"type": "image_url",
                                              "image_url": {"url": url}}]}])
        assert bad.value.status_code == 400
        assert bad.value.body["param"] == "messages.0.content.0.image_url.url"  # type: ignore[index]


@pytest.mark.real_model
def test_ollama_client_sends_images(served: str, picture: bytes, image_tokens: int,
                                    tmp_path: Path) -> None:
    import ollama as sdk

    path = tmp_path / "picture.png"  # the client reads it, on its own side
    path.write_bytes(picture)
    client = sdk.Client(host=served)
    options = {"temperature": 0, "num_predict": 4}
    plain = client.chat(model=VISION, options=options,
                        messages=[{"role": "user", "content": QUESTION}])
    for image in (picture, str(path)):
        seen = client.chat(model=VISION, options=options, messages=[
            {"role": "user", "content": QUESTION, "images": [image]}])
        assert seen.message.content
        assert seen.prompt_eval_count == plain.prompt_eval_count + image_tokens
    two = client.chat(model=VISION, options=options, messages=[
        {"role": "user", "content": QUESTION, "images": [picture, picture]}])
    assert two.prompt_eval_count == plain.prompt_eval_count + 2 * image_tokens
    generated = client.generate(model=VISION, prompt=QUESTION, images=[picture],
                                options=options)
    assert generated.prompt_eval_count == plain.prompt_eval_count + image_tokens
    with pytest.raises(sdk.ResponseError, match="projector"):
        client.chat(model=TEXT, options=options, messages=[
            {"role": "user", "content": QUESTION, "images": [picture]}])


@pytest.mark.real_model
def test_anthropic_and_responses_clients_send_images(served: str, picture: bytes,
                                                     image_tokens: int) -> None:
    import anthropic as anthropic_sdk
    import openai as openai_sdk

    data = base64.b64encode(picture).decode()
    messages = anthropic_sdk.Anthropic(base_url=served, api_key="none").messages
    plain = messages.create(model=VISION, max_tokens=4,
                            messages=[{"role": "user", "content": QUESTION}])
    seen = messages.create(model=VISION, max_tokens=4, messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": data}},
            {"type": "text", "text": QUESTION}]}])
    assert seen.usage.input_tokens == plain.usage.input_tokens + image_tokens
    api = openai_sdk.OpenAI(base_url=f"{served}/v1", api_key="none").responses
    turn = {"role": "user", "content": [
        {"type": "input_text", "text": QUESTION},
        {"type": "input_image", "image_url": f"data:image/png;base64,{data}",
         "detail": "auto"}]}
    first = api.create(model=VISION, max_output_tokens=4, temperature=0, input=[turn])
    assert first.usage is not None and first.usage.input_tokens == \
        plain.usage.input_tokens + image_tokens
    # the stored conversation keeps the image: continuing it reads the same prompt as
    # sending the whole conversation again
    follow = api.create(model=VISION, max_output_tokens=4, temperature=0,
                        previous_response_id=first.id, input="And the colours?")
    whole = api.create(model=VISION, max_output_tokens=4, temperature=0, store=False,
                       input=[turn, {"role": "assistant", "content": first.output_text},
                              {"role": "user", "content": "And the colours?"}])
    assert follow.usage is not None and whole.usage is not None
    assert follow.usage.input_tokens == whole.usage.input_tokens


@pytest.mark.real_model
@pytest.mark.parametrize("api", ["openai", "ollama", "anthropic", "responses"])
def test_connect_sends_images_over_each_api(served: str, picture: bytes, image_tokens: int,
                                            api: str) -> None:
    import localllm

    question = [{"role": "user", "content": QUESTION}]
    with_image = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                               {"type": "image", "image": picture}]}]
    with localllm.connect(served, VISION, api=api) as remote:
        plain = remote.chat(question, max_tokens=4, temperature=0)
        seen = remote.chat(with_image, max_tokens=4, temperature=0)
    assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + image_tokens
