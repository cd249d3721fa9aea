"""The HTTP API as a client sees it: the real app (real starter model, real collection, real files)
driven through httpx, its answers, its limits and its refusals."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.data import world
from retrieval.demo import write_collection
from retrieval.encoders.factory import STARTER_DIR
from retrieval.media.limits import MediaLimits
from retrieval.settings import ServerSettings, Settings
from tests.helpers.media_builders import build_wav, encode_image

pytestmark = pytest.mark.skipif(not (STARTER_DIR / "xmodal_model.json").is_file(),
                                reason="the starter weights are not in this checkout")

KEY = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """48 images and 16 sounds of 12 concepts, indexed with the starter model."""
    from retrieval.compose import run_index

    root = tmp_path_factory.mktemp("api")
    write_collection(root / "media", images=48, sounds=16, seed=5, concepts=12)
    run_index(Settings(db_dir=root / "db", model="starter", workers=1), [root / "media"])
    return root


def _client(collection: Path, server: ServerSettings | None = None, limits: MediaLimits | None = None):
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = Settings(db_dir=collection / "db", limits=limits or MediaLimits())
    app = create_app(settings, server or ServerSettings())
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(collection):
    with _client(collection) as client:
        yield client


def _png(colour=(200, 30, 30), size=(64, 64)) -> bytes:
    return encode_image(Image.new("RGB", size, colour), "PNG")


def _sound_of(concept_key: str, seed: int = 0) -> bytes:
    size, colour, shape, _on, background = concept_key.split()
    concept = world.Concept(shape=shape, colour=colour, size=size, background=background)
    wave = world.render_sound(concept, np.random.default_rng(seed))
    return build_wav((np.clip(wave, -1, 1) * 32000).astype(np.int16), world.SAMPLE_RATE)


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["message"]


# ------------------------------------------------------------------ answers


def test_text_query_finds_the_named_concept_with_urls_and_no_server_paths(client, collection):
    response = client.post("/search/text", json={"query": "a big red circle on grey", "k": 4, "modality": "image"})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == {"kind": "text", "value": "a big red circle on grey"}
    assert len(body["results"]) == 4 and body["took_ms"] > 0
    for hit in body["results"]:
        assert hit["name"].startswith("big-red-circle-on-grey"), hit
        assert hit["path"] == f"media/images/{hit['name']}" and str(collection) not in response.text
        assert hit["media_url"] == f"/items/{hit['id']}/media"
        assert hit["thumbnail_url"] == f"/items/{hit['id']}/thumbnail"
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_sound_upload_finds_pictures_of_what_it_sounds_like(client):
    sound = _sound_of("small cyan circle on black", seed=11)
    response = client.post("/search/audio", files={"file": ("query.wav", sound, "audio/wav")},
                           data={"k": "3", "modality": "image"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == {"kind": "audio", "value": "query.wav"}
    assert [hit["modality"] for hit in body["results"]] == ["image"] * 3
    assert body["results"][0]["name"].startswith("small-cyan-circle-on-black")


def test_image_upload_finds_itself_first(client, collection):
    path = sorted((collection / "media" / "images").iterdir())[7]
    response = client.post("/search/image", files={"file": (path.name, path.read_bytes(), "image/png")})
    top = response.json()["results"][0]
    assert top["name"] == path.name and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_text_to_sound_results_carry_the_matching_time_range(client):
    body = client.post("/search/text", json={"query": "big red star on stripes", "modality": "audio"}).json()
    assert body["results"] and all(hit["modality"] == "audio" for hit in body["results"])
    for hit in body["results"]:
        assert hit["segment"] is None or 0 <= hit["segment"]["start"] < hit["segment"]["end"]


def test_more_like_this_starts_with_the_item_itself(client):
    first = client.post("/search/text", json={"query": "tiny blue triangle on black", "k": 1}).json()["results"][0]
    again = client.post("/search/item", json={"id": first["id"], "k": 3}).json()
    assert again["query"] == {"kind": "item", "value": str(first["id"])}
    assert again["results"][0]["id"] == first["id"] and again["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_item_metadata_media_and_thumbnail(client, collection):
    hit = client.post("/search/text", json={"query": "a big red circle on grey", "k": 1,
                                            "modality": "image"}).json()["results"][0]
    meta = client.get(f"/items/{hit['id']}").json()
    assert meta["modality"] == "image" and meta["format"] == "png" and meta["width"] == 128
    original = (collection / "media" / "images" / hit["name"]).read_bytes()
    media = client.get(hit["media_url"])
    assert media.status_code == 200 and media.content == original
    assert media.headers["content-type"] == "image/png" and media.headers["x-content-type-options"] == "nosniff"
    thumb = client.get(hit["thumbnail_url"])
    assert thumb.headers["content-type"] in ("image/webp", "image/jpeg")
    assert Image.open(io.BytesIO(thumb.content)).size == (128, 128)  # never upscaled past the original
    sound = client.post("/search/text", json={"query": "big red star on stripes", "k": 1,
                                              "modality": "audio"}).json()["results"][0]
    waveform = Image.open(io.BytesIO(client.get(sound["thumbnail_url"]).content))
    assert waveform.width == 256 and waveform.height < waveform.width
    partial = client.get(sound["media_url"], headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206 and len(partial.content) == 100 and partial.content[:4] == b"RIFF"


def test_health_and_info(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["model"] == "starter" and info["items"] == {"image": 48, "audio": 16}
    assert info["limits"]["max_upload_bytes"] == 25 * 2**20 and info["auth"] is False
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/search/text", "/search/image", "/search/audio",
                                                                   "/items/{item_id}/media", "/health", "/info"}


def test_the_page_and_its_assets_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_api_docs_need_no_network(client):
    for page, asset in (("/docs", "/docs-assets/swagger-ui-bundle.js"), ("/redoc", "/docs-assets/redoc.standalone.js")):
        response = client.get(page)
        assert response.status_code == 200 and asset in response.text and "https://" not in response.text
        assert "https:" not in response.headers["content-security-policy"]
        script = client.get(asset)
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]


# ------------------------------------------------------------------ invalid queries


@pytest.mark.parametrize("body", [
    {"query": "cat", "k": 0}, {"query": "cat", "k": 10**9}, {"query": "cat", "k": "ten"},
    {"query": "x" * 1_000_000}, {"query": ""}, {"query": "   "}, {"query": "cat", "modality": "video"},
    {"query": "cat", "unexpected": 1}, {"k": 3}, [], "cat",
])
def test_invalid_text_queries_are_422_with_a_short_message(client, body):
    response = client.post("/search/text", json=body)
    message = _error(response, 422)
    assert len(response.content) < 500 and "xxxxxxxxxx" not in message


def test_a_text_query_sent_as_form_data_is_422(client):
    _error(client.post("/search/text", data={"query": "cat"}), 422)


def test_unknown_item_is_404_and_unknown_route_too(client):
    assert "no item" in _error(client.get("/items/999999"), 404)
    assert "no item" in _error(client.post("/search/item", json={"id": 999999}), 404)
    _error(client.get("/nothing/here"), 404)


@pytest.mark.parametrize("upload, endpoint, status", [
    (("sound.wav", "SOUND", "audio/wav"), "/search/image", 415),  # a sound where a picture is expected
    (("pic.png", "PNG", "image/png"), "/search/audio", 415),
    (("pic.png", "JPEG", "image/png"), "/search/image", 415),  # declared PNG, bytes are JPEG
    (("pic.png", "PNG", "audio/wav"), "/search/image", 415),  # declared a sound, bytes are PNG
    (("pic.heic", "PNG", "image/heic"), "/search/image", 415),  # a type xmodal does not accept
    (("notes.txt", b"just some words\n" * 20, "text/plain"), "/search/image", 415),
    (("pic.png", "TRUNCATED_PNG", "image/png"), "/search/image", 422),
    (("bomb.png", "BOMB", "image/png"), "/search/image", 413),  # 2 KB declaring a giant canvas
    (("pic.png", "PNG", "application/octet-stream"), "/search/image", 200),  # no declaration: bytes decide
])
def test_uploads_are_checked_by_their_bytes(client, upload, endpoint, status):
    from retrieval.data.samples import _png_bomb

    name, content, declared = upload
    png = _png()
    data = {"SOUND": _sound_of("big red star on stripes"), "PNG": png, "TRUNCATED_PNG": png[: len(png) // 2],
            "JPEG": encode_image(Image.new("RGB", (32, 32), "red"), "JPEG"), "BOMB": _png_bomb()}.get(content, content)
    response = client.post(endpoint, files={"file": (name, data, declared)})
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        _error(response, status)


def test_upload_field_errors(client):
    _error(client.post("/search/image", data={"k": "3"}), 422)  # no file at all
    _error(client.post("/search/image", files={"file": ("a.png", _png(), "image/png")}, data={"k": "0"}), 422)
    _error(client.post("/search/image", files={"file": ("a.png", _png(), "image/png")},
                       data={"modality": "video"}), 422)


def test_an_audio_bomb_is_refused_from_its_header(collection):
    """A sound longer than the duration cap is refused (413) before it is decoded."""
    three_seconds = build_wav(np.zeros(3 * 16000, dtype=np.int16), 16000)
    with _client(collection, limits=MediaLimits(max_audio_seconds=2.0)) as client:
        assert "s" in _error(client.post("/search/audio", files={"file": ("long.wav", three_seconds, "audio/wav")}),
                             413)


def test_uploads_over_the_limit_are_refused_while_streaming(collection):
    big = b"\x89PNG\r\n\x1a\n" + bytes(200 * 1024)
    with _client(collection, ServerSettings(max_upload_bytes=64 * 1024)) as client:
        assert "limit" in _error(client.post("/search/image", files={"file": ("big.png", big, "image/png")}), 413)

        received = []

        def chunks():  # no Content-Length: the server must count as it reads
            body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
                    b"Content-Type: image/png\r\n\r\n" + big + b"\r\n--b--\r\n")
            for start in range(0, len(body), 8192):
                received.append(start)
                yield body[start:start + 8192]

        response = client.post("/search/image", content=chunks(),
                               headers={"content-type": "multipart/form-data; boundary=b"})
        _error(response, 413)
        # Still answering normally afterwards.
        assert client.post("/search/image", files={"file": ("a.png", _png(), "image/png")}).status_code == 200


# ------------------------------------------------------------------ files by id only


# Literal dot segments ("../", "1/../2") are resolved by every HTTP client before sending, so
# tests/test_serve.py sends those byte for byte to the real server.
TRAVERSALS = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2Fetc%2Fpasswd", "/etc/passwd",
              "1%00", "1%00.png", "%00", "%2e%2e", "-1", "0", "1.5", "1e3", "0x1", "%20", "99999999999999999999999",
              "1;2", "..%5c..%5cwindows", "%252e%252e%252fetc"]


@pytest.mark.parametrize("suffix", ["", "/media", "/thumbnail"])
def test_path_traversal_on_every_id_route_gets_nothing(client, collection, suffix):
    for attempt in TRAVERSALS:
        response = client.get(f"/items/{attempt}{suffix}")
        assert response.status_code in (404, 422), (attempt, response.status_code)
        assert "root:" not in response.text and str(collection) not in response.text
        assert response.json()["error"]["code"] in ("not_found", "invalid")


def test_a_file_replaced_by_a_link_outside_the_roots_is_refused(client, collection, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png((1, 2, 3)))
    hit = client.post("/search/text", json={"query": "small yellow star, white background", "k": 1,
                                            "modality": "image"}).json()["results"][0]
    target = collection / "media" / "images" / hit["name"]
    original = target.read_bytes()
    target.unlink()
    target.symlink_to(secret)
    try:
        _error(client.get(hit["media_url"]), 404)
        _error(client.get(hit["thumbnail_url"]), 404)
        assert client.get(f"/items/{hit['id']}").status_code == 200  # the metadata is the index's own
    finally:
        target.unlink()
        target.write_bytes(original)
    assert client.get(hit["media_url"]).content == original


# ------------------------------------------------------------------ keys, hosts, origins


def test_api_key_guards_every_data_route(collection):
    with _client(collection, ServerSettings(api_key=KEY)) as client:
        query = {"query": "a big red circle on grey", "k": 1}
        missing = client.post("/search/text", json=query)
        _error(missing, 401)
        assert missing.headers["www-authenticate"] == "Bearer"
        _error(client.post("/search/text", json=query, headers={"Authorization": "Bearer wrong-key-of-some-length"}),
               401)
        _error(client.post("/search/text", json=query, headers={"Authorization": KEY}), 401)  # no scheme
        for path in ("/info", "/items/1", "/items/1/media", "/items/1/thumbnail"):
            _error(client.get(path), 401)
        good = client.post("/search/text", json=query, headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200 and good.json()["results"]
        client.cookies.set("xmodal_key", KEY)  # the page's way, so that <img src> works too
        assert client.get("/items/1/thumbnail").status_code == 200
        client.cookies.clear()
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        assert client.get("/info", headers={"Authorization": f"Bearer {KEY}"}).json()["auth"] is True


def test_listening_beyond_loopback_needs_a_key():
    from retrieval.settings import ServerSettingsError

    with pytest.raises(ServerSettingsError, match="API key"):
        ServerSettings(host="0.0.0.0").checked()
    with pytest.raises(ServerSettingsError, match="16 characters"):
        ServerSettings(host="0.0.0.0", api_key="short").checked()
    assert ServerSettings(host="0.0.0.0", api_key=KEY).checked().host_names() >= {"*"}


def test_serve_refuses_an_open_address_without_a_key(collection):
    from tests.conftest import run_xmodal

    result = run_xmodal("serve", "--db", str(collection / "db"), "--host", "0.0.0.0", timeout=60)
    assert result.returncode == 2 and "without an API key" in result.stderr


def test_serve_with_another_model_fails_in_one_line(collection, micro_model):
    from tests.conftest import run_xmodal
    from tests.helpers.live_server import free_port

    result = run_xmodal("serve", "--db", str(collection / "db"), "--model", str(micro_model), "--port",
                        str(free_port()), timeout=120)
    assert result.returncode == 1 and "built with starter" in result.stderr
    assert "Traceback" not in result.stderr


def test_unexpected_host_headers_are_refused(client):
    """A DNS-rebinding page reaches the loopback server under its own name: refused."""
    _error(client.get("/health", headers={"Host": "evil.example"}), 400)
    _error(client.post("/search/text", json={"query": "cat"}, headers={"Host": "evil.example:8000"}), 400)
    assert client.get("/health", headers={"Host": "localhost:8000"}).status_code == 200


def test_cors_is_closed_unless_configured(client, collection):
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    with _client(collection, ServerSettings(cors_origins=("https://elsewhere.example",))) as open_client:
        allowed = open_client.get("/health", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://elsewhere.example"


# ------------------------------------------------------------------ failures and load


def test_an_unexpected_failure_is_a_500_without_details(client, monkeypatch):
    state = client.app.state.xmodal

    def broken(*args, **kwargs):  # an injected fault with a server path in its message
        raise RuntimeError("/srv/private/collection exploded")

    monkeypatch.setattr(state.engine, "search_text", broken)
    response = client.post("/search/text", json={"query": "cat"})
    message = _error(response, 500)
    assert "/srv/private" not in response.text and "Traceback" not in response.text and "log" in message


def test_too_many_searches_at_once_get_429_with_retry_after(collection):
    with _client(collection, ServerSettings(max_active_searches=1)) as client:
        with client.app.state.xmodal.admission.slot():  # one search in progress
            busy = client.post("/search/text", json={"query": "cat"})
            _error(busy, 429)
            assert busy.headers["retry-after"] == "1"
        assert client.post("/search/text", json={"query": "cat"}).status_code == 200


def test_concurrent_text_queries_are_batched_and_answered_correctly(client):
    state = client.app.state.xmodal
    batcher = state.engine.batcher
    queries = ["a big red circle on grey", "small yellow star, white background", "tiny blue triangle on black",
               "a large green square on a striped background"] * 2
    expected = {q: client.post("/search/text", json={"query": q, "k": 3}).json()["results"] for q in queries}
    holding, release = threading.Event(), threading.Event()

    def hold(encoder) -> None:
        holding.set()
        release.wait(60)

    blocker = threading.Thread(target=batcher.run, args=(hold,))
    blocker.start()  # hold the encoder so that the eight queries below queue up together
    assert holding.wait(30)
    batches_before, answers = batcher.batches, {}

    def ask(number: int, query: str) -> None:
        answers[number] = client.post("/search/text", json={"query": query, "k": 3}).json()["results"]

    askers = [threading.Thread(target=ask, args=(n, q)) for n, q in enumerate(queries)]
    for thread in askers:
        thread.start()
    deadline = time.monotonic() + 30
    while batcher._queue.qsize() < len(queries) and time.monotonic() < deadline:  # all of them waiting
        time.sleep(0.01)
    release.set()
    for thread in askers + [blocker]:
        thread.join(30)
    assert batcher.batches - batches_before < len(queries)  # some were encoded together
    for number, query in enumerate(queries):
        assert [h["id"] for h in answers[number]] == [h["id"] for h in expected[query]]
        assert [h["score"] for h in answers[number]] == pytest.approx([h["score"] for h in expected[query]],
                                                                      abs=1e-4)


def test_a_new_generation_is_picked_up_without_a_restart(tmp_path):
    from retrieval.compose import run_index

    media = tmp_path / "media"
    write_collection(media, images=12, sounds=0, seed=8, concepts=12)
    settings = Settings(db_dir=tmp_path / "db", model="starter", workers=1)
    run_index(settings, [media])
    extra = tmp_path / "more"
    extra.mkdir()
    newcomer = extra / "newcomer.png"
    Image.new("RGB", (96, 96), (250, 250, 10)).save(newcomer)
    with _client(tmp_path, ServerSettings(reload_seconds=0.1)) as client:
        before = client.get("/health").json()["generation"]
        first = client.post("/search/image", files={"file": ("q.png", newcomer.read_bytes(), "image/png")}).json()
        assert first["results"][0]["score"] < 0.999  # not in the collection yet
        # A search in flight while the new generation arrives: hold the encoder so it waits mid-way.
        release, in_flight = threading.Event(), {}
        batcher = client.app.state.xmodal.engine.batcher
        blocker = threading.Thread(target=batcher.run, args=(lambda encoder: release.wait(30),))
        blocker.start()
        asker = threading.Thread(target=lambda: in_flight.update(
            response=client.post("/search/text", json={"query": "a big red circle on grey", "k": 3})))
        asker.start()
        run_index(settings, [extra])  # another writer, as `xmodal index` would be
        deadline = time.monotonic() + 10
        while client.get("/health").json()["generation"] == before and time.monotonic() < deadline:
            time.sleep(0.1)
        release.set()
        asker.join(30)
        blocker.join(30)
        assert in_flight["response"].status_code == 200 and len(in_flight["response"].json()["results"]) == 3
        top = client.post("/search/image", files={"file": ("q.png", newcomer.read_bytes(),
                                                           "image/png")}).json()["results"][0]
        assert top["name"] == "newcomer.png" and top["path"] == "more/newcomer.png"
        assert client.get(top["media_url"]).content == newcomer.read_bytes()  # the new root is servable
        assert json.loads(client.get("/info").content)["items"]["image"] == 13


# ------------------------------------------------------------------ the match decision


def test_the_decision_says_whether_anything_matches(client):
    present = client.post("/search/text", json={"query": "a big red circle on grey", "modality": "image"}).json()
    absent = client.post("/search/text", json={"query": "a big purple hexagon on white", "modality": "image"}).json()
    assert present["decision"]["match"] is True and present["decision"]["confidence"] > 0.5
    assert absent["decision"]["match"] is False and absent["decision"]["confidence"] < 0.5
    assert absent["results"], "the nearest items are still listed"
    for query in ("a big red circle on grey", "a big purple hexagon on white", "a small purple star on black"):
        many, one = (client.post("/search/text", json={"query": query, "modality": "image", "k": k}).json()
                     for k in (5, 1))
        assert one["decision"] == many["decision"] and len(one["results"]) == 1, query  # k does not sway it
    lenient = client.post("/search/text", json={"query": "a big purple hexagon on white", "min_confidence": 0.0})
    assert lenient.json()["decision"]["match"] is True and lenient.json()["decision"]["threshold"] == 0.0
    sound = _sound_of("small cyan circle on black", seed=12)
    heard = client.post("/search/audio", files={"file": ("q.wav", sound, "audio/wav")}, data={"modality": "image"})
    assert heard.json()["decision"]["match"] is True
    unheard = client.post("/search/audio", files={"file": ("q.wav", _sound_of("big purple hexagon on white"),
                                                           "audio/wav")}, data={"modality": "image"})
    assert unheard.json()["decision"]["match"] is False


def test_the_cli_prints_the_decision(collection):
    from tests.conftest import run_json, run_xmodal

    db = str(collection / "db")
    table = run_xmodal("search", "a big purple hexagon on white", "--db", db, "--modality", "image", check=True)
    assert "NO GOOD MATCH" in table.stdout and "confidence" in table.stdout
    if GENERATOR_SHIPPED:
        line = next(line for line in table.stdout.splitlines() if line.startswith("GENERATED"))
        assert Path(line.split(": ", 1)[1]).is_file()
    quiet = run_json("search", "a big purple hexagon on white", "--db", db, "--no-generate")
    assert quiet["decision"]["match"] is False and quiet["generated"] is None
    found = run_json("search", "a big red circle on grey", "--db", db, "-k", "2")
    assert found["decision"]["match"] is True


GENERATOR_SHIPPED = (STARTER_DIR / "generator" / "generator.json").is_file()


@pytest.mark.skipif(not GENERATOR_SHIPPED, reason="the starter generator is not in this checkout")
def test_nothing_matches_so_a_labelled_picture_is_generated(client, collection):
    items_before = client.get("/info").json()["items"]
    absent = client.post("/search/text", json={"query": "a big purple hexagon on white", "modality": "image"}).json()
    made = absent["generated"]
    assert made["generated"] is True and made["url"] == f"/generated/{made['id']}"
    assert made["query_kind"] == "text" and made["query_value"] == "a big purple hexagon on white"
    assert made["model"] == "starter" and -1 <= made["score"] <= 1
    picture = client.get(made["url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert picture.headers["x-xmodal-generated"] == "true"
    assert Image.open(io.BytesIO(picture.content)).size == (64, 64)
    again = client.post("/search/text", json={"query": "a big purple hexagon on white", "modality": "image"}).json()
    assert again["generated"]["id"] == made["id"]  # drawn once, found the second time
    assert client.get("/info").json()["items"] == items_before  # never added to the collection
    assert (collection / "db" / "generated" / f"{made['id']}.json").is_file()  # provenance beside it
    # The controls: never, always; and a match draws nothing by default.
    never = client.post("/search/text", json={"query": "a big purple hexagon on white", "generate": "never"})
    assert never.json()["generated"] is None
    present = client.post("/search/text", json={"query": "a big red circle on grey", "modality": "image"}).json()
    assert present["generated"] is None
    forced = client.post("/search/text", json={"query": "a big red circle on grey", "generate": "always"}).json()
    assert forced["generated"] is not None
    sound = _sound_of("big purple hexagon on white", seed=3)
    heard = client.post("/search/audio", files={"file": ("q.wav", sound, "audio/wav")}, data={"modality": "image"})
    assert heard.json()["generated"]["query_kind"] == "audio"


@pytest.mark.skipif(not GENERATOR_SHIPPED, reason="the starter generator is not in this checkout")
def test_a_kept_picture_joins_the_collection_marked_generated(collection, tmp_path):
    import shutil

    from tests.conftest import run_json, run_xmodal

    db = tmp_path / "db"
    shutil.copytree(collection / "db", db)  # the module's collection stays as the other tests expect it
    query = ["search", "a big purple hexagon on white", "--db", str(db), "--modality", "image"]
    refused = run_xmodal(*query, "--keep-generated", "--no-generate")
    assert refused.returncode == 2 and "--keep-generated" in refused.stderr
    first = run_json(*query, "--keep-generated")
    assert first["kept"] is True and first["decision"]["match"] is False
    assert not any(hit["generated"] for hit in first["results"])
    picture = first["generated"]["path"]
    again = run_json(*query, "--no-generate")
    top = again["results"][0]
    assert top["generated"] is True and top["path"] == picture and top["score"] > 0.8
    assert all(hit["generated"] is False for hit in again["results"][1:])
    assert "[generated]" in run_xmodal(*query, "--no-generate", "-k", "1", check=True).stdout
    with _client(tmp_path) as kept_client:  # the service labels it too, and serves its file
        hit = kept_client.post("/search/text", json={"query": "a big purple hexagon on white", "k": 1,
                                                     "modality": "image", "generate": "never"}).json()["results"][0]
        assert hit["generated"] is True and hit["name"] == Path(picture).name
        assert kept_client.get(hit["media_url"]).content == Path(picture).read_bytes()


def test_generated_pictures_are_served_by_wellformed_id_only(client):
    _error(client.get("/generated/" + "0" * 24), 404)
    for attempt in ("..%2F..%2Fetc%2Fpasswd", "ABCDEF0123456789abcdef01", "0" * 23, "0" * 25, "%2Fetc%2Fpasswd"):
        assert client.get(f"/generated/{attempt}").status_code in (404, 422), attempt


@pytest.mark.skipif(not GENERATOR_SHIPPED, reason="the starter generator is not in this checkout")
def test_a_collection_folder_that_cannot_be_written_still_answers(client, monkeypatch):
    import errno
    import os

    real_replace = os.replace

    def full_disk(source, target, *args, **kwargs):  # an injected fault: the disk fills while saving a picture
        if "generated" in str(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    response = client.post("/search/text", json={"query": "a small purple circle on black", "modality": "image"})
    assert response.status_code == 200
    assert response.json()["decision"]["match"] is False and response.json()["generated"] is None
