"""The API under attack, against the real `xmodal serve` process on a loopback socket: a path
traversal corpus on every route, DNS-rebinding Host headers, request floods on searches and on
generation, and an API key that is never logged (the server runs at uvicorn's `trace` level, the
most it can say) and kept in memory only as its digest; given in a file, it is on no command line."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.client
import io
import os
import secrets
import shutil
import statistics
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.encoders.factory import STARTER_DIR
from tests.helpers.live_server import serve_collection

pytestmark = pytest.mark.skipif(not (STARTER_DIR / "xmodal_model.json").is_file(),
                                reason="the starter weights are not in this checkout")
GENERATOR_SHIPPED = (STARTER_DIR / "generator" / "generator.json").is_file()

KEY = "sk-" + "7f3a9c1e5b2d4f60" * 2  # a key a leak would make obvious in any log
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET_MARK = b"xmodal-secret-outside-the-roots"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A small collection of its own (tests replace files by links) and a secret file outside it."""
    from retrieval.compose import run_index
    from retrieval.demo import write_collection
    from retrieval.settings import Settings

    root: Path = tmp_path_factory.mktemp("attack")
    write_collection(root / "media", images=24, sounds=8, seed=7, concepts=8)
    run_index(Settings(db_dir=root / "db", model="starter", workers=1), [root / "media"])
    secret = root / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(_png((9, 9, 9)) + SECRET_MARK)
    return {"root": root, "secret": secret, "log": root / "server.log"}


@pytest.fixture(scope="module")
def server(site):
    key_file = site["root"] / "api-key"
    key_file.write_text(KEY + "\n")
    args = ("--api-key-file", str(key_file), "--log-level", "trace", "--max-active-searches", "16")
    with serve_collection(site["root"] / "db", *args, log_file=site["log"]) as url:
        yield urllib.parse.urlsplit(url)


def _png(colour, size=(32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def _noise_png(rng: np.random.Generator) -> bytes:
    """A picture no other request sends: its drawing can never come from the cache of drawings."""
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _raw(server, method: str, target: str, headers: dict | None = None, body: bytes | None = None):
    """One request sent byte for byte (no client-side normalisation of dot segments)."""
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=60)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": f"127.0.0.1:{server.port}", **AUTH, **(headers or {})}.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# ------------------------------------------------------------------ path traversal on every route

# Dot segments raw and encoded once, twice and as overlong UTF-8; backslashes; absolute paths;
# NUL bytes; Windows and URL forms. Sent byte for byte, so the server sees exactly these.
CORPUS = ["../../../../etc/passwd", "..%2f..%2f..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
          "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", ".%2e/.%2e/.%2e/.%2e/etc/passwd",
          "%252e%252e%252f%252e%252e%252fetc%252fpasswd", "%25252e%25252e%25252fetc%25252fpasswd",
          "..\\..\\..\\..\\etc\\passwd", "..%5c..%5c..%5c..%5cetc%5cpasswd", "..%255c..%255cetc%255cpasswd",
          "/etc/passwd", "%2fetc%2fpasswd", "//etc/passwd", "C:\\Windows\\win.ini", "C:%5cWindows%5cwin.ini",
          "file:%2f%2f%2fetc%2fpasswd", "1%00", "1%00.png", "%00", "%00/../../../../etc/passwd",
          "..%00/..%00/etc/passwd", "%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
          "%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd", "%e0%80%ae%e0%80%ae/%e0%80%ae%e0%80%ae/etc/passwd",
          "%c1%9c..%c1%9c..%c1%9cetc%c1%9cpasswd", "....//....//....//etc/passwd", "..;/..;/..;/etc/passwd",
          "1/../../../../etc/passwd", "./././../../../etc/passwd"]
# Every route, with the attempt where its id or path goes (and appended to the fixed ones).
ROUTES = ["/items/{}", "/items/{}/media", "/items/{}/thumbnail", "/items/1/{}", "/generated/{}", "/static/{}",
          "/docs-assets/{}", "/{}", "/search/{}", "/health/{}", "/info/{}", "/docs/{}", "/openapi.json/{}"]


def _leaks(body: bytes, site: dict) -> bool:
    return b"root:" in body or SECRET_MARK in body or str(site["root"]).encode() in body or b"[boot loader]" in body


@pytest.mark.parametrize("route", ROUTES)
def test_traversal_corpus_on_every_route_reaches_no_file(server, site, route):
    attempts = [*CORPUS, urllib.parse.quote(str(site["secret"]), safe=""), str(site["secret"]).lstrip("/")]
    for attempt in attempts:
        target = route.format(attempt)
        for method in ("GET", "POST"):
            try:
                status, _headers, body = _raw(server, method, target)
            except (http.client.HTTPException, ConnectionError):
                continue  # a request line the HTTP parser refuses outright never reached the app
            assert status in (400, 404, 405, 415, 422), (method, target, status, body[:200])
            assert not _leaks(body, site), (method, target)


def test_traversal_in_filters_and_upload_names_is_refused_or_neutralised(server, site):
    for folder in ["..", "../..", "media/../../outside", "/etc", "media\\..\\..\\outside", str(site["secret"].parent),
                   "media/%2e%2e/%2e%2e", "media/\x00/..", "%c0%ae%c0%ae", "media/images/../../../outside"]:
        body = f'{{"query": "a big red circle", "under": [{_json(folder)}]}}'.encode()
        status, _, answer = _raw(server, "POST", "/search/text", {"Content-Type": "application/json"}, body)
        assert status in (200, 400, 422), (folder, status)
        assert b"root:" not in answer and str(site["root"] / "media").encode() not in answer  # its own words only
        if status == 200:  # a name that happens to be harmless ("%2e%2e" is a folder name) finds nothing outside
            assert b"outside" not in answer
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="../../../etc/passwd\\..\\x.png"'
            f"\r\nContent-Type: image/png\r\n\r\n")
    upload = head.encode() + _png((200, 30, 30)) + f"\r\n--{boundary}--\r\n".encode()
    status, _, answer = _raw(server, "POST", "/search/image",
                             {"Content-Type": f"multipart/form-data; boundary={boundary}"}, upload)
    assert status == 200 and b'"value":"x.png"' in answer  # the folders of a client's file name are dropped


