"""restkv's only doors into other projects' internals: one module per outside project.

* :mod:`.vllm` -- vLLM's engine arguments, input processor, V1 model runner and CPU KV layout
"""
