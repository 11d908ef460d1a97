"""An answer-rewriting HTTP proxy on 127.0.0.1: a broken or hostile portal, made repeatable for tests.

The proxy forwards every request to an upstream portal (usually the sandbox) and hands each answer to
the rules a test installed before returning it. A rule sees the REST method, the request's parameters
and the decoded answer, and may change the answer's status, JSON, raw bytes or headers, or drop the
connection. Helpers cover the cases a portal can break in: a list method's result replaced (empty,
`null`, an object), rows rewritten (a value that crmbridge cannot use, a row that is not an object),
a clock (`time.date_start`) in another format, an error with odd texts, and very large answers.
Commands inside a `batch` are rewritten like direct calls, so the fast list pattern is covered too.

    with SandboxPortal(deals=300) as portal, RewritingProxy(portal.webhook_url) as proxy:
        proxy.add(result_of("crm.deal.list", lambda result: None, times=1))   # one null answer
        Syncer(Bitrix24Reader(Bitrix24Client(proxy.webhook_url)), cache).run(full=True)

Stdlib only, like the sandbox; never listens anywhere but loopback.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from .server import _Server  # daemon threads; a client hanging up mid-answer (a size cap) is no server error
from .wire import php_parse_query

__all__ = [
    "Exchange",
    "RewritingProxy",
    "Rule",
    "answer_with",
    "clock_of",
    "drop",
    "huge_answer",
    "result_of",
    "rows_of",
]


@dataclass
class Exchange:
    """One request and the answer the client will receive; rules change the answer in place."""

    method: str  # the REST method of the URL ("batch" for a batch)
    params: dict[str, Any]  # the request's parameters (JSON body or PHP-style form)
    status: int
    headers: dict[str, str]
    body: bytes
    #: an answer streamed in pieces instead of `body` (large answers without holding them in memory)
    stream: Iterable[bytes] | None = None
    drop: bool = False  # close the connection without an answer

    @property
    def json(self) -> Any:
        """The answer decoded (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @json.setter
    def json(self, value: Any) -> None:
        # allow_nan: a hostile portal may send NaN / Infinity, which Python's json reads back as floats
        self.body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self.headers["Content-Type"] = "application/json; charset=utf-8"

    def commands(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """For a batch: command key -> (REST method, decoded parameters) of each command."""
        cmd = self.params.get("cmd") or self.params.get("CMD") or {}
        items = cmd.items() if isinstance(cmd, dict) else enumerate(cmd) if isinstance(cmd, list) else []
        commands = {}
        for key, value in items:
            method, _, query = str(value).partition("?")
            commands[str(key)] = (method.strip().lower(), php_parse_query(query))
        return commands


#: a rule returns nothing; it changes the exchange. Rules run in the order they were added.
Rule = Callable[[Exchange], None]


class RewritingProxy:
    """Forwards to `upstream` (a webhook URL) and applies the installed rules to every answer."""

    def __init__(self, upstream: str, rules: Iterable[Rule] = ()) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the proxy only forwards to a portal on loopback")
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._upstream_path = parts.path
        self.rules: list[Rule] = list(rules)
        self._lock = threading.Lock()
        #: (method, params) of every request, in order; tests assert on what crmbridge asked
        self.requests: list[tuple[str, dict[str, Any]]] = []
        #: bytes of streamed answers actually delivered before the client hung up
        self.streamed_bytes = 0
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, port: int = 0) -> RewritingProxy:
        proxy = self

        class Handler(_Handler):
            pass

        Handler.proxy = proxy
        self._server = _Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="rewriting-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RewritingProxy:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def webhook_url(self) -> str:
        """The upstream's webhook URL with the proxy's address: give it to crmbridge instead."""
        if self.port is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self.port}{self._upstream_path}"

    def add(self, *rules: Rule) -> RewritingProxy:
        with self._lock:
            self.rules.extend(rules)
        return self

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def calls(self, method: str) -> int:
        """Requests of `method`, commands inside batches included."""
        count = 0
        for called, params in list(self.requests):
            if called == method:
                count += 1
            elif called == "batch":
                count += sum(1 for m, _ in Exchange(called, params, 0, {}, b"").commands().values() if m == method)
        return count

    # --- one request --------------------------------------------------------------------------------

    def forward(self, path: str, body: bytes, headers: dict[str, str]) -> Exchange:
        method = path.rsplit("/", 1)[-1].removesuffix(".json").lower()
        params = _params(body, headers.get("Content-Type", ""))
        with self._lock:
            self.requests.append((method, params))
            rules = list(self.rules)
        connection = http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=120)
        try:
            connection.request("POST", path, body=body, headers={k: v for k, v in headers.items()
                                                                 if k.lower() not in ("host", "connection")})
            answer = connection.getresponse()
            exchange = Exchange(method, params, answer.status,
                                {"Content-Type": answer.getheader("Content-Type") or "application/json"},
                                answer.read())
        except OSError:
            exchange = Exchange(method, params, 0, {}, b"", drop=True)  # the upstream dropped it: so do we
        finally:
            connection.close()
        for rule in rules:
            rule(exchange)
        return exchange


