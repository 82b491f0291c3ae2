"""Offline scene understanding for a text-only language model: detectors whose models ship inside
PyPI packages, and the short factual note made from what they find (`parley.vision.scene`)."""
