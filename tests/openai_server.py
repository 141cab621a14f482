"""A small OpenAI-compatible server on 127.0.0.1 for the captioning tests (stdlib http.server, threads).

It answers /v1/models and /v1/chat/completions. Its caption names the colour of the image it was sent (the
data URI is decoded), so a test sees the image arrived; `script` sets per-request behaviour: fail with 500
for the first N requests, answer empty for images of a colour, think before answering, wait.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


OPENAI_CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
                      "stop", "seed", "stream", "frequency_penalty", "presence_penalty", "response_format"}


class Script:
    def __init__(self):
        self.fail_first = 0  # this many chat requests answer 500 first
        self.empty_for = set()  # RGB colours answered with ""
        self.think = False
        self.delay = 0.0
        self.api_key = None  # when set, requests without "Bearer KEY" get 401
        self.busy_first = 0  # this many chat requests answer 429 with Retry-After: retry_after
        self.retry_after = "1"
        self.endless = ""  # "models" or "chat": that answer's body never ends; "drip": one byte every 2 s
        self.gone = False  # chat requests get their connection closed without an answer (the server died)
        self.strict = False  # refuse fields OpenAI does not define with 422, as `transformers serve` does
        self.requests = []  # the chat bodies received
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()


def colour_of(data_uri: str) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB")
    return image.getpixel((image.width // 2, image.height // 2))


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, status: int, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if script.api_key and self.headers.get("Authorization") != f"Bearer {script.api_key}":
                self._reply(401, {"error": {"message": "bad key"}})
                return False
            return True

        def _never_ending(self, pause: float, chunk: bytes) -> None:
            """A 200 whose body never ends (until the client hangs up)."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(pause)
            except OSError:
                return

        def do_GET(self):
            if not self._authorised():
                return
            if self.path == "/v1/models" and script.endless == "models":
                return self._never_ending(0.0, b" " * 65536)
            if self.path == "/v1/models":
                self._reply(200, {"object": "list", "data": [{"id": "tiny-vlm", "object": "model"}]})
            else:
                self._reply(404, {"error": {"message": "not found"}})

        def do_POST(self):
            if not self._authorised():
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append(body)
                failing = len(script.requests) <= script.fail_first
                script.in_flight += 1
                script.most_in_flight = max(script.most_in_flight, script.in_flight)
            try:
                time.sleep(script.delay)
                unexpected = set(body) - OPENAI_CHAT_FIELDS
                if script.strict and unexpected:  # transformers serve's own answer, word for word
                    return self._reply(422, {"detail": f"Unexpected fields in the request: {unexpected}"})
                if failing:
                    return self._reply(500, {"error": {"message": "busy"}})
                if len(script.requests) <= script.busy_first:
                    self.send_response(429)
                    self.send_header("Retry-After", script.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if script.gone:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if script.endless == "chat":
                    return self._never_ending(0.0, b" " * 65536)
                if script.endless == "drip":
                    return self._never_ending(2.0, b" ")
                parts = body["messages"][-1]["content"]
                colour = colour_of(next(p["image_url"]["url"] for p in parts if p["type"] == "image_url"))
                question = next(p["text"] for p in parts if p["type"] == "text")
                text = "" if colour in script.empty_for else f"an image of colour {colour} asked '{question}'"
                if script.think:
                    text = f"<think>Let me look.\nIt is {colour}.</think>\n{text}"
                self._reply(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]})
            finally:
                with script.lock:
                    script.in_flight -= 1

    return Handler


class OpenAIServer:
    def __init__(self):
        self.script = Script()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.script))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
