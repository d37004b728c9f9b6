"""The engine and sampling settings every vLLM test engine shares."""

ENGINE = dict(
    dtype="float32",
    enforce_eager=True,
    max_model_len=1024,
    enable_prefix_caching=False,
    enable_chunked_prefill=True,
    max_num_batched_tokens=64,  # prompts of more than 64 tokens prefill in several steps
    max_num_seqs=4,
    seed=0,
)
SAMPLING = dict(temperature=0.0, max_tokens=12, ignore_eos=True)