def _params(body: bytes, content_type: str) -> dict[str, Any]:
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type.lower() or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
    return php_parse_query(text)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "nginx"
    sys_version = ""
    proxy: RewritingProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        exchange = self.proxy.forward(self.path, body, dict(self.headers.items()))
        if exchange.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(exchange.status)
        for name, value in exchange.headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        if exchange.stream is None:
            self.send_header("Content-Length", str(len(exchange.body)))
            self.end_headers()
            self.wfile.write(exchange.body)
            return
        # a streamed answer has no length: the client reads until the connection closes
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        for piece in exchange.stream:
            self.wfile.write(piece)
            self.proxy.streamed_bytes += len(piece)

    do_GET = do_POST


# --- rules ----------------------------------------------------------------------------------------------


def _limited(rule: Callable[[Exchange], bool], times: int | None) -> Rule:
    """Apply `rule` (which says whether it fired) at most `times` times (None: always)."""
    fired = [0]
    lock = threading.Lock()

    def limited(exchange: Exchange) -> None:
        with lock:
            if times is not None and fired[0] >= times:
                return
            if rule(exchange):
                fired[0] += 1

    return limited


def result_of(method: str, rewrite: Callable[[Any], Any], *, times: int | None = None,
              when: Callable[[dict[str, Any]], bool] | None = None) -> Rule:
    """Replace the `result` of `method` (a direct call or a command inside a batch) by `rewrite(result)`.

    `when(params)` narrows it to some calls (it sees each batch command's own parameters). Each answer
    rewritten counts once toward `times`.
    """

    def rule(exchange: Exchange) -> bool:
        answer = exchange.json
        if not isinstance(answer, dict):
            return False
        if exchange.method == method and "result" in answer:
            if when is not None and not when(exchange.params):
                return False
            answer["result"] = rewrite(answer["result"])
            exchange.json = answer
            return True
        if exchange.method == "batch" and isinstance(answer.get("result"), dict):
            block = answer["result"]
            results = block.get("result")
            keys = [key for key, (called, params) in exchange.commands().items()
                    if called == method and (when is None or when(params))]
            if not keys or not isinstance(results, (dict, list)):
                return False
            if isinstance(results, list):  # PHP's map with keys 0..n-1
                results = {str(index): value for index, value in enumerate(results)}
            changed = False
            for key in keys:
                if key in results:
                    results[key] = rewrite(results[key])
                    changed = True
            block["result"] = results
            exchange.json = answer
            return changed
        return False

    return _limited(rule, times)


def _rows_in(result: Any) -> list[Any] | None:
    if isinstance(result, list):
        return result
    if isinstance(result, dict):
        for key in ("items", "tasks", "categories"):
            if isinstance(result.get(key), list):
                return result[key]
    return None


def rows_of(method: str, rewrite: Callable[[Any], Any], *, times: int | None = None,
            where: Callable[[Any], bool] | None = None, when: Callable[[dict[str, Any]], bool] | None = None) -> Rule:
    """Rewrite the rows of a list method's answers: each row (matching `where`) becomes `rewrite(row)`.

    `when(params)` narrows it to some calls, as for `result_of`; `times` counts rewritten rows.
    A row rewritten to `...` (Ellipsis) is removed.
    """
    budget = [times]
    lock = threading.Lock()

    def rewrite_result(result: Any) -> Any:
        rows = _rows_in(result)
        if rows is None:
            return result
        kept = []
        for row in rows:
            with lock:
                allowed = budget[0] is None or budget[0] > 0
                matches = allowed and (where is None or where(row))
                if matches and budget[0] is not None:
                    budget[0] -= 1
            if matches:
                row = rewrite(row)
            if row is not ...:
                kept.append(row)
        rows[:] = kept
        return result

    return result_of(method, rewrite_result, when=when)


def clock_of(value: Any, *, times: int | None = None) -> Rule:
    """Set the portal clock (`time.date_start`) of every answer to `value`."""

    def rule(exchange: Exchange) -> bool:
        answer = exchange.json
        if not isinstance(answer, dict) or not isinstance(answer.get("time"), dict):
            return False
        answer["time"]["date_start"] = value
        exchange.json = answer
        return True

    return _limited(rule, times)


def answer_with(method: str, status: int, payload: Any, *, times: int | None = None,
                content_type: str = "application/json; charset=utf-8") -> Rule:
    """Answer a direct call of `method` with `status` and `payload` (JSON-encoded unless bytes)."""

    def rule(exchange: Exchange) -> bool:
        if exchange.method != method:
            return False
        exchange.status = status
        exchange.body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        exchange.headers["Content-Type"] = content_type
        return True

    return _limited(rule, times)


def drop(method: str, *, times: int | None = None) -> Rule:
    """Close the connection without an answer for direct calls of `method` (or `batch`)."""

    def rule(exchange: Exchange) -> bool:
        if exchange.method != method:
            return False
        exchange.drop = True
        return True

    return _limited(rule, times)


def huge_answer(method: str, megabytes: float, *, times: int | None = None) -> Rule:
    """Answer `method` with a JSON list of `megabytes` MB, streamed (the proxy never holds it in memory)."""

    def pieces() -> Iterator[bytes]:
        row = json.dumps({"ID": "1", "TITLE": "x" * 1000}).encode() + b","
        total = int(megabytes * 1024 * 1024)
        yield b'{"result":['
        sent = 0
        chunk = row * 64
        while sent < total:
            yield chunk
            sent += len(chunk)
        yield b'{"ID":"2"}],"time":{}}'

    def rule(exchange: Exchange) -> bool:
        if exchange.method != method:
            return False
        exchange.status = 200
        exchange.headers["Content-Type"] = "application/json; charset=utf-8"
        exchange.stream = pieces()
        return True

    return _limited(rule, times)

