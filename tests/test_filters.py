"""Filtered search: folder, file type and modified-date range, applied inside the search so that a
filter leaving few items still returns k of them, on exact and approximate indexes alike, and the
same through the CLI and the HTTP API."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pytest

from index.collection import Collection
from index.filters import SearchFilter
from index.records import MediaInfo
from retrieval.errors import QueryError
from retrieval.filters import build_filter, parse_time
from tests.conftest import run_json, run_xmodal
from tests.helpers.index_data import DIM, ENCODER, file_state, image_vectors

FOLDERS = ["/data/a", "/data/ab", "/data/a/deep", "/data/50%_off", "/data/50x_off", "/data/b"]
FORMATS = ["png", "jpeg", "wav"]
DAY = 86_400 * 10**9


def _filled(db_dir, rng, items_per_folder: int = 40, spec: str | None = None) -> Collection:
    collection = Collection.open(db_dir, ENCODER, writable=True, index_spec=spec)
    with collection.store.write() as transaction:
        for folder_number, folder in enumerate(FOLDERS):
            for n in range(items_per_folder):
                fmt = FORMATS[n % 3]
                info = MediaInfo("image", fmt, width=8, height=8)
                state = file_state(f"{folder}/{n:03d}.{fmt}", mtime_ns=(folder_number * 100 + n) * DAY)
                transaction.put_item(state, info, image_vectors(rng))
    collection.apply(transaction.changes)
    collection.save_generation()
    return collection


FILTERS = [
    SearchFilter(under=("/data/a",)),  # not /data/ab, but /data/a/deep
    SearchFilter(under=("/data/50%_off",)),  # LIKE wildcards in a name mean themselves
    SearchFilter(under=("/data/a/deep", "/data/b"), formats=("png",)),
    SearchFilter(formats=("wav", "jpeg")),
    SearchFilter(since_ns=150 * DAY, until_ns=330 * DAY),
    SearchFilter(under=("/data/b/007.jpeg",)),  # a file is its own folder
    SearchFilter(under=("/nowhere",)),
]


@pytest.mark.parametrize("where", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_the_store_selects_exactly_the_items_the_filter_describes(tmp_path, where):
    with _filled(tmp_path / "db", np.random.default_rng(0)) as collection:
        store = collection.store
        expected = sorted(
            vector_id for vector_id, found in store.resolve_vectors(store.vector_ids("image").tolist()).items()
            if where.matches(found.item))
        assert store.vector_ids_where("image", where).tolist() == expected


@pytest.mark.parametrize("spec", [None, "IVF8,Flat", "HNSW16"])
def test_a_selective_filter_still_returns_the_exact_top_k_of_the_survivors(tmp_path, spec):
    rng = np.random.default_rng(1)
    with _filled(tmp_path / "db", rng, spec=spec) as collection:
        queries = rng.standard_normal((20, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        where = SearchFilter(under=("/data/b",), formats=("png",))  # 14 of 240 items
        allowed = collection.store.vector_ids_where("image", where)
        assert len(allowed) == 14
        vectors = np.stack([collection.store.item_vector(int(i), DIM) for i in allowed])  # item id == vector id here
        scores, ids = collection.search("image", queries, 10, where)
        truth = allowed[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
        assert (ids >= 0).all(), "fewer than k results although 14 items pass"
        assert np.isin(ids, allowed).all()
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
        assert overlap >= 0.95 if spec else overlap == 1.0
        assert np.all(np.diff(scores, axis=1) <= 1e-6), "results are not best first"


def test_dates_and_types_from_what_a_user_types():
    local = dt.datetime(2024, 3, 1).astimezone()
    assert parse_time("2024-03-01") == int(local.timestamp()) * 10**9
    assert parse_time("2024-03-01", end=True) - parse_time("2024-03-01") == DAY  # --until includes the day
    noon_utc = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    assert parse_time("2024-03-01T12:00:00+00:00") == int(noon_utc.timestamp()) * 10**9
    where = build_filter(["/x"], ["JPG", ".png", "jpeg"], "2024-01-01", "2024-01-31")
    assert where.formats == ("jpeg", "png") and where.under == ("/x",)
    assert build_filter() is None
    for bad in ({"since": "yesterday"}, {"types": ["tiff"]}, {"under": ["relative/folder"]},
                {"since": "2024-02-01", "until": "2024-01-01"}):
        with pytest.raises(QueryError):
            build_filter(**bad)


def _touch_tree(root, rng):
    """Copies of the sample folder's pictures in two subfolders, one dated 2020, one today."""
    from PIL import Image

    for folder, year in (("old", 2020), ("new", None)):
        (root / folder).mkdir(parents=True)
        for n in range(6):
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            path = root / folder / f"{n}.{'png' if n % 2 else 'jpg'}"
            Image.new("RGB", (32, 32), colour).save(path)
            if year:
                stamp = dt.datetime(year, 6, 1).timestamp()
                os.utime(path, (stamp, stamp))


