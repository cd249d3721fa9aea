"""The web page at `/`, driven like a user would in a real headless Chromium against `xmodal serve`
over the demo collection: words, an uploaded sound, "more like this", the microphone, a phone-sized
screen and the keyboard alone.

Needs Playwright (Python) and Debian's Chromium at /usr/bin/chromium; the module skips without them.
Wait conditions are written as arrow functions (or Playwright locators): the server's
Content-Security-Policy forbids `eval`, which Playwright's bare-expression form relies on.
"""

from __future__ import annotations

import io
import json
import re
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.live_server import serve_collection

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the `_browser_available` fixture skips the module with a message
    expect = sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}
WAIT_MS = 60_000  # a search on a busy two-core machine, first query included
SOME_RESULTS = re.compile(r"\b\d+ results?\b")

# The status line has settled once it says neither of its in-between states.
SEARCH_SETTLED = """() => {
  const text = document.querySelector('#status').textContent.trim();
  return text !== '' && !/searching|preparing|recording/i.test(text);
}"""
# Thumbnails inside the viewport (the others load lazily), once the browser is done with them.
VISIBLE_THUMBNAILS = """() => [...document.querySelectorAll('#results .result img')].filter(img => {
  const box = img.getBoundingClientRect();
  return box.width > 0 && box.bottom > 0 && box.top < innerHeight;
})"""
THUMBNAILS_SETTLED = f"() => ({VISIBLE_THUMBNAILS})().every(img => img.complete)"
BROKEN_THUMBNAILS = f"() => ({VISIBLE_THUMBNAILS})().filter(img => img.naturalWidth === 0).map(img => img.alt)"


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    if sync_playwright is None:
        pytest.skip("Playwright is not installed (pip install playwright); the web page tests need it")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); the web page tests need it")


@pytest.fixture(scope="module")
def demo(demo_dir, _browser_available) -> Path:
    """The demo's folder (shared with other tests, read-only): media/, queries/ and the collection in db/."""
    return demo_dir


@pytest.fixture(scope="module")
def base_url(demo) -> Iterator[str]:
    with serve_collection(demo / "db") as url:
        yield url