def _json(text: str) -> str:
    import json

    return json.dumps(text)


def _first_image_hit(server) -> dict:
    import json

    body = b'{"query": "a big red circle on grey", "k": 1, "modality": "image", "generate": "never"}'
    status, _, answer = _raw(server, "POST", "/search/text", {"Content-Type": "application/json"}, body)
    assert status == 200
    return json.loads(answer)["results"][0]


def _assert_not_served(server, hit: dict, site: dict) -> None:
    for url in (hit["media_url"], hit["thumbnail_url"]):
        status, _, body = _raw(server, "GET", url)
        assert status == 404 and not _leaks(body, site)


def test_links_out_of_the_roots_are_not_followed(server, site):
    """An indexed file, then its whole folder, replaced by a symbolic link to a place outside."""
    hit = _first_image_hit(server)
    images = site["root"] / "media" / "images"
    target = images / hit["name"]
    original = target.read_bytes()
    target.unlink()
    target.symlink_to(site["secret"])
    try:
        _assert_not_served(server, hit, site)
    finally:
        target.unlink()
        target.write_bytes(original)
    assert _raw(server, "GET", hit["media_url"])[2] == original
    # The folder itself: moved away and replaced by a link to a folder holding a file of the same name.
    decoy = site["root"] / "outside" / "images"
    decoy.mkdir()
    (decoy / hit["name"]).write_bytes(site["secret"].read_bytes())
    moved = images.with_name("images-moved")
    images.rename(moved)
    images.symlink_to(decoy, target_is_directory=True)
    try:
        _assert_not_served(server, hit, site)
    finally:
        images.unlink()
        moved.rename(images)
        shutil.rmtree(decoy)
    assert _raw(server, "GET", hit["media_url"])[0] == 200


# ------------------------------------------------------------------ DNS rebinding

# What a page on an attacker's name sends once that name resolves to 127.0.0.1, and look-alikes.
REBINDING_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "127.0.0.1.nip.io:{port}",
                   "localhost.evil.example:{port}", "evil.example#127.0.0.1", "127.0.0.1@evil.example",
                   "[::1].evil.example", "0.0.0.0:{port}", "127.1:{port}", "2130706433:{port}", "0x7f000001",
                   "localhost.:{port}", "127.0.0.1 evil.example", "evil.example\t"]


