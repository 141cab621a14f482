"""Captioning through a local OpenAI-compatible server (vLLM, llama.cpp's server, LM Studio, Ollama).

`GET {base}/models` lists what it serves; `POST {base}/chat/completions` gets one caption per request, the
image sent as a data URI. Requests run concurrently (the server batches them); a failed request is retried
on connection errors, 429 and 5xx, with a back-off. An answer's `<think>...</think>` part is removed, and an
empty answer is that image's error, not a caption.
"""

from __future__ import annotations

import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx

from ..errors import LuminaError
from .styles import DEFAULT_MAX_TOKENS, DEFAULT_SAMPLING

DEFAULT_URL = "http://127.0.0.1:8000/v1"  # vLLM's; llama.cpp 8080, LM Studio 1234, Ollama 11434
MAX_SIDE = 1536  # longer images are sent scaled down: servers resize anyway, and requests stay small
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)


class ServerError(LuminaError):
    """The server cannot be used at all (not running, wrong address, refuses the key)."""


class CaptionFailed(LuminaError):
    """One image got no caption; the message says why. The job lists it and goes on."""


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def image_data_uri(image) -> str:
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def strip_thinking(text: str) -> str:
    text = _THINKING.sub("", text)
    return "" if "<think>" in text else text.strip()  # an answer that never stopped thinking has no caption


class ServerCaptioner:
    """Same `caption()` as a local model's adapter; failures come back per image as CaptionFailed."""

    model_type = "server"
    follows_questions = True

    def __init__(self, base_url: str = DEFAULT_URL, model: str | None = None, api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 300.0, retries: int = 2):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=httpx.Timeout(timeout, connect=10.0))
        self.concurrency, self.retries = max(1, concurrency), max(0, retries)
        self.sampling, self.max_tokens = dict(DEFAULT_SAMPLING), DEFAULT_MAX_TOKENS
        self.batch_limit = None
        self.model = model or self.models()[0]

    @property
    def name(self) -> str:
        return f"{self.model} at {self.base_url}"

    def close(self) -> None:
        self.client.close()

    def models(self) -> list[str]:
        response = self._send("GET", "/models")
        if response.status_code in (401, 403):
            raise ServerError(f"{self.base_url} refused the API key ({response.status_code}): give the right one.")
        if response.status_code >= 400:
            raise ServerError(f"{self.base_url}/models answered {response.status_code}: is this an "
                              "OpenAI-compatible server? The address usually ends in /v1.")
        try:
            ids = [entry["id"] for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise ServerError(f"{self.base_url}/models did not answer with a model list.") from None
        if not ids:
            raise ServerError(f"{self.base_url} serves no model: load one in the server first.")
        return ids

    def caption(self, images: list, questions: list[str], system: str = "", sampling: dict | None = None,
                max_tokens: int | None = None) -> list:
        settings = dict(self.sampling if sampling is None else sampling)
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda pair: self._one(pair[0], pair[1], system, settings, max_tokens),
                                 zip(images, questions)))

    def _one(self, image, question: str, system: str, settings: dict, max_tokens: int | None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_uri(image)}},
            {"type": "text", "text": question}]}]
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens or self.max_tokens}
        if settings.get("do_sample", True):
            body.update({k: settings[k] for k in ("temperature", "top_p", "top_k") if k in settings})
        else:
            body["temperature"] = 0.0
        if "repetition_penalty" in settings:
            body["repetition_penalty"] = settings["repetition_penalty"]
        try:
            response = self._send("POST", "/chat/completions", json=body)
        except ServerError as exc:
            return CaptionFailed(str(exc))
        if response.status_code >= 400:
            return CaptionFailed(f"the server answered {response.status_code}: {response.text[:200]}")
        try:
            text = response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            return CaptionFailed("the server's answer holds no message")
        caption = strip_thinking(text)
        return caption if caption else CaptionFailed("the server gave an empty caption")

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """The response, retried on connection errors, 429 and 5xx; ServerError when the server never answers."""
        for attempt in range(self.retries + 1):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ServerError(f"No OpenAI-compatible server answers at {self.base_url} ({exc}). Start "
                                      "vLLM, llama.cpp's server, LM Studio or Ollama, or check the address.") from None
            else:
                if response.status_code != 429 and response.status_code < 500 or attempt == self.retries:
                    return response
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")
