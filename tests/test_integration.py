"""A few integration tests on the embedded default model (converted once into RESTKV_HOME)."""

import pytest

from restkv import RestKVPress, generate_with_stats
from restkv.cli import main
from restkv.eval.tasks.passkey import passkey_samples
from restkv.generate import encode_prompt
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
