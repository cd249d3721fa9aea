"""Hardened media decoding shared by indexing workers and query uploads (no torch imported here)."""
