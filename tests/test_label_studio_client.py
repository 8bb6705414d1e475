"""The Label Studio client against a local fake server (no real network): every call ends within
its deadline, no answer is held past the body cap, pagination stops, a body that is not JSON or
not the expected shape is one line, and the token never appears in what is printed."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import salis.annotation.label_studio as ls
from salis.annotation.label_studio import LabelStudio
from salis.errors import SalisError

TOKEN = "s3cr3t-t0ken-0123456789abcdef"
Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class FakeServer:
    """A server on 127.0.0.1 that answers every request with the current `respond`."""

    def __init__(self) -> None:
        self.requests = 0
        self.respond: Handler = lambda h: send(h, 200, b"[]")
        fake = self

        class Handle(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake.requests += 1
                try:
                    fake.respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(handler, status: int, body: bytes, length: bool = True) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    if length:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture()
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def client(server: FakeServer, **kwargs) -> LabelStudio:
    return LabelStudio(server.url, TOKEN, **{"timeout": 2.0, "deadline": 3.0, **kwargs})


def refused(call: Callable[[], object], pattern: str) -> str:
    with pytest.raises(SalisError, match=pattern) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and TOKEN not in message and "Traceback" not in message
    return message


def test_a_server_that_trickles_bytes_cannot_hold_a_call_past_its_deadline(server):
    def trickle(h) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(1000):  # a byte every 0.2 s: each read is well within the 2 s read timeout
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.2)

    server.respond = trickle
    start = time.monotonic()
    refused(lambda: client(server, deadline=1.5).project(1), r"did not finish GET /api/projects/1/ within 1.5 s")
    assert time.monotonic() - start < 3.0


def test_a_next_link_that_never_ends_stops_at_the_page_cap(server, monkeypatch):
    monkeypatch.setattr(ls, "MAX_PAGES", 5)
    server.respond = lambda h: send(h, 200, json.dumps(
        {"results": [{"id": 1, "title": "other"}], "next": "/api/projects/?page=2"}).encode())
    refused(lambda: client(server).find_project("salis"), r"more than 5 pages of projects")
    assert server.requests == 5


def test_a_body_over_the_cap_is_refused_as_it_streams(server):
    big = b"[" + b"{}," * 400_000 + b"{}]"  # 1.2 MB of empty tasks
    server.respond = lambda h: send(h, 200, big)
    refused(lambda: client(server, max_body=2**20).export_json(1), r"with more than 1 MiB; refused")
    server.respond = lambda h: send(h, 200, big, length=False)  # no Content-Length: counted while read
    refused(lambda: client(server, max_body=2**20).export_json(1), r"with more than 1 MiB; refused")
    assert len(client(server, max_body=2**21).export_json(1)) == 400_001  # under the cap: read whole


@pytest.mark.parametrize(("body", "call", "pattern"), [
    (b"<html>not json</html>", "export", r"export\?exportType=JSON&download_all_tasks=true with a body that is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "export", r"with a body that is not JSON"),
    (b'{"detail": "x"}', "export", r"with dict where a JSON export \(a list of tasks\) was expected"),
    (b'["a", "b"]', "export", r"with list where a JSON export"),
    (b'"just a string"', "projects", r"with str where a list of projects was expected"),
    (b'{"title": "no id"}', "create", r"with dict where the new project with an id was expected"),
    (b'{"id": "7"}', "project", r"with dict where a project with an id was expected"),
    (b'{"id": 3, "task_number": "many"}', "tasks", r"task_number of 'many', not a count"),
])
def test_an_answer_of_the_wrong_kind_is_one_line(server, body, call, pattern):
    server.respond = lambda h: send(h, 200, body)
    c = client(server)
    calls = {"export": lambda: c.export_json(3), "projects": lambda: list(c.projects()),
             "create": lambda: c.create_project("t", "<View/>"), "project": lambda: c.project(7),
             "tasks": lambda: c.tasks(3)}
    refused(calls[call], pattern)


def test_the_token_never_reaches_an_error_line(server):
    def echo_headers(h) -> None:  # a server that quotes the request back, Authorization included
        send(h, 400, json.dumps({"error": "bad request", "headers": dict(h.headers)}).encode())

    server.respond = echo_headers
    message = refused(lambda: client(server).project(1), r"answered 400 to GET /api/projects/1/")
    assert "<token>" in message


def test_a_well_formed_answer_still_comes_through(server):
    server.respond = lambda h: send(h, 200, json.dumps(
        {"results": [{"id": 4, "title": "salis lab cycle 1 mask"}], "next": None}).encode())
    assert client(server).find_project("salis lab cycle 1 mask") == {"id": 4, "title": "salis lab cycle 1 mask"}
    assert server.requests == 1
