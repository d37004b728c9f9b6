"""Serving with eviction: transformers' continuous batching and OpenAI-compatible server, under a press.

:mod:`restkv.serve.paged` compresses each request's paged cache after its prefill and returns the
freed blocks to the pool; :mod:`restkv.serve.server` builds ``restkv serve``'s app on
transformers' own serving stack.
"""