def test_cli_filters_search_only_the_files_asked_for(tmp_path, micro_model):
    _touch_tree(tmp_path / "media", np.random.default_rng(2))
    db = str(tmp_path / "db")
    run_xmodal("index", str(tmp_path / "media"), "--db", db, "--model", str(micro_model), "--quiet", check=True)
    base = ["search", "a red square", "--db", db, "-k", "5", "--no-generate"]
    under = run_json(*base, "--under", str(tmp_path / "media" / "old"))["results"]
    assert len(under) == 5 and all("/media/old/" in hit["path"] for hit in under)
    png = run_json(*base, "--type", "png", "--under", str(tmp_path / "media" / "new"))["results"]
    assert len(png) == 3 and all(hit["path"].endswith(".png") and "/new/" in hit["path"] for hit in png)
    recent = run_json(*base, "--since", "2021-01-01", "-k", "20")["results"]
    assert len(recent) == 6 and all("/new/" in hit["path"] for hit in recent)
    assert run_json(*base, "--until", "2020-06-01")["results"] and \
        all("/old/" in hit["path"] for hit in run_json(*base, "--until", "2020-06-01")["results"])
    bad = run_xmodal(*base, "--since", "last week")
    assert bad.returncode == 2 and "not a date" in bad.stderr


def test_api_filters_take_folders_as_results_show_them(tmp_path, micro_model):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from retrieval.settings import ServerSettings, load_settings

    _touch_tree(tmp_path / "media", np.random.default_rng(3))
    db = tmp_path / "db"
    run_xmodal("index", str(tmp_path / "media"), "--db", str(db), "--model", str(micro_model), "--quiet", check=True)
    app = create_app(load_settings(db=db), ServerSettings())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = {"query": "a square", "k": 4, "generate": "never"}
        hits = client.post("/search/text", json={**body, "under": ["media/new"], "types": ["jpeg"]}).json()["results"]
        assert len(hits) == 3 and all(h["path"].startswith("media/new/") and h["path"].endswith(".jpg") for h in hits)
        item = hits[0]["id"]
        more = client.post("/search/item", json={"id": item, "k": 10, "generate": "never", "until": "2020-12-31"})
        assert {h["path"].split("/")[1] for h in more.json()["results"]} == {"old"}
        picture = (tmp_path / "media" / "old" / "0.jpg").read_bytes()
        upload = client.post("/search/image", files={"file": ("q.jpg", picture, "image/jpeg")},
                             data={"k": "10", "generate": "never", "under": ["media/old"], "types": ["png"]})
        assert upload.status_code == 200, upload.text
        assert {h["path"] for h in upload.json()["results"]} == {f"media/old/{n}.png" for n in (1, 3, 5)}
        for bad in ({"under": ["../etc"]}, {"under": ["/etc"]}, {"under": ["elsewhere/x"]}):
            response = client.post("/search/text", json={**body, **bad})
            assert response.status_code == 400 and "under" in response.json()["error"]["message"]
        assert client.post("/search/text", json={**body, "since": "soon"}).status_code == 422


def test_a_filter_is_resolved_once_per_index_state_and_sees_new_items(tmp_path, monkeypatch):
    from tests.helpers.index_data import put_image

    rng = np.random.default_rng(4)
    with _filled(tmp_path / "db", rng) as collection:
        store = collection.store
        calls = []
        real = store.vector_ids_where
        monkeypatch.setattr(store, "vector_ids_where", lambda *args: calls.append(args) or real(*args))
        where = SearchFilter(under=("/data/b",))
        query = np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM)
        for k in (5, 20, 40):  # the engine widening a search, then the same filter again
            collection.search("image", query, k, where)
        assert len(calls) == 1
        with store.write() as transaction:
            new_id = put_image(transaction, "/data/b/new.png", rng)
        collection.apply(transaction.changes)
        found = collection.search("image", query, 41, where)[1][0]
        assert len(calls) == 2, "items added since must pass the filter too"
        assert new_id in {hit.item.id for hit in store.resolve_vectors(found.tolist()).values()}
