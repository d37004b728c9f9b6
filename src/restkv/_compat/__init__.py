"""restkv's only doors into other projects' internals: one module per outside project.

Each module names the version range it was written for (``SUPPORTED``), checks the installed
version the first time one of its functions runs (never at ``import restkv``, so a user without
that project is unaffected) and raises :class:`~restkv._compat.versions.UnsupportedVersionError`
with one sentence outside it. ``tests/test_compat.py`` holds each module's contract (the names
and signatures it relies on), and ``tests/test_private_names.py`` fails when code outside this
package touches a private name of transformers, torch, lm-eval, accelerate or uvicorn.

* :mod:`.transformers_config` -- a config's attention implementation and checkpoint name
* :mod:`.transformers_attention` -- each model family's own ``eager_attention_forward``
* :mod:`.transformers_cache` -- quantized layers' payload, what a cache layer's ``__init__`` sets
* :mod:`.transformers_serving` -- continuous batching's batch processor, block tables and pool,
  and the serving CLI's generation managers
* :mod:`.torch_inductor` -- inductor and dynamo settings for the compiled decoding step
* :mod:`.lm_eval` -- lm-eval's ``HFLM``, whose private generation method the harness overrides
* :mod:`.accelerate_hooks` -- accelerate's offloading hook on a module
* :mod:`.uvicorn_server` -- the port a started uvicorn server listens on

This package is the lowest layer: it imports nothing else of restkv's.
"""
