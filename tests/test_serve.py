"""`xmodal serve` as a process on a real socket: the demo collection answers words, pictures and
sounds correctly, and raw requests no HTTP client would send (dot segments, NUL bytes, chunked
bodies without a length, a megabyte of query string) get refusals, never files or crashes."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import uuid
from pathlib import Path

import pytest

from retrieval.encoders.factory import STARTER_DIR
from tests.helpers.live_server import serve_collection

pytestmark = pytest.mark.skipif(not (STARTER_DIR / "xmodal_model.json").is_file(),
                                reason="the starter weights are not in this checkout")


@pytest.fixture(scope="module")
def server(demo_dir):
    with serve_collection(demo_dir / "db", "--max-upload-mb", "1") as url:
        yield urllib.parse.urlsplit(url)


def _request(server, method: str, target: str, body: bytes | None = None, headers: dict | None = None,
             chunked: bool = False) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=60)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None and not chunked:
            connection.putheader("Content-Length", str(len(body)))
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        if body is not None:
            if chunked:
                for start in range(0, len(body), 16384):
                    piece = body[start:start + 16384]
                    try:
                        connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                    except (BrokenPipeError, ConnectionResetError):
                        break  # the server refused and closed: its answer is waiting
                else:
                    connection.send(b"0\r\n\r\n")
            else:
                connection.send(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _multipart(name: str, data: bytes, content_type: str, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
             for key, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _search_file(server, endpoint: str, path: Path, content_type: str, modality: str) -> dict:
    body, content_type = _multipart(path.name, path.read_bytes(), content_type, {"k": "5", "modality": modality})
    status, answer = _request(server, "POST", endpoint, body, {"Content-Type": content_type})
    assert status == 200, answer
    return json.loads(answer)


def test_demo_collection_answers_words_pictures_and_sounds(server, demo_dir):
    status, body = _request(server, "POST", "/search/text",
                            json.dumps({"query": "a big red circle on grey", "k": 4, "modality": "image"}).encode(),
                            {"Content-Type": "application/json"})
    assert status == 200
    assert all(hit["name"].startswith("big-red-circle-on-grey") for hit in json.loads(body)["results"])

    picture = sorted((demo_dir / "media" / "images").glob("small-yellow-star-on-white-*.png"))[0]
    by_picture = _search_file(server, "/search/image", picture, "image/png", "image")["results"]
    assert by_picture[0]["name"] == picture.name
    assert all(hit["name"].startswith("small-yellow-star-on-white") for hit in by_picture[:3])

    sound = demo_dir / "queries" / "big-orange-cross-on-grey.wav"  # a fresh sound, not in the collection
    by_sound = _search_file(server, "/search/audio", sound, "audio/wav", "image")["results"]
    assert all(hit["name"].startswith("big-orange-cross-on-grey") for hit in by_sound[:3])
    to_sounds = _search_file(server, "/search/audio", sound, "audio/x-wav", "audio")["results"]
    assert to_sounds[0]["modality"] == "audio" and to_sounds[0]["segment"] is not None


RAW_TRAVERSALS = ["/items/../../etc/passwd", "/items/1/../../../etc/passwd", "/items/../../../../etc/passwd/media",
                  "/items/%2e%2e/%2e%2e/etc/passwd/media", "/items/..%2f..%2fetc%2fpasswd/thumbnail",
                  "/items/1/media/../../../../etc/passwd", "/items/..\\..\\etc\\passwd/media",
                  "/items//etc/passwd/media", "/items/./1/../../etc/passwd"]


@pytest.mark.parametrize("target", RAW_TRAVERSALS)
def test_raw_dot_segments_never_reach_a_file(server, demo_dir, target):
    status, body = _request(server, "GET", target)
    assert status in (400, 404, 422) and b"root:" not in body and str(demo_dir).encode() not in body


def test_nul_bytes_and_huge_query_strings_are_refused_and_the_server_lives_on(server):
    for target in ("/items/1%00/media", "/items/1\x00/media"):
        try:
            status, _ = _request(server, "GET", target)
        except (http.client.HTTPException, ConnectionError):
            status = 400  # a request line with a raw NUL may be dropped outright
        assert status in (400, 404, 422)
    try:
        status, _ = _request(server, "GET", "/health?" + "q=" + "x" * 1_000_000)
    except ConnectionError:
        status = 400  # h11 drops a request line this long without an answer; httptools answers 400
    assert 400 <= status < 500
    assert _request(server, "GET", "/health")[0] == 200


def test_chunked_upload_without_length_over_the_limit_is_cut_off(server):
    body, content_type = _multipart("big.png", b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20), "image/png", {})
    status, answer = _request(server, "POST", "/search/image", body, {"Content-Type": content_type}, chunked=True)
    assert status == 413 and json.loads(answer)["error"]["code"] == "too_large"
    assert _request(server, "GET", "/health")[0] == 200


def test_a_port_taken_while_the_server_starts_is_given_up_for_another(demo_dir, monkeypatch):
    """`xmodal bench load` and these tests pick a free port, but the server binds it only after
    loading its model: when something takes it meanwhile, the next port is tried."""
    import socket
    import urllib.request

    from retrieval.bench import live_server

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = live_server.free_port
        monkeypatch.setattr(live_server, "free_port", lambda: next(ports, None) or real_free_port())
        with serve_collection(demo_dir / "db") as url:
            assert urllib.parse.urlsplit(url).port != taken
            with urllib.request.urlopen(url + "/health", timeout=30) as response:
                assert json.loads(response.read())["status"] == "ok"
