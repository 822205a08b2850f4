"""Faults a client or an upstream can cause, against the app on a real port (issue 21, item 2).

Each test is the fault done for real over loopback sockets: a 10 MB body sent in chunks, an
upstream that accepts connections and never answers, an upstream that dies mid-stream (with and
without ``stream_resume``), slowloris clients holding hundreds of half-sent requests.
"""

from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.ledger.models import AttemptRow, RequestRow
from tests.conftest import make_settings, remote_expert
from tests.support import fake_openai
from tests.support.servers import serve_in_thread

MSG = [{"role": "user", "content": "hi"}]


@contextmanager
def silent_upstream():
    """A TCP server that accepts every connection, reads what it is sent and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def _app(tmp_path, experts, **overrides):
    from api.app import create_app

    settings = make_settings(tmp_path, experts, {"active": "strongest", "lambda": 0}, **overrides)
    return create_app(settings)


def _attempts(app) -> tuple[RequestRow, list[AttemptRow]]:
    assert app.state.service.ledger.flush(20)
    with Session(app.state.service.ledger.engine) as s:
        (row,) = s.scalars(select(RequestRow)).all()
        attempts = list(s.scalars(select(AttemptRow).order_by(AttemptRow.attempt_no)))
        s.expunge_all()
    return row, attempts


def _sse(body: str) -> list[dict]:
    events = [line[5:].strip() for line in body.splitlines() if line.startswith("data:")]
    return [json.loads(e) for e in events if e != "[DONE]"]


# -- a request body far over the limit ------------------------------------------------------------
def _raw_post(url: str, head: str, body_parts: list[bytes]) -> bytes:
    """Send a request's head and the given body parts, then read the answer WITHOUT finishing the
    body: a server that waits for the whole body never answers and the read times out."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 10:
            got = sock.recv(65536)
            if not got:
                break
            data += got
        return data


def test_chunked_10mb_body_is_refused_with_413_before_it_is_read_whole(fake_app_url):
    url, app = fake_app_url
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            "transfer-encoding: chunked\r\n\r\n")
    piece = b'{"model": "cheap", "messages": [{"role": "user", "content": "' + b"y" * (256 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    # 1.25 MB of a 10 MB body (the limit is 1 MB); the other 8.75 MB and the last chunk never come.
    answer = _raw_post(url, head, [chunk] * 5)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    row, _ = _attempts(app)
    assert row.status == "rejected" and row.http_status == 413


def test_declared_10mb_body_is_refused_before_any_of_it_is_sent(fake_app_url):
    url, app = fake_app_url
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {10 * 1024 * 1024}\r\n\r\n")
    answer = _raw_post(url, head, [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"exceeds the limit" in answer


# -- an upstream that accepts and never answers ----------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_that_never_answers_times_out_and_falls_back_before_the_first_byte(tmp_path, stream):
    cheap = fake_openai.Behaviour(answer="cheap answer here")
    with silent_upstream() as hang_url, serve_in_thread(fake_openai.make_app(cheap)) as cheap_url:
        app = _app(tmp_path, [remote_expert("hang", hang_url, prior_quality=0.9, timeout_s=1),
                              remote_expert("cheap", cheap_url, prior_quality=0.3)])
        with serve_in_thread(app) as url:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                           json={"model": "expertmux/auto", "stream": stream, "messages": MSG})
            assert r.status_code == 200 and r.headers["x-expertmux-expert"] == "cheap"
            text = ("".join((c["choices"][0]["delta"].get("content") or "") for c in _sse(r.text) if c.get("choices"))
                    if stream else r.json()["choices"][0]["message"]["content"])
            assert text == "cheap answer here"
            row, attempts = _attempts(app)
    assert row.status == "ok" and row.expert == "cheap"
    assert [(a.expert, a.status) for a in attempts] == [("hang", "error"), ("cheap", "ok")]
    assert "timed out" in attempts[0].error


# -- an upstream dying mid-stream ------------------------------------------------------------------
@pytest.mark.parametrize("resume", [False, True])
def test_upstream_dying_mid_stream(tmp_path, resume):
    strong = fake_openai.Behaviour(answer="one two three four five six", break_stream_after=3)
    cheap = fake_openai.Behaviour(answer="four five six")
    with serve_in_thread(fake_openai.make_app(strong)) as strong_url, serve_in_thread(fake_openai.make_app(cheap)) as cheap_url:
        app = _app(tmp_path, [remote_expert("strong", strong_url, prior_quality=0.9),
                              remote_expert("cheap", cheap_url, prior_quality=0.3)], stream_resume=resume)
        with serve_in_thread(app) as url:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "model": "expertmux/auto", "stream": True, "messages": MSG, "stream_options": {"include_usage": True}})
            row, attempts = _attempts(app)
    assert r.status_code == 200
    events = _sse(r.text)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in events if c.get("choices"))
    partial = attempts[0]
    assert partial.expert == "strong" and partial.status == "error"
    assert partial.completion_tokens == 3  # "one two three" with the expert's (litellm's default) tokenizer
    assert partial.usage_details["partial"] is True and partial.usage_details["partial_answer"] == "one two three"
    assert partial.cost_usd > 0
    if not resume:  # one clean error event, no [DONE], and the row says so
        assert text == "one two three" and "[DONE]" not in r.text
        assert "error" in events[-1] and "strong" in events[-1]["error"]["message"]
        assert row.status == "error" and len(attempts) == 1
        return
    # Continued by the next expert of the ranking, given the partial answer, in the same stream.
    assert text == "one two three" + "four five six" and r.text.rstrip().endswith("data: [DONE]")
    assert not any("error" in e for e in events)
    assert len({e["id"] for e in events}) == 1  # one stream id throughout
    assert sum(1 for e in events for c in e.get("choices") or () if c["delta"].get("role")) == 1
    (sent,) = cheap.calls
    assert sent["messages"][-2] == {"role": "assistant", "content": "one two three"}
    assert row.status == "ok" and row.expert == "cheap"
    assert [(a.expert, a.status) for a in attempts] == [("strong", "error"), ("cheap", "ok")]
    usage = events[-1]["usage"]  # the final usage chunk covers both experts' parts
    assert usage["completion_tokens"] == 3 + 3
    assert row.completion_tokens == sum(a.completion_tokens for a in attempts)


