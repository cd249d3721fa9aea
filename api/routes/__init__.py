"""One router per resource: searches, items, and the service itself (page, health, info)."""
