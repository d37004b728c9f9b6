"""Compress once, ask many: answers equal a fresh compression, questions never see each other,
and a saved context reloads to identical logits."""

import pytest
import torch

from restkv import compress_context, get_press, load_context
from restkv.generation import greedy_decode
from tiny_models import CharTokenizer, tiny_model

CONTEXT = "The vault code is 4729. " * 6 + "Nothing else matters here, only the weather and the sea. " * 4
QUESTIONS = ["What is the code?", "Where is the sea?", "Which number?"]

PRESSES = {
    "restkv": dict(budget=40),
    "snapkv": dict(budget=40, window_size=8),
    "tova": dict(budget=40),
    "streamingllm": dict(budget=40),
    "restkv-chunked-rerotate": dict(budget=40, chunk_size=64, rerotate=True),
    "h2o-decode-budget": dict(budget=40, decode_budget=48),
}


def make_press(key):
    return get_press(key.split("-")[0], **PRESSES[key])


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("key", list(PRESSES))
def test_each_answer_equals_a_fresh_compression_plus_that_question(family, key):
    model, tok = tiny_model(family), CharTokenizer()
    ctx = compress_context(model, tok, CONTEXT, make_press(key), chat=False)
    kept_before = [layer.keys.clone() for layer in ctx.cache.layers]
    answers = [ctx.ask(q, max_new_tokens=6) for q in QUESTIONS]
    # the shared cache is untouched by the questions asked of it
    for before, layer in zip(kept_before, ctx.cache.layers):
        assert torch.equal(before, layer.keys)
    for question, answer in zip(QUESTIONS, answers):
        fresh = compress_context(model, tok, CONTEXT, make_press(key), chat=False)
        assert fresh.ask(question, max_new_tokens=6) == answer


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_with_the_full_cache_an_answer_equals_plain_greedy_decoding_of_context_and_question(family):
    model, tok = tiny_model(family), CharTokenizer()
    ctx = compress_context(model, tok, CONTEXT, None, chat=False)
    question = QUESTIONS[0]
    ids = torch.cat([ctx.context_ids, ctx.question_ids(question)], dim=1)
    plain, *_ = greedy_decode(model, ids, None, 6)
    assert ctx.ask(question, max_new_tokens=6) == tok.decode(plain)


def test_a_compressed_context_keeps_its_budget_and_questions_see_only_their_own_tokens():
    model, tok = tiny_model("llama"), CharTokenizer()
    ctx = compress_context(model, tok, CONTEXT, get_press("snapkv", budget=40, window_size=8), chat=False)
    assert ctx.context_tokens == len(CONTEXT) + 2  # the separator's two newlines
    assert all(layer.keys.shape[2] == 40 for layer in ctx.cache.layers)
    _, cache, seen = ctx.next_logits("abc")
    assert seen == ctx.context_tokens + 3
    assert all(layer.keys.shape[2] == 43 for layer in cache.layers)


@pytest.mark.parametrize(
    "family,key", [("llama", "restkv"), ("gemma3_text", "restkv-chunked-rerotate"), ("llama", "h2o-decode-budget")]
)
def test_a_saved_context_reloads_to_identical_logits_and_answers(tmp_path, family, key):
    model, tok = tiny_model(family), CharTokenizer()
    ctx = compress_context(model, tok, CONTEXT, make_press(key), chat=False)
    ctx.save(tmp_path / "ctx.restkv")
    again = load_context(tmp_path / "ctx.restkv", model, tok)
    assert again.press.params() == ctx.press.params()
    for question in QUESTIONS:
        assert torch.equal(again.next_logits(question)[0], ctx.next_logits(question)[0])
        assert again.ask(question, max_new_tokens=6) == ctx.ask(question, max_new_tokens=6)


def test_a_saved_context_is_refused_for_another_model_or_dtype(tmp_path):
    tok = CharTokenizer()
    ctx = compress_context(tiny_model("llama"), tok, CONTEXT, get_press("restkv", budget=40), chat=False)
    ctx.save(tmp_path / "ctx.restkv")
    with pytest.raises(ValueError, match="another model or dtype"):
        load_context(tmp_path / "ctx.restkv", tiny_model("llama", seed=3), tok)
    with pytest.raises(ValueError, match="another model or dtype"):
        load_context(tmp_path / "ctx.restkv", tiny_model("llama", dtype=torch.bfloat16), tok)
    with pytest.raises(ValueError, match="another model or dtype"):
        load_context(tmp_path / "ctx.restkv", tiny_model("gemma3_text"), tok)


def test_bad_inputs_are_one_sentence(tmp_path):
    model, tok = tiny_model("llama"), CharTokenizer()
    with pytest.raises(ValueError, match='window_size="auto"'):
        compress_context(model, tok, CONTEXT, get_press("restkv", budget=40, window_size="auto"), chat=False)
    with pytest.raises(ValueError, match="context is empty"):
        compress_context(model, tok, "  ", get_press("restkv", budget=40), chat=False)
    ctx = compress_context(model, tok, CONTEXT, get_press("restkv", budget=40), chat=False)
    with pytest.raises(ValueError, match="question is empty"):
        ctx.ask("")
    with pytest.raises(FileNotFoundError, match="no saved context"):
        load_context(tmp_path / "missing", model, tok)
    (tmp_path / "junk").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a saved restkv context"):
        load_context(tmp_path / "junk", model, tok)
    torch.save({"format": 99}, tmp_path / "future")
    with pytest.raises(ValueError, match="format 1"):
        load_context(tmp_path / "future", model, tok)
    adakv = compress_context(model, tok, CONTEXT, get_press("restkv", budget=40, allocator="adakv"), chat=False)
    with pytest.raises(ValueError, match="adakv"):
        adakv.save(tmp_path / "adakv.restkv")
    with pytest.raises(ValueError, match="cannot write"):
        ctx.save(tmp_path / "no" / "such" / "folder" / "ctx.restkv")
