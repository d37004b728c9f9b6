"""``restkv serve``: transformers' server and continuous batching, with paged caches compressed after prefill.

Servers bind to 127.0.0.1 on a free port and are stopped inside each test module; every request
has a timeout and a bounded number of tokens.
"""

import concurrent.futures as cf
import json
import time
import urllib.request

import openai
import pytest
import torch

from restkv import get_press
from restkv.cli import main
from restkv.serve.server import ServedModel
from serve_processes import serve_command, tiny_loaded
from tiny_models import CharTokenizer

W = 8
PAGE = 16
BLOCKS = 64
PROMPTS = ["".join(chr(65 + (7 * i + 3 * j) % 26) for j in range(100 + 9 * i)) for i in range(4)]


def client_of(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120, max_retries=0)


def complete(client, name, prompt, extra=None, max_tokens=8):
    reply = client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body=extra)
    return reply.choices[0].text


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/restkv/stats", timeout=30) as reply:
        return json.loads(reply.read())


def expected(model, prompt, press=None, max_new_tokens=8):
    """Greedy model.generate on the same tokens, under ``press`` (a DynamicCache) or none."""
    tokenizer = CharTokenizer()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    press = press or get_press("full")
    with press(model):
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :].tolist())


@pytest.fixture(scope="module")
def served():
    """A tiny model served under ReST-KV with budget 40 (pages of 16 tokens, a pool of 64 blocks)."""
    loaded = tiny_loaded()
    server = ServedModel(loaded, get_press("restkv", budget=40, window_size=W), page_size=PAGE, num_blocks=BLOCKS)
    port = server.start()
    yield server, port
    server.stop()


def test_concurrent_requests_answer_as_the_press_does(served):
    server, port = served
    client = client_of(port)
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: complete(client, server.name, p), PROMPTS))
    press = get_press("restkv", budget=40, window_size=W)
    model = server.loaded.model
    # token-level selection from the same window queries: the same kept entries, the same tokens
    assert answers == [expected(model, p, press) for p in PROMPTS]
    assert answers != [expected(model, p) for p in PROMPTS]  # eviction changed something
    records = stats(port)["requests"][-len(PROMPTS) :]
    assert sorted(r["prompt_tokens"] for r in records) == sorted(len(p) for p in PROMPTS)
    for record in records:
        assert record["kept"] == 40
        assert record["blocks_before"] == -(-record["prompt_tokens"] // PAGE)
        assert record["blocks_after"] == 3  # ceil(40 / 16): the rest went back to the pool
    assert stats(port)["peak_decoding"] >= 2  # requests were decoding side by side


def test_eviction_frees_blocks_a_full_request_keeps(served):
    server, port = served
    client = client_of(port)
    complete(client, server.name, PROMPTS[1], extra={"restkv": {"method": "full"}})  # this request only
    full = stats(port)["requests"][-1]
    complete(client, server.name, PROMPTS[1])
    evicted = stats(port)["requests"][-1]
    assert full["kept"] == full["prompt_tokens"] == len(PROMPTS[1])
    assert full["free_blocks_after"] == BLOCKS - full["blocks_before"]  # alone in the pool
    assert evicted["free_blocks_after"] == BLOCKS - 3 > full["free_blocks_after"]
    assert stats(port)["free_blocks"] == BLOCKS  # finished requests gave everything back
    deadline = time.monotonic() + 10  # and nothing is kept for them (the answer may arrive first)
    while server.eviction._dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.eviction._dropped == {} and server.eviction._queries == {}


def test_a_request_can_name_its_own_press(served):
    server, port = served
    client = client_of(port)
    own = {"method": "snapkv", "budget": 48, "window_size": W}
    answer = complete(client, server.name, PROMPTS[2], extra={"restkv": own})
    assert answer == expected(server.loaded.model, PROMPTS[2], get_press("snapkv", budget=48, window_size=W))
    assert stats(port)["requests"][-1]["kept"] == 48
    bad = {"method": "restkv", "budget": 48, "allocator": "pyramid"}
    for field, message in ((bad, "uniform allocator"), (12, "must be an object")):
        with pytest.raises(openai.BadRequestError) as error:
            complete(client, server.name, PROMPTS[2], extra={"restkv": field})
        assert message in error.value.response.json()["detail"]


def test_prompts_split_over_prefill_chunks_compress_alike():
    """With 40 tokens per forward, prompts are prefilled in chunks and a window may straddle two."""
    loaded = tiny_loaded()
    press = get_press("restkv", budget=40, window_size=W)
    server = ServedModel(loaded, press, page_size=PAGE, num_blocks=BLOCKS, max_batch_tokens=40)
    port = server.start()
    try:
        client = client_of(port)
        prompts = [PROMPTS[0][:84], PROMPTS[1][:123]]  # 84 = 40 + 40 + 4: the window spans two chunks
        with cf.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda p: complete(client, server.name, p), prompts))
        assert answers == [expected(loaded.model, p, press) for p in prompts]
        assert sorted(r["kept"] for r in stats(port)["requests"]) == [40, 40]
    finally:
        server.stop()