def test_dns_rebinding_host_headers_are_refused(server):
    for template in REBINDING_HOSTS:
        host = template.format(port=server.port)
        for method, target in (("GET", "/health"), ("GET", "/items/1/media"), ("POST", "/search/text"), ("GET", "/")):
            try:
                status, _, body = _raw(server, method, target, {"Host": host, "Content-Type": "application/json"},
                                       b'{"query": "cat"}' if method == "POST" else None)
            except (http.client.HTTPException, ConnectionError):
                continue  # refused by the HTTP parser itself
            assert status == 400 and b"unexpected Host header" in body, (host, target, status)
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"LOCALHOST:{server.port}",
                 f"[::1]:{server.port}", "127.0.0.1"):
        assert _raw(server, "GET", "/health", {"Host": host})[0] == 200, host
    # A request without any Host header at all is no browser's, and no rebinding page's either.
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=30)
    connection.putrequest("GET", "/health", skip_host=True)
    connection.endheaders()
    assert connection.getresponse().status == 400
    connection.close()


# ------------------------------------------------------------------ floods


async def _flood_searches(base: str, count: int) -> list:
    import httpx

    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120,
                                 limits=httpx.Limits(max_connections=count)) as client:
        async def one(number: int):
            if number % 3:
                return await client.post("/search/text", json={"query": f"a big red circle {number}", "k": 50,
                                                               "generate": "never"})
            return await client.post("/search/image", files={"file": ("q.png", _png((number, 40, 90)), "image/png")},
                                     data={"generate": "never"})
        return await asyncio.gather(*(one(number) for number in range(count)))


def test_a_search_flood_gets_429_with_retry_after_and_never_a_5xx(server):
    base = f"http://127.0.0.1:{server.port}"
    answers = asyncio.run(_flood_searches(base, 160))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(429) > 0 and statuses.count(200) >= 16
    for answer in answers:
        if answer.status_code == 429:
            assert int(answer.headers["retry-after"]) >= 1 and answer.json()["error"]["code"] == "busy"
    assert _raw(server, "GET", "/health")[0] == 200


