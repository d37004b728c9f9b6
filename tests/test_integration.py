"""A few integration tests on the embedded default model (converted once into RESTKV_HOME)."""

import pytest

from restkv import RestKVPress, generate_with_stats
from restkv.cli import main
from restkv.eval.tasks.passkey import passkey_samples
from restkv.generation import encode_prompt
from restkv.models import DEFAULT_MODEL, load_model, restkv_home


@pytest.fixture(scope="module")
def loaded():
    return load_model(DEFAULT_MODEL)


def test_embedded_model_is_cached_as_a_plain_folder(loaded):
    assert (restkv_home() / "models" / DEFAULT_MODEL / "config.json").is_file()
    assert loaded.chat and loaded.model.config.model_type == "llama"
    assert loaded.model.config.num_key_value_heads == 3 and loaded.model.config.num_attention_heads == 9


def test_pass_key_is_found_with_full_and_with_a_generous_budget(loaded):
    sample = passkey_samples(1, 300, lambda p: encode_prompt(loaded.tokenizer, p).shape[1], seed=3)[0]
    full = generate_with_stats(loaded.model, loaded.tokenizer, sample.prompt, None, max_new_tokens=12)
    assert sample.answers[0] in full.text
    press = RestKVPress(budget=256)
    pressed = generate_with_stats(loaded.model, loaded.tokenizer, sample.prompt, press, max_new_tokens=12)
    assert sample.answers[0] in pressed.text
    assert pressed.kept_entries == 256 * 3 * 30 < full.kept_entries == full.full_entries


def test_cli_generate_prints_answer_and_costs(capsys):
    assert (
        main(["generate", "--budget", "48", "--param", "window_size=8", "--max-new-tokens", "8", "What is 2 + 2?"]) == 0
    )
    captured = capsys.readouterr()
    assert captured.out.strip() and "KV entries kept" in captured.err and "decode" in captured.err


def test_cli_generate_with_the_full_cache_keeps_every_entry(capsys):
    # the CLI passes budget=None for full; it means "not given", not a budget to refuse
    assert main(["generate", "--method", "full", "--max-new-tokens", "4", "What is 2 + 2?"]) == 0
    err = capsys.readouterr().err
    assert "[full]" in err and "(100%)" in err


def test_a_chat_context_and_its_question_render_the_template_of_the_whole_message(loaded):
    from restkv.context import SEPARATOR, split_prompt

    tok = loaded.tokenizer
    ids, suffix = split_prompt(tok, "A long document.", chat=True)
    whole = tok.apply_chat_template(
        [{"role": "user", "content": "A long document." + SEPARATOR + "Who wrote it?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert tok.decode(ids[0], skip_special_tokens=False) + "Who wrote it?" + suffix == whole
    assert suffix.startswith("<|im_end|>") and suffix.endswith("assistant\n")


def test_cli_chat_answers_each_question_and_a_saved_context_answers_the_same(tmp_path, capsys, monkeypatch):
    import io

    doc = tmp_path / "doc.txt"
    filler = "The grass is green and the sky is blue. " * 8
    doc.write_text(filler + "The secret pass key is 52913. Remember it. " + filler)
    questions = tmp_path / "q.txt"
    questions.write_text("What is the secret pass key?\n\nWhat colour is the sky?\n")
    saved = tmp_path / "doc.restkv"
    common = ["--questions", str(questions), "--max-new-tokens", "12"]
    assert main(["chat", "--context-file", str(doc), "--method", "full", *common]) == 0
    assert "52913" in capsys.readouterr().out.split("Q: ")[1]  # the question reads the context
    assert main(["chat", "--context-file", str(doc), "--budget", "96", "--save", str(saved), *common]) == 0
    first = capsys.readouterr()
    assert first.out.count("Q: ") == 2 and first.out.count("\nA: ") == 2
    assert "KV entries kept" in first.err and saved.is_file()
    assert main(["chat", "--load", str(saved), *common]) == 0
    assert capsys.readouterr().out == first.out
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the secret pass key?\n"))
    assert main(["chat", "--load", str(saved), "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == first.out.split("A: ")[1].split("\n")[0].strip()
    assert main(["chat", "--load", str(saved), "--method", "snapkv"]) == 2
    assert "--load brings the method" in capsys.readouterr().err
    assert main(["chat", "--context-file", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gemma2_loads_from_the_cli_with_its_eager_attention_and_sdpa_is_one_sentence(loaded, tmp_path, capsys):
    """transformers has no sdpa for Gemma 2; the default (auto) must pick eager for it."""
    import re
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM, Gemma2Config

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import COMMON, FAMILY_CONFIGS

    config = Gemma2Config(**{**COMMON, **FAMILY_CONFIGS["gemma2"], "vocab_size": len(loaded.tokenizer)})
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma2")
    loaded.tokenizer.save_pretrained(tmp_path / "gemma2")
    args = ["generate", "--model", str(tmp_path / "gemma2"), "--method", "snapkv", "--budget", "40"]
    assert main([*args, "--max-new-tokens", "3", "--no-chat", "What is the pass key? " * 8]) == 0
    kept, total = map(int, re.search(r"KV entries kept (\d+) of (\d+)", capsys.readouterr().err).groups())
    assert kept < total  # the press compressed Gemma 2's global layers
    assert main([*args, "--attn", "sdpa", "hello"]) == 2
    assert "scaled_dot_product_attention" in capsys.readouterr().err
