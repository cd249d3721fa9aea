"""Decode and encode on a Ray cluster (extra `[distributed]`): `xmodal index --ray ADDRESS`.

Only the expensive middle of the pipeline moves: Ray Data hands the files to encode to a pool of
actors (one per GPU when the cluster has GPUs, else one per few CPUs); each actor builds the
encoder once with the same factory and checks its fingerprint against the collection's, decodes
with the same worker processes, limits and per-file deadline as a local run (a file that crashes
or hangs its decoder costs that file, never the actor or the job), embeds in batches and sends back
one row per file: its state, media info and vectors, or its error. The walk, change detection,
the single writer, the error ledger, the progress bar and the summary stay in this process
(retrieval/indexing/pipeline.py), which commits rows as they stream in: a killed run keeps every
committed batch and the next run skips them.

The workers read the files by the paths the driver found, so the folders must be mounted at the
same paths on every node (a shared filesystem), and xmodal with the same model must be installed
there. Rows cross the object store pickled (one binary column): audio items carry a variable number
of window vectors, which Arrow tensor columns do not hold.
"""

from __future__ import annotations

import logging
import pickle
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from retrieval.errors import ClusterError, ModelLoadError, ModelNotFoundError, WeightsUnavailableError
from retrieval.indexing.encode import EncodeBatcher
from retrieval.indexing.prepare import DECODED, ENCODED, Prepared, Task, prepare_file
from retrieval.indexing.workers import DecodePool, PrepareFunction
from retrieval.media.limits import MediaLimits

if TYPE_CHECKING:
    from retrieval.encoders.model import Encoder
    from retrieval.indexing.pipeline import IndexOptions

INSTALL_HINT = "pip install 'xmodal[distributed]'"
_MAX_CPUS_PER_ACTOR = 8  # decode processes beside one GPU; more rarely pays
_CPUS_PER_CPU_ACTOR = 4  # without GPUs: a few big actors batch better than many single-core ones
_FILES_PER_CALL = 4  # encoder batches per actor call, so decoding overlaps encoding inside a call


