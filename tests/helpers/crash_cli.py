"""`python -m tests.helpers.crash_cli index ...`: the real `xmodal` command with tiny batches.

With the product's batching (64 files per encoder call, a commit every 256 files or 5 s, an index
save every 120 s), a run over a few dozen files commits once and saves once, at its very end, so a
kill at a random moment almost never lands inside a commit or a save. Here every IndexOptions that
`run_index` builds gets batches of 4, a commit every 6 operations or 0.3 s and a save every 0.8 s:
the same code paths (CLI, composition root, pipeline, store, index saves), many times per run.

Only the entry point is patched; decode workers are spawned and re-import this module as
`__mp_main__`, so nothing may happen at import time.
"""

from __future__ import annotations

SMALL_BATCHES = {"batch_size": 4, "commit_every": 6, "commit_seconds": 0.3, "save_every_seconds": 0.8}


def main() -> None:
    from cli.main import run
    from retrieval import compose
    from retrieval.indexing.pipeline import IndexOptions

    def small_options(**kwargs) -> IndexOptions:
        return IndexOptions(**{**kwargs, **SMALL_BATCHES})

    compose.IndexOptions = small_options
    run()


if __name__ == "__main__":
    main()
