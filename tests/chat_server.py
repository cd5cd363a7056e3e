"""A small OpenAI-compatible chat-completions server for tests, on 127.0.0.1 at a random port.

It answers ``POST /v1/chat/completions`` with scripted replies and records
every request (its JSON body and headers), so a test drives a backend through
the real ``openai`` client::

    with ChatServer(["first reply", "second reply"]) as server:
        backend = OpenAIBackend(server.url, "tiny")
        ...
        server.requests[0]["body"]["messages"]

``replies``: a list (one per request, in order; the last repeats) or a
function of the request's JSON body. A reply is a string, or a dict with
``text`` and optionally ``finish_reason``, ``logprobs`` (a list of (token,
logprob, {alternative: logprob}) per generated token, sent when the request
asks for log-probabilities) and ``usage`` (merged into the usage sent), or
``status`` (an HTTP status to answer this request with instead: a callable's
way to fail the requests it chooses).
``faults``: what the next requests get instead of a reply, one each, in
order: an HTTP status (429, 503, 401...), ``"not-json"`` (status 200, a body
that is not JSON), ``"no-choices"``, ``"hang"`` (no answer for ``hang_s``
seconds). Statuses 429 and 5xx carry ``retry-after-ms`` (``retry_after_ms``),
so the client's retries do not slow the tests. An error body echoes the
request's Authorization header, as a careless server might: a test can check
that the key never reaches a message.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | dict[str, Any]


class ChatServer:
    """See the module docstring. Use as a context manager (started on entry, stopped on exit)."""

    def __init__(self, replies: list[Reply] | Callable[[dict[str, Any]], Reply] = ("ok",), *,
                 faults: list[int | str] | None = None, hang_s: float = 2.0, retry_after_ms: int = 5,
                 cached_tokens: int | None = None) -> None:
        self.replies = replies if callable(replies) else list(replies)
        self.faults = list(faults or [])
        self.hang_s = hang_s
        self.retry_after_ms = retry_after_ms
        self.cached_tokens = cached_tokens
        self.requests: list[dict[str, Any]] = []
        self._answered = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL a client takes (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ChatServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (the http.server name)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                owner._handle(self, raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll, so that stopping the server (which waits for the next poll) is quick.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ---- answering -----------------------------------------------------------------------------------

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("content-type", kind)
        handler.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append({"path": handler.path, "body": body, "headers": headers})
            fault = self.faults.pop(0) if self.faults else None
        if handler.path.rstrip("/") != "/v1/chat/completions":
            self._send(handler, 404, json.dumps({"error": {"message": f"no route {handler.path}"}}).encode())
            return
        if fault == "hang":
            time.sleep(self.hang_s)
            fault = None
        reply = None
        if fault is None:
            reply = self._next_reply(body)
            fault = reply.get("status")  # a callable's way to fail this one request
        if isinstance(fault, int):
            headers = {"retry-after-ms": str(self.retry_after_ms)} if fault == 429 or fault >= 500 else {}
            error = {"error": {"message": f"scripted fault {fault}", "type": "test",
                               "authorization": handler.headers.get("authorization", "")}}
            self._send(handler, fault, json.dumps(error).encode(), headers=headers)
            return
        if fault == "not-json":
            self._send(handler, 200, b"<html>a proxy page, not JSON</html>")
            return
        if fault == "no-choices":
            self._send(handler, 200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
            return
        self._send(handler, 200, json.dumps(self._completion(body, reply)).encode())

    def _next_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        if callable(self.replies):
            reply = self.replies(body)
        else:
            with self._lock:
                reply = self.replies[min(self._answered, len(self.replies) - 1)]
                self._answered += 1
        return {"text": reply} if isinstance(reply, str) else dict(reply)

    def _completion(self, body: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        prompt = len(json.dumps(body.get("messages", []))) // 4  # a stand-in count, stable per request
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": len(reply["text"]),
                                 "total_tokens": prompt + len(reply["text"])}
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, prompt)}
        usage.update(reply.get("usage", {}))
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": reply["text"]},
                                  "finish_reason": reply.get("finish_reason", "stop")}
        if body.get("logprobs") and reply.get("logprobs") is not None:
            choice["logprobs"] = {"content": [
                {"token": token, "logprob": logprob,
                 "top_logprobs": [{"token": alt, "logprob": value} for alt, value in alternatives.items()]}
                for token, logprob, alternatives in reply["logprobs"]]}
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", ""), "choices": [choice], "usage": usage}