def test_the_line_in_front_of_the_searches_is_bounded():
    """Past the limit, a search is refused at once (before its body or a thread), and the line
    frees as searches finish; other routes never queue there."""
    from api.middleware import SearchQueue

    release = asyncio.Event()

    async def slow_search(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = SearchQueue(slow_search, limit=3)

    async def call(path: str) -> tuple[int, dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        await gate({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def scenario():
        waiting = [asyncio.create_task(call("/search/text")) for _ in range(3)]
        await asyncio.sleep(0.01)
        refused, headers = await call("/search/image")
        health = asyncio.create_task(call("/health"))  # not a search: never counted, never refused
        await asyncio.sleep(0.01)
        release.set()
        answered = [status for status, _ in await asyncio.gather(*waiting, health)]
        return refused, headers, answered, (await call("/search/text"))[0]

    refused, headers, answered, later = asyncio.run(scenario())
    assert refused == 429 and headers[b"retry-after"] == b"1"
    assert answered == [200, 200, 200, 200] and later == 200 and gate.active == 0


async def _saturate_generation(base: str, flooders: int, unloaded_samples: int, loaded_samples: int) -> dict:
    import httpx

    rng = np.random.default_rng(11)
    seen: list[tuple[int, str | None, float]] = []  # (status, Retry-After, seconds) of drawing requests
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120,
                                 limits=httpx.Limits(max_connections=flooders + 4)) as client:
        async def text_p50(samples: int) -> tuple[float, list[int]]:
            times, codes = [], []
            for number in range(samples):
                started = time.perf_counter()
                answer = await client.post("/search/text", json={"query": f"small yellow star {number % 4}",
                                                                 "k": 10, "generate": "never"})
                times.append(time.perf_counter() - started)
                codes.append(answer.status_code)
            return statistics.median(times), codes

        async def flooder() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                answer = await client.post("/search/image", data={"generate": "always", "k": "3"},
                                           files={"file": ("noise.png", _noise_png(rng), "image/png")})
                seen.append((answer.status_code, answer.headers.get("retry-after"), time.perf_counter() - started))
                if answer.status_code == 429:
                    await asyncio.sleep(0.1)  # keeps the queue full without spinning the client on two cores

        unloaded, unloaded_codes = await text_p50(unloaded_samples)
        tasks = [asyncio.create_task(flooder()) for _ in range(flooders)]
        await asyncio.sleep(2.0)  # every drawing slot taken, the waiting line full
        loaded, loaded_codes = await text_p50(loaded_samples)
        stop.set()
        await asyncio.gather(*tasks)
    return {"unloaded": unloaded, "loaded": loaded, "text_codes": unloaded_codes + loaded_codes, "drawing": seen}


@pytest.mark.skipif(not GENERATOR_SHIPPED, reason="the starter generator is not in this checkout")
def test_searches_stay_fast_while_generation_is_saturated(server):
    base = f"http://127.0.0.1:{server.port}"
    found = asyncio.run(_saturate_generation(base, flooders=10, unloaded_samples=30, loaded_samples=30))
    drawing = [status for status, _, _ in found["drawing"]]
    assert set(drawing) <= {200, 429}, sorted(set(drawing))
    assert drawing.count(429) > 0 and drawing.count(200) > 0
    assert all(after is not None and int(after) >= 1 for status, after, _ in found["drawing"] if status == 429)
    # Refusals are immediate: a client is told to come back, not kept waiting behind the queue.
    refused = [seconds for status, _, seconds in found["drawing"] if status == 429]
    assert statistics.median(refused) < 1.0
    assert set(found["text_codes"]) == {200}  # plain searches are never refused for the drawings' sake
    # Generous, relative to this machine right now: before the drawing queue, searches waited
    # behind every picture on the encoder's thread (about a second each) or were refused. The
    # half-second floor keeps a neighbour's load during the loaded half alone from failing it.
    assert found["loaded"] < max(10 * found["unloaded"] + 0.05, 0.5), (found["loaded"], found["unloaded"])


# ------------------------------------------------------------------ the API key


def test_the_key_is_kept_only_as_its_digest(site):
    """After the app is built and started from the environment, as `xmodal serve` does it, neither
    its settings, nor the environment, nor any object the process holds carries the plain key."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from retrieval.settings import Settings

    digest = _set_fresh_key()
    try:
        app = create_app(Settings(db_dir=site["root"] / "db"))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            assert "XMODAL_API_KEY" not in os.environ
            assert app.state.xmodal.server.api_key is None and app.state.key_hash == digest
            assert client.get("/items/1").status_code == 401
            assert client.get("/info", headers=AUTH).status_code == 401  # another key: this one is random
            assert not _holds_plain_key(digest)
    finally:
        os.environ.pop("XMODAL_API_KEY", None)


def _set_fresh_key() -> bytes:
    """Put a new random key in the environment and return only its digest: no caller holds the key."""
    key = secrets.token_urlsafe(24)
    os.environ["XMODAL_API_KEY"] = key
    return hashlib.sha256(key.encode()).digest()


def _holds_plain_key(digest: bytes) -> bool:
    """Whether any string or bytes reachable from a live container hashes to `digest`."""
    gc.collect()
    for holder in gc.get_objects():
        for value in gc.get_referents(holder):
            if type(value) in (str, bytes) and 16 <= len(value) <= 64:  # type(): no proxy objects woken
                raw = value.encode() if isinstance(value, str) else value
                if hashlib.sha256(raw).digest() == digest:
                    return True
    return False


def test_a_key_file_must_hold_one_key(site, tmp_path):
    from tests.conftest import run_xmodal

    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    db = str(site["root"] / "db")
    refused = run_xmodal("serve", "--db", db, "--api-key-file", str(empty), timeout=60)
    assert refused.returncode == 2 and "is empty" in refused.stderr
    both = run_xmodal("serve", "--db", db, "--api-key-file", str(empty), "--api-key", KEY, timeout=60)
    assert both.returncode == 2 and "not both" in both.stderr and KEY not in both.stderr


def test_the_key_never_reaches_the_servers_log(server, site):
    """Runs last: every request above carried the key; these send it every way, right and wrong."""
    wrong = "sk-" + "0badc0ffee0badc0" * 2
    assert _raw(server, "GET", "/info")[0] == 200
    assert _raw(server, "GET", "/info", {"Authorization": f"Bearer {wrong}"})[0] == 401
    assert _raw(server, "GET", "/items/1", {"Authorization": "", "Cookie": f"xmodal_key={KEY}"})[0] == 200
    assert _raw(server, "GET", "/items/1", {"Authorization": f"Basic {KEY}"})[0] == 401
    time.sleep(0.5)  # let the log reach the file
    log = site["log"].read_text(errors="replace")
    assert "TRACE" in log and "/search/text" in log  # the server did log everything it logs
    assert KEY not in log and wrong not in log and KEY[3:19] not in log
    # Given in a file, the key is on no process's command line or environment either (ps shows both).
    for proc in Path("/proc").glob("[0-9]*"):
        for part in ("cmdline", "environ"):
            try:
                assert KEY.encode() not in (proc / part).read_bytes(), (proc, part)
            except OSError:
                pass  # a process that ended meanwhile, or another user's
