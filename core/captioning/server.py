"""Captioning through a local OpenAI-compatible server (vLLM, llama.cpp's server, LM Studio, Ollama).

`GET {base}/models` lists what it serves; `POST {base}/chat/completions` gets one caption per request, the
image sent as a data URI. Requests run concurrently (the server batches them); a failed request is retried
on connection errors, 429 and 5xx, with a back-off (ServerCaptioner says more: deadlines, Stop). An answer's
`<think>...</think>` part is removed, and an empty answer is that image's error, not a caption.

Sampling fields: OpenAI's (temperature, top_p) always; top_k and repetition_penalty, which vLLM, LM Studio and
llama.cpp take but OpenAI does not define, until a server refuses them: a 400/422 naming them is retried at once
without them, the job's summary says so, and the refusal is remembered for that server (servers.json in the
data folder), so strict servers (transformers serve) work from the first caption.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from ..errors import Cancelled, LuminaError
from ..storage import data_dir, read_json, write_json_atomic
from .styles import DEFAULT_MAX_TOKENS, DEFAULT_SAMPLING

DEFAULT_URL = "http://127.0.0.1:8000/v1"  # vLLM's; llama.cpp 8080, LM Studio 1234, Ollama 11434
MAX_SIDE = 1536  # longer images are sent scaled down: servers resize anyway, and requests stay small
MAX_ANSWER_BYTES = 8 << 20  # a caption is a few KiB: an answer past this is cut off, never buffered without end
CONNECT_TIMEOUT = 10.0
RETRY_AFTER_CAP = 60.0  # a 429/503's Retry-After is honoured up to this (and within the request's deadline)
DOWN_AFTER = 3  # requests in a row without an answer: the server is gone, the job stops with one message
POLL_S = 0.1  # how often waiting code looks at Stop
EXTRA_SAMPLING = ("top_k", "repetition_penalty")  # not OpenAI's fields: sent until a server refuses them
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)


class ServerError(LuminaError):
    """The server cannot be used at all (not running, wrong address, refuses the key)."""


class CaptionFailed(LuminaError):
    """One image got no caption; the message says why. The job lists it and goes on."""


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


@dataclass
class Reply:
    """A whole answer, read within the request's deadline and size cap."""
    status_code: int
    content: bytes
    headers: httpx.Headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.content)


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a 429/503 asks to wait (Retry-After in seconds or as a date); None when it does not say."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class ServerCaptioner:
    """Same `caption()` as a local model's adapter; failures come back per image as CaptionFailed.

    Every request has an overall deadline (`timeout`, retries and waits included) and a size cap on its
    answer, so a server that drips, never ends or stalls costs one deadline, never memory or hours; Stop
    (`should_stop`) interrupts requests in flight within a fraction of a second; 429 and 503 are retried
    after the Retry-After the server asks for (bounded); and after DOWN_AFTER requests in a row that got no
    answer (the server died or hangs) the job stops with one message instead of failing image by image.
    """

    model_type = "server"
    follows_questions = True

    def __init__(self, base_url: str = DEFAULT_URL, model: str | None = None, api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 300.0, retries: int = 2):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers)
        self.timeout = timeout
        self.concurrency, self.retries = max(1, concurrency), max(0, retries)
        self.sampling, self.max_tokens = dict(DEFAULT_SAMPLING), DEFAULT_MAX_TOKENS
        self.batch_limit = None
        self.should_stop = lambda: False  # the job sets its own: Stop then ends requests in flight
        self._unanswered = 0  # requests in a row that got no answer at all
        self._lock = threading.Lock()
        self.refused = set(refused_fields().get(self.base_url, []))  # sampling fields this server refuses
        self.notes: list[str] = []  # what the job's summary should say about this server
        self.model = model or self.models()[0]

    @property
    def name(self) -> str:
        return f"{self.model} at {self.base_url}"

    def watch(self, should_stop) -> None:
        """A job begins: its Stop ends requests in flight, and the server's silence and notes start afresh."""
        self.should_stop, self._unanswered, self.notes = should_stop, 0, []

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
            if not all(isinstance(i, str) for i in ids):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ServerError(f"{self.base_url}/models did not answer with a model list.") from None
        if not ids:
            raise ServerError(f"{self.base_url} serves no model: load one in the server first.")
        return ids

    def caption(self, images: list, questions: list[str], system: str = "", sampling: dict | None = None,
                max_tokens: int | None = None) -> list:
        """One caption (or CaptionFailed) per image. Raises Cancelled when Stop was asked, ServerError when
        the server stopped answering altogether."""
        settings = dict(self.sampling if sampling is None else sampling)
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            futures = [pool.submit(self._one, image, question, system, settings, max_tokens)
                       for image, question in zip(images, questions)]
            while wait(futures, timeout=POLL_S).not_done:
                if self.should_stop():
                    raise Cancelled()
                if self._unanswered >= DOWN_AFTER:
                    break
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # requests still waiting end at their next read
        if self._unanswered >= DOWN_AFTER:
            raise ServerError(f"The server at {self.base_url} stopped answering ({DOWN_AFTER} requests in a row "
                              "got no answer). The captions written so far are kept: start the server again "
                              "and run the same job to continue.")
        if self.should_stop():
            raise Cancelled()
        return [future.result() for future in futures]

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
            response = self._send("POST", "/chat/completions", json=self._without_refused(body))
            if response.status_code in (400, 422) and self._learn_refusal(body, response.text):
                response = self._send("POST", "/chat/completions", json=self._without_refused(body))
        except (ServerError, Cancelled) as exc:
            return CaptionFailed(str(exc))
        if response.status_code >= 400:
            return CaptionFailed(f"the server answered {response.status_code}: {response.text[:200]}")
        try:
            text = response.json()["choices"][0]["message"]["content"] or ""
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            return CaptionFailed("the server's answer holds no message")
        caption = strip_thinking(text)
        return caption if caption else CaptionFailed("the server gave an empty caption")

    def _without_refused(self, body: dict) -> dict:
        return {k: v for k, v in body.items() if k not in self.refused}

    def _learn_refusal(self, body: dict, answer: str) -> bool:
        """Whether a 400/422 `answer` names sampling fields beyond OpenAI's that `body` sent (now refused,
        remembered for this server and noted for the summary): then the request is worth sending again."""
        named = [f for f in EXTRA_SAMPLING if f in body and f in answer]
        if not named:
            return False
        with self._lock:  # requests in flight may learn the same at once: it is noted and written once
            fresh = [f for f in named if f not in self.refused]
            self.refused.update(named)
            if fresh:
                note = (f"{self.base_url} does not take {' and '.join(fresh)} (not OpenAI fields): captions are "
                        "asked for without them")
                try:
                    remember_refusal(self.base_url, sorted(self.refused))
                    self.notes.append(note + ", and this server is remembered.")
                except OSError as exc:
                    self.notes.append(note + f" (not remembered: {exc}).")
        return True

    def _send(self, method: str, path: str, **kwargs) -> Reply:
        """The whole answer within `timeout` (retries and waits included), retried on connection errors,
        429 and 5xx (429/503 after the Retry-After asked, at most RETRY_AFTER_CAP s); ServerError when the
        server never answers in time, Cancelled when Stop is asked meanwhile."""
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            pause = 0.5 * 2**attempt
            try:
                reply = self._request(method, path, deadline, **kwargs)
            except httpx.TransportError as exc:
                timed_out = isinstance(exc, httpx.TimeoutException)
                if attempt == self.retries or timed_out or time.monotonic() + pause >= deadline:
                    self._count_unanswered(True)
                    raise ServerError(
                        f"{self.base_url} did not answer within {self.timeout:.0f} s" if timed_out else
                        f"No OpenAI-compatible server answers at {self.base_url} ({exc}). Start vLLM, llama.cpp's "
                        "server, LM Studio or Ollama, or check the address.") from None
            else:
                self._count_unanswered(False)
                busy = reply.status_code == 429 or reply.status_code >= 500
                if not busy or attempt == self.retries:
                    return reply
                asked = retry_after(reply.headers) if reply.status_code in (429, 503) else None
                pause = min(asked, RETRY_AFTER_CAP) if asked is not None else pause
                if time.monotonic() + pause >= deadline:
                    return reply
            self._pause(pause)
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, deadline: float, **kwargs) -> Reply:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise httpx.ReadTimeout("the deadline passed")
        timeout = httpx.Timeout(remaining, connect=min(CONNECT_TIMEOUT, remaining))
        with self.client.stream(method, path, timeout=timeout, **kwargs) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise ServerError(f"{self.base_url} sent an answer larger than {MAX_ANSWER_BYTES >> 20} MiB; "
                                      "a caption is far smaller, so it was cut off.")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the deadline passed while the answer came in")
                if self.should_stop():
                    raise Cancelled()
                chunks.append(chunk)
            return Reply(response.status_code, b"".join(chunks), response.headers)

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.should_stop():
                raise Cancelled()
            time.sleep(min(POLL_S, end - time.monotonic()))

    def _count_unanswered(self, unanswered: bool) -> None:
        with self._lock:
            self._unanswered = self._unanswered + 1 if unanswered else 0


def servers_file():
    return data_dir() / "servers.json"


def refused_fields() -> dict[str, list[str]]:
    """Per server address, the sampling fields it refused (a damaged file counts as none remembered)."""
    data = read_json(servers_file(), {})
    if not isinstance(data, dict):
        return {}
    return {url: [f for f in entry.get("refused", []) if f in EXTRA_SAMPLING]
            for url, entry in data.items() if isinstance(entry, dict) and isinstance(entry.get("refused"), list)}


def remember_refusal(base_url: str, fields: list[str]) -> None:
    remembered = {url: {"refused": refused} for url, refused in refused_fields().items()}
    remembered[base_url] = {"refused": fields}
    write_json_atomic(servers_file(), remembered)
