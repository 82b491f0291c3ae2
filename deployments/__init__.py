"""Ray-facing deployments: ASR, LLM and TTS (and the ingress), as plain classes.

Invariant: nothing in this package imports Ray at module level. Each class takes its config
section in the constructor, loads its model there, and can be built and tested in-process; the
app builder applies `serve.deployment` and its options.
"""
