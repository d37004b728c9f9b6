"""The question-aware observation window, on the embedded model's tokenizer and several chat templates."""

import copy

import pytest
import torch

from restkv import get_press
from restkv.generation import encode_prompt, greedy_decode
from restkv.window import question_start, question_window
from tiny_models import prompt_ids, tiny_model

TEMPLATES = {
    "chatml": None,  # the tokenizer's own (SmolLM2)
    "llama3": (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "mistral": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
    "gemma": (
        "{% for m in messages %}<start_of_turn>user\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
}
PROMPT = (
    "The grass is green. The sky is blue. " * 20 + "\nThe key is 4242.\nWhat is the key? Answer with the number only."
)


@pytest.fixture(scope="module")
def tokenizer():
    from restkv.models import load_model

    return load_model().tokenizer


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_auto_window_starts_at_the_question_for_each_chat_template(tokenizer, template):
    tok = copy.deepcopy(tokenizer)
    if TEMPLATES[template]:
        tok.chat_template = TEMPLATES[template]
    w = question_window(tok, PROMPT, chat=True)
    ids = encode_prompt(tok, PROMPT, chat=True)[0]
    window_text = tok.decode(ids[-w:])
    before = tok.decode(ids[-w - 6 : -w])
    assert window_text.lstrip().startswith("What is the key?"), window_text
    assert "4242" not in window_text and "4242." in before
    assert 8 <= w <= 64


def test_auto_window_for_plain_prompts_and_answer_prefixes(tokenizer):
    w = question_window(tokenizer, PROMPT, chat=False)
    ids = encode_prompt(tokenizer, PROMPT, chat=False)[0]
    assert tokenizer.decode(ids[-w:]).lstrip().startswith("What is the key?")
    with_prefix = question_window(tokenizer, PROMPT, chat=True, answer_prefix=" The key is")
    assert with_prefix == question_window(tokenizer, PROMPT, chat=True) + len(
        tokenizer(" The key is", add_special_tokens=False)["input_ids"]
    )


def test_window_is_clipped_and_long_last_lines_use_their_last_sentence(tokenizer):
    assert question_window(tokenizer, "Tell me.\nWhy?", chat=False, low=8, high=64) == 8
    long_line = "word " * 200 + "end. Final question here?"
    start = question_start(long_line, lambda s: len(s.split()), high=64)
    assert long_line[start:] == "Final question here?"
    assert question_window(tokenizer, "x\n" + "word " * 300, chat=False, high=40) == 40


def test_auto_window_press_uses_the_given_window_and_paper_default_is_unchanged():
    model = tiny_model("llama")
    ids = prompt_ids(120)
    auto = get_press("restkv", budget=40, window_size="auto")
    assert auto.window_range == (8, 39) and auto.params()["window_size"] == "auto"
    fixed = get_press("restkv", budget=40, window_size=12)
    # an auto press told "12" compresses exactly like a press with window_size=12
    assert greedy_decode(model, ids, auto, 5, window=12)[0] == greedy_decode(model, ids, fixed, 5)[0]
    assert get_press("restkv", budget=128).scorer.window_size == 32
    with pytest.raises(ValueError, match="window_range must be two integers"):
        get_press("restkv", budget=64, window_size="auto", window_range=(16, 8))
    with pytest.raises(ValueError, match='window_range goes with window_size="auto"'):
        get_press("restkv", budget=64, window_range=(8, 16))


def test_auto_window_through_the_engine(tmp_path):
    from restkv.eval.runner import run_sweep
    from restkv.eval.store import ResultStore
    from restkv.eval.tasks.base import Sample
    from restkv.specs import MethodConfig
    from tiny_models import TinyLoaded

    configs = [
        MethodConfig.make("full"),
        MethodConfig.make("restkv", 40, window_size="auto"),
        MethodConfig.make("snapkv", 40, window_size="auto"),
    ]
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep(
            TinyLoaded(),
            "t",
            [Sample("a", "x" * 100 + "\nwhat now?", ["1"], 3)],
            configs,
            store,
            lambda p, s: 0.0,
            progress=False,
        )
        rows = store.rows()
    assert len(rows) == 3 and rows[1]["params"]["window_size"] == "auto"
    assert torch.tensor([r["kept_entries"] for r in rows[1:]]).eq(40 * 2 * 3).all()


@pytest.mark.parametrize("chat", [True, False])
def test_code_positions_are_the_needles_tokens(tokenizer, chat):
    from restkv.eval.tasks.niah import code_positions, niah_sample
    from restkv.generation import encode_prompt

    sample = niah_sample("s", "4651087", 0.5, 0.3, 600, lambda t: len(tokenizer(t)["input_ids"]), "essays")
    ids = encode_prompt(tokenizer, sample.prompt, chat=chat, answer_prefix=sample.answer_prefix)[0]
    positions = code_positions(tokenizer, sample, chat=chat)
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert tokenizer.decode(ids[positions]).strip() == "4651087"
