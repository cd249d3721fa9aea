"""The real `xmodal serve` on a free loopback port (retrieval/bench/live_server.py, which
`xmodal bench load` uses too)."""

from retrieval.bench.live_server import REPO, free_port, serve_collection

__all__ = ["REPO", "free_port", "serve_collection"]
