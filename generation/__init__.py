"""Conditional generators: an embedding in, images out (part 4). Knows nothing of retrieval or index."""
