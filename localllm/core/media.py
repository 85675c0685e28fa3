"""Images in a chat prompt: checked, rendered as markers, tokenized as placeholder runs.

The chat template renders each image part as a marker text that no caller can write (it
carries a random nonce per request), so any template places images where their parts
were, and text that happens to contain some model's own image tag stays text. The
rendered prompt is then cut at the markers: text pieces are tokenized (the first with
the prompt's BOS handling, as a whole prompt would be) and each image becomes its run of
placeholder ids, one per image token (``localllm.images``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence

from .._errors import ConfigError, UnsupportedFeatureError
from .._types import ImagePart, Message, TextPart
from ..images import DecodedImage, decode_image, placeholders


def has_images(messages: Sequence[Message]) -> bool:
    return any(m.images for m in messages)


class ImagePrompt:
    """The images of one chat request, decoded, and how to tokenize around them."""

    def __init__(self, messages: Sequence[Message], tokens_per_image: int | None,
                 backend: str) -> None:
        if not tokens_per_image:
            raise UnsupportedFeatureError(
                backend, "image input",
                "the model was loaded without a vision projector: load it with "
                "projector='mmproj-....gguf' (the projector published with the model), or "
                "send text only")
        self.tokens_per_image = tokens_per_image
        nonce = secrets.token_hex(8)
        self._pattern = re.compile(f"(<__localllm_image_{nonce}_[0-9]+__>)")
        self.by_marker: dict[str, DecodedImage] = {}
        self.messages: list[Message] = []
        for message in messages:
            if not message.images:
                self.messages.append(message)
                continue
            content: list[TextPart] = []
            assert isinstance(message.content, tuple)
            for part in message.content:
                if isinstance(part, ImagePart):
                    marker = f"<__localllm_image_{nonce}_{len(self.by_marker)}__>"
                    self.by_marker[marker] = _decode(part)
                    part = TextPart(text=marker)
                content.append(part)
            self.messages.append(message.model_copy(update={"content": tuple(content)}))
        #: the images the last encoded prompt holds, by content key (for the scheduler)
        self.used: dict[int, DecodedImage] = {}

    def encode(self, text: str, encode_prompt: Callable[[str], list[int]],
               tokenize: Callable[[str], list[int]]) -> list[int]:
        """The prompt ids of a rendered chat: text tokenized, markers as placeholders.
        Images of turns the template (or ``drop_oldest``) left out are not in it."""
        ids: list[int] = []
        self.used = {}
        for i, piece in enumerate(self._pattern.split(text)):
            image = self.by_marker.get(piece) if i % 2 else None
            if image is not None:
                ids += placeholders(image, self.tokens_per_image)
                self.used[image.key] = image
            elif i == 0:
                ids += encode_prompt(piece)  # BOS, as for a prompt without images
            elif piece:
                ids += tokenize(piece)
        return ids


def _decode(part: ImagePart) -> DecodedImage:
    if part.url is not None:
        raise ConfigError(
            f"the image at {part.url[:80]} was not fetched: localllm reads images it is "
            "given (bytes, a path or a data: URI); a server fetches URLs only when started "
            "with --fetch-images")
    return decode_image(part.data)