def import_ray():
    """The `ray` module, with Ray Data.

    Raises:
        ClusterError: ray is not installed (the message names the extra).
    """
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks it)
    except ImportError as error:
        raise ClusterError(f"--ray needs Ray Data, which is not installed ({error}): {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    cpus: int  # per actor
    gpus: int  # per actor: 1 or 0
    decode_workers: int  # decode processes per actor

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


def plan_actors(resources: dict[str, float]) -> ActorPlan:
    """How many encode actors and what each reserves, from the cluster's total resources.

    One actor per GPU, with an even share of the CPUs for its decode processes; without GPUs,
    actors of a few CPUs each (one core encodes while the others decode).
    """
    cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
    if gpus > 0:
        share = max(1, min(_MAX_CPUS_PER_ACTOR, cpus // gpus))
        return ActorPlan(actors=gpus, cpus=share, gpus=1, decode_workers=share)
    share = min(_CPUS_PER_CPU_ACTOR, cpus)
    return ActorPlan(actors=max(1, cpus // share), cpus=share, gpus=0, decode_workers=max(1, share - 1))


class EncodeActor:
    """A Ray Data map_batches class: {"path", "stored_hash"} rows in, {"result"} rows out (pickled
    Prepared: ENCODED, FAILED, NOT_MEDIA, SAME_CONTENT or KNOWN_CONTENT), one per input row."""

    def __init__(self, spec: str, fingerprint: str, device: str, batch_size: int, decode_workers: int,
                 limits: MediaLimits, skip_hashes: frozenset[str], prepare: PrepareFunction = prepare_file) -> None:
        from retrieval.encoders.factory import create_encoder

        self.encoder = create_encoder(spec, device, batch_size)
        if self.encoder.identity.fingerprint != fingerprint:
            raise ModelLoadError(f"a Ray worker loads {spec} with fingerprint {self.encoder.identity.fingerprint}, "
                                 f"but the collection was built with {fingerprint}: install the same model "
                                 f"on every node")
        self.batch_size = batch_size
        self.pool = DecodePool(decode_workers, self.encoder.inputs, limits, skip_hashes, prepare=prepare).__enter__()
        self.lock = threading.Lock()  # one batch at a time through the pool, whatever Ray's concurrency

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results: list[Prepared] = []

        def encoded(prepared: Prepared, vectors: list) -> None:  # model inputs stay here: only vectors travel
            results.append(replace(prepared, status=ENCODED, pixels=None, log_mel=None, vectors=vectors))

        batcher = EncodeBatcher(self.encoder, self.batch_size, encoded)
        tasks = [Task(str(path), stored or None) for path, stored in zip(batch["path"], batch["stored_hash"],
                                                                           strict=True)]
        with self.lock:
            for prepared in self.pool.run(tasks):
                if prepared.status == DECODED:
                    batcher.add(prepared)
                else:
                    results.append(prepared)
            batcher.encode_held()
        return {"result": np.array([pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results],
                                   dtype=object)}

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.__exit__(None, None, None)


class RayDecodeStage:
    """The pipeline's decode stage on Ray (a DecodeStage): connects on first use, in a `with` block.

    `prepare` is what the actors' decode workers run, as in DecodePool (a module-level function).
    """

    def __init__(self, address: str, encoder: Encoder, options: IndexOptions,
                 prepare: PrepareFunction = prepare_file) -> None:
        self.address = address
        self.identity = encoder.identity
        self.options = options
        self.prepare = prepare
        self.ray = import_ray()
        self._connected_here = False
        self.plan: ActorPlan | None = None

    def __enter__(self) -> RayDecodeStage:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._connected_here:
            self.ray.shutdown()
            self._connected_here = False

    def _connect(self) -> ActorPlan:
        """Join the cluster (or start a local one), unless this process is already connected."""
        ray = self.ray
        if not ray.is_initialized():
            local = self.address == "local"
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False,
                         **({"include_dashboard": False} if local else {}))
            except Exception as error:  # whatever ray.init raises, this address cannot be used
                raise ClusterError(f"cannot connect to the Ray cluster at {self.address}: {error}") from None
            self._connected_here = True
            # This process is ours (the CLI): its progress bar is the only one, and Ray Data's notes
            # about execution plans would break it up. A caller's own Ray session is left as it is.
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        return plan_actors(ray.cluster_resources())

    def __call__(self, tasks: list[Task], skip_hashes: frozenset[str]) -> Iterator[Prepared]:
        if not tasks:
            return
        self.plan = self.plan or self._connect()
        plan, ray = self.plan, self.ray
        files_per_call = self.options.batch_size * _FILES_PER_CALL
        dataset = ray.data.from_items([{"path": t.path, "stored_hash": t.stored_hash or ""} for t in tasks])
        encoded = dataset.map_batches(
            EncodeActor,
            fn_constructor_kwargs={
                "spec": self.identity.spec, "fingerprint": self.identity.fingerprint, "device": plan.device,
                "batch_size": self.options.batch_size, "decode_workers": plan.decode_workers,
                "limits": self.options.limits, "skip_hashes": skip_hashes, "prepare": self.prepare,
            },
            compute=ray.data.ActorPoolStrategy(size=min(plan.actors, -(-len(tasks) // files_per_call))),
            batch_size=files_per_call, batch_format="numpy",
            num_cpus=plan.cpus, num_gpus=plan.gpus,
        )
        try:
            for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
                for payload in batch["result"]:
                    yield pickle.loads(payload)
        except Exception as error:  # raised by Ray, never by the caller's loop body
            raise _translate(error) from None


# The last "module.SomeError: message" line of a traceback Ray turned into text. An actor whose
# constructor raised comes back as ActorDiedError, which keeps only the text of its cause.
_CAUSE_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(\w+): (.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MODEL_ERRORS = {cls.__name__: cls for cls in (ModelLoadError, ModelNotFoundError, WeightsUnavailableError)}


def _translate(error: BaseException) -> Exception:
    """A failed Ray job as one typed error: a model error of an actor as itself, anything else as
    ClusterError with the line that says what went wrong."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    for line in reversed(lines):
        match = _CAUSE_LINE.match(line)
        if match and match.group(1).endswith(("Error", "Exception")):
            name, message = match.groups()
            if name in _MODEL_ERRORS:
                return _MODEL_ERRORS[name](message)
            return ClusterError(f"the Ray job failed: {name}: {message[:300]}")
    return ClusterError(f"the Ray job failed: {(lines[0] if lines else type(error).__name__)[:300]}")