@pytest.mark.parametrize("block_size", [PAGE])
def test_block_aligned_serving_keeps_whole_pages(block_size):
    loaded = tiny_loaded()
    press = get_press("snapkv", budget=40, window_size=W, block_size=block_size, block_reduce="max")
    server = ServedModel(loaded, press, page_size=PAGE, num_blocks=BLOCKS)
    port = server.start()
    try:
        client = client_of(port)
        with cf.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda p: complete(client, server.name, p), PROMPTS[:2]))
        # the press's own block-aligned selection on the same prompt: blocks align to the same positions
        assert answers == [expected(loaded.model, p, press) for p in PROMPTS[:2]]
        for record in stats(port)["requests"]:
            n, kept = record["prompt_tokens"], record["kept"]
            tail = n - ((n - W) // PAGE) * PAGE
            assert kept <= 40 and (kept - tail) % PAGE == 0 and kept - tail > 0
    finally:
        server.stop()


def test_full_cache_answers_equal_greedy_generate():
    loaded = tiny_loaded()
    server = ServedModel(loaded, get_press("full"), page_size=PAGE, num_blocks=BLOCKS)
    port = server.start()
    try:
        client = client_of(port)
        with cf.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda p: complete(client, server.name, p), PROMPTS[:3]))
        assert answers == [expected(loaded.model, p) for p in PROMPTS[:3]]
        assert all(r["kept"] == r["prompt_tokens"] for r in stats(port)["requests"])
    finally:
        server.stop()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "nope"], "unknown method"),
        (["--param", "allocator=pyramid"], "uniform allocator"),
        (["--param", "chunk_size=4096"], "chunk_size"),
        (["--port", "70000"], "--port"),
        (["--param", "block_size=16", "--budget", "40"], "at least 47"),
    ],
)
def test_bad_serve_arguments_are_one_sentence_and_exit_2(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_restkv_serve_command_answers_concurrent_chat_requests(tmp_path):
    """The real command on the embedded SmolLM2, queried by the openai client like any OpenAI server."""
    args = ("--budget", "48", "--param", "window_size=16", "--num-blocks", "128", "--max-batch-tokens", "1024")
    with serve_command(tmp_path, *args) as (_, port, name):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=600, max_retries=0)
        facts = " ".join(f"Box {i} holds a {c} ball." for i, c in enumerate("red blue green yellow".split() * 2))

        def ask(question):
            messages = [{"role": "user", "content": f"{facts}\n{question}"}]
            reply = client.chat.completions.create(model=name, messages=messages, max_tokens=4, temperature=0)
            return reply.choices[0].message.content

        with cf.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, ["What does box 1 hold?", "What does box 2 hold?"]))
        assert all(isinstance(a, str) and a.strip() for a in answers)
        records = stats(port)["requests"]
        assert len(records) == 2 and all(r["prompt_tokens"] > 48 and r["kept"] == 48 for r in records)
        assert all(r["blocks_after"] == 3 < r["blocks_before"] for r in records)
