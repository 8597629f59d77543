"""What a request must show before its body is read, against a real ``krypton serve``.

Raw sockets send the headers and only the start of a large body, then wait
for the answer: a service that reads the body before refusing would wait for
the rest, and the test fails on its deadline.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from krypton.service.auth import KeyStore
from tests.service import helpers

BOUNDARY = "krypton-test-boundary"
HUGE = 200 * 2**20


@pytest.fixture(scope="module")
def keyed_server(registry: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[str, int, str]]:
    """A keyed ``krypton serve`` (no worker needed): host, port and a valid key."""
    folder = tmp_path_factory.mktemp("intake")
    store = KeyStore(folder / "keys.json")
    token = store.add("door", "heatmaps")
    with helpers.serving(registry, log=folder / "serve.log", KRYPTON_KEYS_FILE=str(store.path),
                         KRYPTON_EMBEDDED_WORKERS="0") as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port), token


def _answer(server: tuple[str, int, str], head: str, body_sent: int, *,
            chunked: bool = False, deadline: float = 10.0) -> tuple[int, int]:
    """Send ``head`` and up to ``body_sent`` bytes of body (chunked if asked) while reading;
    the status the server answered with and how many body bytes had gone by then."""
    host, port, _ = server
    with socket.create_connection((host, port), timeout=deadline) as connection:
        connection.sendall(head.encode("latin-1"))
        connection.setblocking(False)
        sent, answer, started = 0, b"", time.monotonic()
        piece = b"x" * 65536
        opening = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
                   'filename="scan.dcm"\r\n\r\n').encode()
        connection.sendall(f"{len(opening):x}\r\n".encode() + opening + b"\r\n" if chunked
                           else opening)
        pending = b""
        while b"\r\n" not in answer and time.monotonic() - started < deadline:
            try:
                answer += connection.recv(4096)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            if not pending and sent < body_sent:
                pending = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
                sent += len(piece)
            if pending and b"\r\n" not in answer:
                try:
                    pending = pending[connection.send(pending):]
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    time.sleep(0.001)
            else:
                time.sleep(0.01)
    assert answer.startswith(b"HTTP/1.1 "), f"no answer within {deadline} s after {sent} bytes"
    return int(answer.split()[1]), sent


def _head(path: str, *, length: int | None, token: str | None = None,
          first_token: str | None = None) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: krypton",
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}"]
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    lines += [f"Authorization: Bearer {t}" for t in (first_token, token) if t]
    return "\r\n".join(lines) + "\r\n\r\n"


def test_a_large_body_without_a_key_is_refused_before_it_is_read(
        keyed_server: tuple[str, int, str]) -> None:
    status, sent = _answer(keyed_server, _head("/v1/heatmaps", length=HUGE), HUGE)
    assert status == 401
    assert sent < 8 * 2**20, f"{sent} bytes of the body went before the answer"


def test_a_body_declared_larger_than_its_route_takes_is_refused_before_it_is_read(
        keyed_server: tuple[str, int, str]) -> None:
    token = keyed_server[2]
    status, sent = _answer(keyed_server, _head("/v1/heatmaps", length=40 * 2**20, token=token),
                           40 * 2**20)
    assert status == 413
    assert sent < 8 * 2**20, f"{sent} bytes of the body went before the answer"


def test_a_route_without_uploads_refuses_a_megabyte_body_from_its_length(
        keyed_server: tuple[str, int, str]) -> None:
    token = keyed_server[2]
    head = _head("/v1/heatmaps/0123/heatmap.png", length=2**20, token=token)
    status, _ = _answer(keyed_server, head.replace("POST", "GET", 1), 0)
    assert status == 413


def test_a_chunked_body_is_cut_off_at_its_routes_limit(
        keyed_server: tuple[str, int, str]) -> None:
    token = keyed_server[2]
    status, sent = _answer(keyed_server, _head("/v1/heatmaps", length=None, token=token),
                           HUGE, chunked=True, deadline=60)
    assert status == 413
    assert sent < 48 * 2**20, f"{sent} bytes of the body went before the answer"


def test_a_tuning_upload_from_a_key_without_the_admin_scope_is_refused_before_it_is_read(
        keyed_server: tuple[str, int, str]) -> None:
    token, body = keyed_server[2], 500 * 2**20  # the tuning route takes sixteen images
    status, sent = _answer(keyed_server, _head("/v1/datasets/retina/tuning", length=body,
                                               token=token), body)
    assert status == 403
    assert sent < 8 * 2**20, f"{sent} bytes of the body went before the answer"


def test_the_door_reads_the_key_the_routes_read_when_two_are_sent(
        keyed_server: tuple[str, int, str]) -> None:
    # The routes read the first Authorization header: a valid key after an invalid one
    # must not open the door.
    head = _head("/v1/heatmaps", length=30 * 2**20, token=keyed_server[2],
                 first_token="kr_not-a-key")
    status, sent = _answer(keyed_server, head, 30 * 2**20)
    assert status == 401
    assert sent < 8 * 2**20, f"{sent} bytes of the body went before the answer"