# -- slowloris --------------------------------------------------------------------------------------
def test_slowloris_clients_do_not_hold_other_clients(fake_app_url):
    url, app = fake_app_url
    host, port = url.removeprefix("http://").split(":")
    slow: list[socket.socket] = []
    try:
        for i in range(200):  # half-sent heads: a slowloris attack's connections
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow-" + str(i).encode() + b": ")
            slow.append(sock)
        for _ in range(20):  # and heads with a body that trickles in
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 1000\r\n\r\n{\"model\": ")
            slow.append(sock)
        with httpx.Client(timeout=30) as http:
            for _ in range(20):
                r = http.post(f"{url}/v1/chat/completions", json={"model": "cheap", "messages": MSG})
                assert r.status_code == 200
        for sock in slow:  # a byte more each: the slow clients are still connected, still waiting
            sock.sendall(b"a")
    finally:
        for sock in slow:
            sock.close()


# -- the ledger's database file deleted under the running proxy ------------------------------------
def test_ledger_file_deleted_mid_run_is_recreated_and_later_rows_kept(fake_app_url):
    import os

    url, app = fake_app_url
    ledger = app.state.service.ledger
    db_file = ledger.engine.url.database
    with httpx.Client(timeout=30) as http:
        for _ in range(5):
            assert http.post(f"{url}/v1/chat/completions", json={"model": "cheap", "messages": MSG}).status_code == 200
        assert ledger.flush(20)
        for suffix in ("", "-wal", "-shm"):  # what an operator's `rm var/ledger.db*` does
            if os.path.exists(db_file + suffix):
                os.unlink(db_file + suffix)
        for _ in range(7):
            assert http.post(f"{url}/v1/chat/completions", json={"model": "cheap", "messages": MSG}).status_code == 200
    assert ledger.flush(30)
    assert os.path.exists(db_file) and ledger.file_recreated == 1
    import sqlite3

    with sqlite3.connect(db_file) as conn:  # a fresh connection: what the dashboard and the CLI read
        assert conn.execute("select count(*) from requests").fetchone()[0] == 7
