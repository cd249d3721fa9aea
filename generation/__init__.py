"""Conditional generators: a vector of the shared embedding space in, images out (part 4).

Knows nothing of retrieval or index: the engine hands a generator a condition vector and gets
pixels back; choosing when to generate, and checking what came out, are the engine's business.
"""
