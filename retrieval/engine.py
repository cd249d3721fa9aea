"""The search engine: a query (text, image or audio) -> encoder -> index search -> ranked items.

An audio item has several vectors (pooled plus one per window), so raw neighbours are grouped by
item, keeping the best-scoring vector and its time range; deleted ids (an older index generation
while a writer works) resolve to nothing and are dropped; the search widens until k distinct items
are found or the index is exhausted. Results never hold FAISS's -1 padding.

Every answer also carries the calibrated match decision (retrieval/matching.py) when the model
ships a calibration, and, when nothing matches and the model has a generator, a verified picture
drawn instead (retrieval/generate.py, kept under the collection by retrieval/fallback.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from index.collection import Collection
from index.errors import IndexRebuildingError, StorageFullError
from index.filters import SearchFilter
from index.records import MODALITIES
from retrieval.errors import ItemNotFoundError, QueryError, QueryFileError
from retrieval.fallback import generated_prefix
from retrieval.indexing.prepare import Decoded, decode_media, read_file
from retrieval.media.errors import MediaError
from retrieval.media.limits import MediaLimits
from retrieval.media.sniff import HEAD_BYTES, check_declared_type, sniff

if TYPE_CHECKING:
    from generation.drawer import Drawer
    from retrieval.decision import Decision
    from retrieval.encoders.model import Encoder
    from retrieval.fallback import GeneratedImage
    from retrieval.matching import MatchJudge
    from retrieval.query_batcher import QueryBatcher

MAX_K = 1000
MAX_QUERY_CHARS = 2000
TARGETS = ("image", "audio", "all")


@dataclass(frozen=True)
class SearchHit:
    id: int  # item id in the store
    path: str
    modality: str
    score: float  # cosine similarity, -1..1
    segment: tuple[float, float] | None  # time range of the best-matching window, for audio
    generated: bool = False  # a picture xmodal drew and the user kept (`--keep-generated`), not their media

    def to_dict(self) -> dict:
        segment = {"start": self.segment[0], "end": self.segment[1]} if self.segment else None
        return {"id": self.id, "path": self.path, "modality": self.modality,
                "score": round(self.score, 6), "segment": segment, "generated": self.generated}


@dataclass(frozen=True)
class SearchResult:
    query_kind: str  # "text" | "image" | "audio" | "item"
    query_value: str
    results: list[SearchHit]
    decision: Decision | None = None  # None: the model has no calibration for this kind of query
    generated: GeneratedImage | None = None  # drawn when nothing matched (or when asked to)
    generated_path: str | None = None

    def to_dict(self) -> dict:
        generated = {**self.generated.to_dict(), "path": self.generated_path} if self.generated else None
        return {"query": {"kind": self.query_kind, "value": self.query_value},
                "decision": self.decision.to_dict() if self.decision else None, "generated": generated,
                "results": [hit.to_dict() for hit in self.results]}


def _embed_decoded(encoder: Encoder, decoded: Decoded) -> np.ndarray:
    """The query vector (dim,) of a decoded image or sound (a sound's pooled vector)."""
    if decoded.info.modality == "image":
        return encoder.encode_pixels(decoded.pixels[None])[0]
    return encoder.embed_log_mels([decoded.log_mel], [decoded.info.duration])[0].pooled


class _OnBatcher:
    """The parts of an encoder that verifying a drawing uses, run on the batcher's thread."""

    def __init__(self, batcher: QueryBatcher, encoder: Encoder) -> None:
        self.inputs = encoder.inputs
        self._batcher = batcher

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._batcher.run(lambda encoder: encoder.encode_pixels(pixels))


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


class SearchEngine:
    """Answers queries against one collection with the encoder that built it."""

    def __init__(self, encoder: Encoder, collection: Collection, limits: MediaLimits | None = None,
                 judge: MatchJudge | None = None) -> None:
        self.encoder = encoder
        self.collection = collection
        self.limits = limits or MediaLimits()
        self.judge = judge  # the calibrated match decision; None for a model without calibration
        self.generator: Drawer | None = None  # draws a picture when nothing matches (set by build_engine)
        self._generated_prefix = generated_prefix(collection.db_dir)  # kept pictures are indexed from here
        self.batcher: QueryBatcher | None = None  # set by a server: all encoding on one thread

    def start_batching(self, max_batch: int = 32, max_wait_ms: float = 0.0) -> None:
        """Route every query encoding through one thread that batches concurrent text queries."""
        from retrieval.query_batcher import QueryBatcher

        if self.batcher is None:
            self.batcher = QueryBatcher(self.encoder, max_batch, max_wait_ms)

    def warm_up(self) -> None:
        """Run one text, one image and one sound through decoding and the towers, so that the first
        real query does not pay for lazy imports and first-call allocations (about a second)."""
        import io
        import wave

        from PIL import Image

        image = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 128, 128)).save(image, "PNG")
        sound = io.BytesIO()
        with wave.open(sound, "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(16000)
            writer.writeframes(np.zeros(16000, dtype="<i2").tobytes())
        for query in (lambda: self.search_text("warm up", 1),
                      lambda: self.search_bytes(image.getvalue(), "warm-up.png", "image", 1),
                      lambda: self.search_bytes(sound.getvalue(), "warm-up.wav", "audio", 1)):
            try:
                query()
            except IndexRebuildingError:
                pass  # the query was decoded and encoded, which is what warms; the index comes later

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.collection.close()

    # ---------------------------------------------------------------- queries

    def search_text(self, text: str, k: int = 10, modality: str = "all",
                    min_confidence: float | None = None, generate: str = "never",
                    where: SearchFilter | None = None) -> SearchResult:
        text = text.strip()
        if not text:
            raise QueryError("the text query is empty")
        if len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"the text query is longer than {MAX_QUERY_CHARS} characters")
        check_k(k)
        if self.batcher is not None:
            vector = self.batcher.encode_text(text)
        else:
            vector = self.encoder.encode_text([text])[0]
        return self.answer("text", text, vector, k, modality, min_confidence, generate, where)

    def search_file(self, path: str | Path, expected: str, k: int = 10, modality: str = "all",
                    min_confidence: float | None = None, generate: str = "never",
                    where: SearchFilter | None = None) -> SearchResult:
        """Search with an image or audio file, decoded exactly as indexing decodes it.

        Raises:
            QueryFileError: the file is unreadable, not media, or not of the `expected` modality.
        """
        try:
            data, _info = read_file(str(path), self.limits)
        except MediaError as error:
            raise QueryFileError(f"cannot use {path} as a query: {error}", error.error_class.value) from None
        return self.search_bytes(data, str(path), expected, k, modality, min_confidence=min_confidence,
                                 generate=generate, where=where)

    def search_bytes(self, data: bytes, name: str, expected: str, k: int = 10, modality: str = "all",
                     media_type: str | None = None, min_confidence: float | None = None,
                     generate: str = "never", where: SearchFilter | None = None) -> SearchResult:
        """Search with the bytes of an image or sound (an upload); `name` labels it in messages.

        Args:
            media_type: the type its sender declared (an upload's Content-Type), checked against
                the bytes; None or application/octet-stream declare nothing.

        Raises:
            QueryFileError: refused, damaged, oversized, not media, of the wrong modality, or not of
                the declared type (`reason` says which).
        """
        check_k(k)
        if len(data) > self.limits.max_file_bytes:
            raise QueryFileError(f"{name} is larger than the cap of {self.limits.max_file_bytes} bytes", "TOO_LARGE")
        try:
            found = sniff(data[:HEAD_BYTES])
            if found is not None:
                check_declared_type(media_type, found)
            decoded = decode_media(data, name, self.encoder.inputs, self.limits)
        except MediaError as error:
            raise QueryFileError(f"cannot use {name} as a query: {error}", error.error_class.value) from None
        if decoded is None:
            raise QueryFileError(f"{name} is not an image or a sound xmodal can read", "NOT_MEDIA")
        if decoded.info.modality != expected:
            hint = "--audio" if decoded.info.modality == "audio" else "--image"
            raise QueryFileError(f"{name} is {decoded.info.modality}, not {expected} (use {hint} or "
                                 f"/search/{decoded.info.modality})", "WRONG_MODALITY")
        if self.batcher is not None:
            vector = self.batcher.run(lambda encoder: _embed_decoded(encoder, decoded))
        else:
            vector = _embed_decoded(self.encoder, decoded)
        return self.answer(expected, name, vector, k, modality, min_confidence, generate, where)

    def search_item(self, item_id: int, k: int = 10, modality: str = "all",
                    min_confidence: float | None = None, generate: str = "never",
                    where: SearchFilter | None = None) -> SearchResult:
        """"More like this": search with an indexed item's own stored vector (no decoding).

        Raises:
            ItemNotFoundError: no item has this id.
        """
        item = self.collection.store.get_item(item_id)
        vector = self.collection.store.item_vector(item_id, self.encoder.dim)
        if item is None or vector is None:
            raise ItemNotFoundError(f"no item with id {item_id}")
        result = self.answer(item.modality, str(item_id), vector, k, modality, min_confidence, generate, where)
        return replace(result, query_kind="item")

    # ---------------------------------------------------------------- core

    def answer(self, kind: str, value: str, vector: np.ndarray, k: int, modality: str,
               min_confidence: float | None = None, generate: str = "never",
               where: SearchFilter | None = None) -> SearchResult:
        """Ranked hits for a query vector, the match decision for its kind of query, and a generated
        picture when `generate` is "always", or "auto" and nothing matched ("never": no picture)."""
        # The decision reads the two best scores of each target, whatever k the caller asked for:
        # with k=1 it would otherwise see no runner-up and give another confidence.
        by_target = self._search_targets(vector, max(k, 2), modality, where)
        decision = None
        if self.judge is not None:
            scores = {target: [hit.score for hit in hits[:2]] for target, hits in by_target.items()}
            decision = self.judge.decide(vector, kind, scores, min_confidence)
        result = SearchResult(kind, value, self._merge(by_target, k), decision)
        wanted = generate == "always" or (generate == "auto" and decision is not None and not decision.match)
        if wanted and self.generator is not None and self.generator.can_draw(kind):
            try:
                generated, path = self.generate(kind, value, vector)
            except (OSError, StorageFullError):
                return result  # a read-only or full collection folder: the answer stands without a picture
            result = replace(result, generated=generated, generated_path=str(path))
        return result

    def generate(self, kind: str, value: str, vector: np.ndarray, seed: int = 0) -> tuple[GeneratedImage, Path]:
        """A verified picture for a query vector, stored under the collection with its provenance
        (or found there, when the same query was drawn before).

        Raises:
            QueryError: this model has no generator, or it cannot draw this kind of query.
            OSError, StorageFullError: the collection directory cannot be written.
        """
        from retrieval.fallback import GeneratedStore, generated_id, new_provenance
        from retrieval.generate import generate_verified

        generator = self.generator
        if generator is None:
            raise QueryError(f"the model {self.encoder.identity.spec} has no generator")
        if not generator.can_draw(kind):
            raise QueryError(f"the generator {generator.name} cannot draw {kind} queries")
        text = value if kind == "text" else None
        store = GeneratedStore(self.collection.db_dir)
        image_id = generated_id(vector, seed, generator.fingerprint)  # a text query's vector stands for its words
        found = store.find(image_id)
        if found is not None:
            return found[1], found[0]
        # Sampling runs on this thread; only the verification's image encoding takes the encoder's
        # thread. A picture costs about a second of sampling: on the encoder's thread, every query
        # behind it would wait that long (a server bounds how many draw at once: api/generation.py).
        encoder = self.encoder if self.batcher is None else _OnBatcher(self.batcher, self.encoder)
        made = generate_verified(generator, encoder, vector, seed=seed, text=text)
        provenance = new_provenance(image_id, kind, value, seed, self.encoder.identity.spec, generator.name,
                                    made.score)
        return provenance, store.save(made.pixels, provenance)

    def _search_targets(self, vector: np.ndarray, k: int, modality: str,
                        where: SearchFilter | None = None) -> dict[str, list[SearchHit]]:
        check_k(k)
        if modality not in TARGETS:
            raise QueryError(f"modality must be one of {', '.join(TARGETS)}, got {modality!r}")
        targets = MODALITIES if modality == "all" else (modality,)
        return {target: self._search_one(vector, k, target, where) for target in targets}

    @staticmethod
    def _merge(by_target: dict[str, list[SearchHit]], k: int) -> list[SearchHit]:
        hits = [hit for hits in by_target.values() for hit in hits]
        hits.sort(key=lambda hit: (-hit.score, hit.id))
        return hits[:k]

    def _search_one(self, vector: np.ndarray, k: int, modality: str, where: SearchFilter | None) -> list[SearchHit]:
        total = self.collection.count(modality)
        if total == 0:
            return []
        # A sound has several window vectors: ask for more than k and keep each item's best.
        fetch = min(total, k if modality == "image" else 4 * k)
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        while True:
            scores, ids = self.collection.search(modality, query, fetch, where)
            best = self._group(scores[0], ids[0])
            # A filtered search already widened itself to find all it could: fewer means no more pass.
            exhausted = where is not None and int((ids[0] >= 0).sum()) < fetch
            if len(best) >= k or fetch >= total or exhausted:
                return sorted(best.values(), key=lambda hit: (-hit.score, hit.id))[:k]
            fetch = min(total, fetch * 4)

    def _group(self, scores: np.ndarray, ids: np.ndarray) -> dict[int, SearchHit]:
        valid = ids >= 0
        resolved = self.collection.store.resolve_vectors(ids[valid].tolist())
        best: dict[int, SearchHit] = {}
        for score, vector_id in zip(scores[valid].tolist(), ids[valid].tolist(), strict=True):
            found = resolved.get(vector_id)
            if found is None:
                continue  # deleted since this index generation was saved
            item = found.item
            if item.id in best and best[item.id].score >= score:
                continue
            segment = (found.start, found.end) if found.start is not None else None
            best[item.id] = SearchHit(item.id, item.path, item.modality, float(score), segment,
                                      item.path.startswith(self._generated_prefix))
        return best