@pytest.fixture(scope="module")
def playwright(_browser_available):
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def open_page(browser, base_url: str, viewport: dict = DESKTOP):
    """A fresh page (own cookies) on `/`, collecting script errors and CSP refusals as it goes
    (refused requests are left out: the tests check what the page shows for them)."""
    context = browser.new_context(viewport=viewport, base_url=base_url)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"uncaught: {error}"))
    page.on("console", lambda message: page.problems.append(f"console: {message.text}")
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    page.goto("/")
    page.wait_for_load_state("networkidle")
    return page


@pytest.fixture
def page(browser, base_url):
    page = open_page(browser, base_url)
    yield page
    problems = list(page.problems)
    page.context.close()
    assert not problems, f"the page reported errors: {problems}"


@pytest.fixture
def phone_page(browser, base_url):
    page = open_page(browser, base_url, PHONE)
    yield page
    problems = list(page.problems)
    page.context.close()
    assert not problems, f"the page reported errors: {problems}"


def search_words(page, words: str, target: str | None = None) -> None:
    if target:
        page.select_option("#target", target)
    page.fill("#query", words)
    page.press("#query", "Enter")
    expect(page.locator("#status")).to_contain_text(SOME_RESULTS)


def result_names(page) -> list[str]:
    return page.locator("#results .result .name").all_inner_texts()


def status_text(page) -> str:
    page.wait_for_function(SEARCH_SETTLED)
    return page.inner_text("#status")


def record_uploads(page) -> None:
    """From the next load on, keep a copy of every file the page uploads in `window.uploads`
    (Playwright does not expose multipart file bodies of requests)."""
    page.add_init_script("""(() => {
      window.uploads = [];
      const send = window.fetch;
      window.fetch = async (url, options = {}) => {
        if (options.body instanceof FormData) {
          const file = options.body.get('file');
          const bytes = Array.from(new Uint8Array(await file.arrayBuffer()));
          window.uploads.push({url: String(url), name: file.name, type: file.type, bytes});
        }
        return send(url, options);
      };
    })()""")
    page.reload()
    page.wait_for_load_state("networkidle")


def test_words_find_the_picture_they_describe(page):
    search_words(page, "a big red circle on grey")

    names = result_names(page)
    assert names, "no results shown"
    assert "big-red-circle-on-grey" in names[0], names[:3]
    assert SOME_RESULTS.search(page.inner_text("#status"))
    page.wait_for_function(THUMBNAILS_SETTLED)
    assert page.evaluate(f"() => ({VISIBLE_THUMBNAILS})().length") > 0
    assert page.evaluate(BROKEN_THUMBNAILS) == [], "thumbnails that did not load"
    first = page.locator("#results .result").first
    assert first.get_attribute("data-modality") in ("image", "audio")
    assert -1.0 <= float(first.get_attribute("data-score")) <= 1.0


def test_an_uploaded_sound_finds_the_picture_it_describes(page, demo):
    page.select_option("#target", "image")
    with page.expect_request(lambda request: request.url.endswith("/search/audio")):
        page.set_input_files("#file-input", str(demo / "queries" / "small-cyan-circle-on-black.wav"))
    expect(page.locator("#status")).to_contain_text(SOME_RESULTS)

    assert "small-cyan-circle-on-black" in result_names(page)[0]
    modalities = page.locator("#results .result").evaluate_all("cards => cards.map(card => card.dataset.modality)")
    assert set(modalities) == {"image"}
    expect(page.locator("#query-preview audio")).to_be_visible()


def test_a_picture_dropped_on_the_page_finds_itself(page, demo):
    picture = next((demo / "media" / "images").glob("big-blue-circle-on-black-*.png"))
    dropped = page.evaluate_handle("""bytes => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
      return transfer;
    }""", list(picture.read_bytes()))
    page.dispatch_event("body", "dragenter", {"dataTransfer": dropped})
    expect(page.locator("#drop-overlay")).to_be_visible()
    with page.expect_request(lambda request: request.url.endswith("/search/image")):
        page.dispatch_event("body", "drop", {"dataTransfer": dropped})
    expect(page.locator("#status")).to_contain_text(SOME_RESULTS)

    expect(page.locator("#drop-overlay")).to_be_hidden()
    expect(page.locator("#query-preview img")).to_be_visible()
    first = page.locator("#results .result").first
    assert first.locator(".name").inner_text() == picture.name
    assert float(first.get_attribute("data-score")) == pytest.approx(1.0, abs=1e-3)


def test_clicking_a_result_shows_more_like_it(page):
    search_words(page, "a big red circle on grey", target="image")
    clicked = page.locator("#results .result").nth(3)
    clicked_id = clicked.get_attribute("data-id")
    clicked_name = clicked.locator(".name").inner_text()

    with page.expect_response(lambda response: response.url.endswith("/search/item")) as answer:
        clicked.click()
    assert answer.value.ok
    first = page.locator("#results .result").first
    expect(first).to_have_attribute("data-id", clicked_id)
    assert first.locator(".name").inner_text() == clicked_name
    assert float(first.get_attribute("data-score")) == pytest.approx(1.0, abs=1e-3)
    expect(page.locator("#status")).to_contain_text(SOME_RESULTS)
    expect(page.locator("#query-preview")).to_contain_text(clicked_name)


def test_a_recording_from_the_microphone_is_sent_as_wav(page):
    record_uploads(page)
    record = page.locator("#record")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(1500)  # Chromium's fake microphone plays a beep meanwhile
    with page.expect_response(lambda response: response.url.endswith("/search/audio")) as answer:
        record.click()
    expect(record).to_have_attribute("aria-pressed", "false")

    uploads = page.evaluate("() => window.uploads")
    assert [upload["type"] for upload in uploads] == ["audio/wav"]
    with wave.open(io.BytesIO(bytes(uploads[0]["bytes"]))) as sound:
        assert (sound.getnchannels(), sound.getsampwidth()) == (1, 2)
        assert 0.5 <= sound.getnframes() / sound.getframerate() <= 10.0
    status = status_text(page)
    assert "unsupported" not in status.lower(), status
    assert answer.value.status != 415, status
    if answer.value.ok:
        assert answer.value.json()["query"]["kind"] == "audio"
        assert page.locator("#results .result").count() > 0 or status == "nothing found"
    else:  # the server may refuse a beep for other reasons, but the page must say why
        assert status == answer.value.json()["error"]["message"]


def test_the_page_fits_a_phone_screen(phone_page):
    search_words(phone_page, "small yellow star, white background")

    assert phone_page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    expect(phone_page.locator("#query")).to_be_visible()
    expect(phone_page.locator("#record")).to_be_visible()
    tops = phone_page.locator("#results .result").evaluate_all(
        "cards => cards.slice(0, 3).map(card => Math.round(card.getBoundingClientRect().top))")
    assert tops[0] == tops[1] < tops[2], f"results should sit two to a row on a phone: {tops}"


def test_the_keyboard_alone_can_search_and_ask_for_more(page):
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "query":
            break
    assert page.evaluate("() => document.activeElement.id") == "query", "Tab from the top never reached the search box"
    page.keyboard.type("tiny blue triangle on black")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text(SOME_RESULTS)
    assert "small-blue-triangle-on-black" in result_names(page)[0]

    # Results are buttons: Tab reaches them and Enter asks for more like the focused one.
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("() => Boolean(document.activeElement.closest('#results .result'))"):
            break
    focused_id = page.evaluate("() => document.activeElement.closest('#results .result')?.dataset.id")
    assert focused_id, "Tab never reached a result"
    page.keyboard.press("Enter")
    expect(page.locator("#results .result").first).to_have_attribute("data-id", focused_id)


def test_an_empty_query_says_what_to_do(page):
    page.press("#query", "Enter")
    expect(page.locator("#status")).not_to_be_empty()
    assert page.locator("#results .result").count() == 0


def test_the_servers_error_message_is_shown(page, tmp_path):
    damaged = tmp_path / "damaged.wav"
    damaged.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    with page.expect_response(lambda response: response.url.endswith("/search/audio")) as answer:
        page.set_input_files("#file-input", str(damaged))
    assert not answer.value.ok
    message = answer.value.json()["error"]["message"]

    expect(page.locator("#status")).to_have_text(message)
    assert page.locator("#results .result").count() == 0


def test_names_are_shown_as_text_and_a_sound_plays_from_its_best_match(page, base_url):
    # A stored sound, served as the answer to a search with a hostile name and a segment.
    real = page.request.post(f"{base_url}/search/text",
                             data={"query": "big pink triangle on stripes", "k": 1, "modality": "audio"}).json()
    sound = real["results"][0]
    hostile = "<img src=x onerror=\"document.title='pwned'\">.wav"
    crafted = {**real, "results": [{**sound, "name": hostile, "segment": {"start": 0.6, "end": 1.2}}]}
    page.route("**/search/text", lambda route: route.fulfill(status=200, content_type="application/json",
                                                             body=json.dumps(crafted)))
    search_words(page, "anything")

    card = page.locator("#results .result")
    expect(card.locator(".name")).to_have_text(hostile)
    assert card.locator("img").count() == 1  # the thumbnail only: the name made no element
    expect(card.locator(".segment")).to_contain_text("0.6")
    player = card.locator("audio")
    player.evaluate("audio => { window.heard = []; audio.addEventListener('timeupdate', "
                    "() => window.heard.push(audio.currentTime)); }")
    player.click(position={"x": 18, "y": 18})  # the play button of Chromium's controls
    page.wait_for_function("() => window.heard.length > 0")
    assert page.evaluate("() => window.heard[0]") >= 0.59, "the first play should start at the best match"
    assert page.title() != "pwned"


def test_a_server_with_a_key_asks_for_it_and_then_searches(browser, demo):
    key = "web-page-test-key-0123456789"
    with serve_collection(demo / "db", "--api-key", key) as url:
        page = open_page(browser, url)
        try:
            key_field = page.locator("#api-key")
            expect(key_field).to_be_visible()
            key_field.fill(key)
            key_field.press("Enter")
            search_words(page, "a big red circle on grey")
            page.wait_for_function(THUMBNAILS_SETTLED)
            assert page.evaluate(BROKEN_THUMBNAILS) == [], "the key cookie should let thumbnails load"
            cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
            assert cookies["xmodal_key"]["value"] == key
            assert cookies["xmodal_key"]["sameSite"] == "Strict"
            problems = list(page.problems)
        finally:
            page.context.close()
    assert not problems, problems


def test_recording_on_a_plain_http_address_says_why_it_cannot(playwright, demo):
    # Browsers give the microphone only to https pages and localhost: reach the server by a name.
    name = "xmodal.test"
    with serve_collection(demo / "db", "--allowed-host", name) as url:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {name} 127.0.0.1"])
        try:
            page = open_page(browser, url.replace("127.0.0.1", name))
            assert page.evaluate("() => window.isSecureContext") is False
            page.click("#record")
            expect(page.locator("#status")).to_contain_text("https")
            expect(page.locator("#record")).to_have_attribute("aria-pressed", "false")
            assert page.problems == []
        finally:
            browser.close()


def test_the_api_docs_render_offline(browser, base_url):
    """/docs is Swagger UI from files installed with xmodal: it lists every operation with no network."""
    context = browser.new_context(viewport=DESKTOP, base_url=base_url)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    try:
        import urllib.request

        with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=30) as response:
            operations = sum(len(methods) for methods in json.loads(response.read())["paths"].values())
        page.goto("/docs")
        expect(page.locator(".opblock")).to_have_count(operations, timeout=WAIT_MS)  # every operation
        assert "/search/audio" in page.locator(".swagger-ui").inner_text()
        assert problems == []
    finally:
        context.close()


def test_the_page_says_when_nothing_matches(page):
    search_words(page, "a big purple hexagon on white", "image")
    expect(page.locator("#decision")).to_be_visible()
    expect(page.locator("#decision")).to_contain_text("No good match")
    assert page.locator("#results .result").count() > 0  # the nearest items are still shown
    from retrieval.encoders.factory import STARTER_DIR

    if (STARTER_DIR / "generator" / "generator.json").is_file():  # a picture drawn instead, labelled
        expect(page.locator("#generated")).to_be_visible()
        expect(page.locator("#generated")).to_contain_text("Generated")
        page.wait_for_function("() => document.querySelector('#generated-image').naturalWidth > 0")
    search_words(page, "a big red circle on grey", "image")
    expect(page.locator("#decision")).to_contain_text("Match")
    expect(page.locator("#decision")).not_to_have_class(re.compile("no-match"))
    expect(page.locator("#generated")).to_be_hidden()
