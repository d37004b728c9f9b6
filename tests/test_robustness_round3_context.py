"""Robustness, round three (issue 35), findings 2, 11 and 12: saved contexts and dtype changes.

A saved context was used as it came: keys cut below what its state says were kept, a file without
``params`` (a raw KeyError), tensors of the wrong head size (a RuntimeError at the first question)
all got past ``load_context``. ``save`` labelled the file with the model's current dtype, not the
tensors', and a model moved to bfloat16 after compression failed inside attention.
"""

import pytest
import torch

from restkv import compress_context, get_press, load_context
from restkv.cli import EXIT_USAGE, main
from tiny_models import CharTokenizer, TinyLoaded, tiny_model

CONTEXT = "The vault code is 4729. " * 6 + "Nothing else matters here, only the weather and the sea. " * 4
BUDGET = 40


def saved_context(tmp_path, family="llama"):
    """A context compressed to ``BUDGET`` entries per head and saved; the model and the file's path."""
    model = tiny_model(family)
    ctx = compress_context(model, CharTokenizer(), CONTEXT, get_press("restkv", budget=BUDGET), chat=False)
    path = tmp_path / "ctx.restkv"
    ctx.save(path)
    return model, path


def rewrite(path, change) -> None:
    """Apply ``change`` to the saved blob in place, as a damaged or hand-edited file would be."""
    blob = torch.load(path, weights_only=True)
    change(blob)
    torch.save(blob, path)


def assert_one_sentence(err, path, fragment) -> None:
    message = str(err.value)
    assert str(path) in message and fragment in message, message
    assert "\n" not in message


def cut_keys(blob):
    layer = blob["layers"][1]
    layer["keys"], layer["values"] = layer["keys"][:, :, :3], layer["values"][:, :, :3]


def resized_heads(blob):
    for layer in blob["layers"]:
        layer["keys"], layer["values"] = layer["keys"][..., :8], layer["values"][..., :8]


def fewer_heads(blob):
    for layer in blob["layers"]:
        layer["keys"], layer["values"] = layer["keys"][:, :1], layer["values"][:, :1]


def test_keys_cut_below_what_the_state_says_was_kept_are_refused(tmp_path):
    """Finding 2: keys cut to 3 entries while the state says 40 loaded and answered with no error."""
    model, path = saved_context(tmp_path)
    rewrite(path, cut_keys)
    with pytest.raises(ValueError) as err:
        load_context(path, model, CharTokenizer())
    assert_one_sentence(err, path, f"layer 1 holds 3 entries, but its state says {BUDGET} were kept")


def test_a_file_without_params_is_refused_in_one_sentence(tmp_path):
    """Finding 11: a file without params raised a raw KeyError."""
    model, path = saved_context(tmp_path)
    rewrite(path, lambda blob: blob.pop("params"))
    with pytest.raises(ValueError) as err:
        load_context(path, model, CharTokenizer())
    assert_one_sentence(err, path, "is a damaged saved context: it has no params")


@pytest.mark.parametrize("change,shape", [(resized_heads, "[1, 2, 40, 8]"), (fewer_heads, "[1, 1, 40, 16]")])
def test_tensors_of_another_head_size_or_count_are_refused_at_load(tmp_path, change, shape):
    """Finding 11: keys of the wrong head size loaded, then failed with a RuntimeError at the first question."""
    model, path = saved_context(tmp_path)
    rewrite(path, change)
    with pytest.raises(ValueError) as err:
        load_context(path, model, CharTokenizer())
    assert_one_sentence(err, path, f"layer 0's keys are {shape}, not [1, 2, tokens, 16] as the model stores them")


@pytest.mark.parametrize("layers", [2, 4])
def test_another_number_of_layers_is_refused_in_one_sentence(tmp_path, layers):
    """Finding 11: a file with fewer cache layers than the model failed inside zip (more: the same)."""
    model, path = saved_context(tmp_path)
    rewrite(path, lambda blob: blob.update(layers=(blob["layers"] * 2)[:layers]))
    with pytest.raises(ValueError) as err:
        load_context(path, model, CharTokenizer())
    assert_one_sentence(err, path, f"it holds {layers} cache layers, but the model has 3")


def drop_state_layers(blob):
    del blob["state"]["layers"]


def unequal_values(blob):
    blob["layers"][2]["values"] = blob["layers"][2]["values"][:, :, :-1]


def short_mask(blob):
    blob["state"]["layers"][0][2] = torch.ones(1, 2, 5, dtype=torch.bool)


def foreign_layer(blob):
    blob["state"]["layers"][7] = [374, BUDGET, None]


def bad_params(blob):
    blob["params"]["alpha"] = "much"


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda blob: blob.update(layers="many"), "its layers is a str, not a list"),
        (lambda blob: blob.update(context_ids=torch.zeros(3)), "not one row of token ids"),
        (lambda blob: blob.pop("question_suffix"), "it has no question_suffix"),
        (lambda blob: blob["model"].pop("weights"), "its model record lacks weights"),
        (unequal_values, "layer 2 holds 40 keys but 39 values"),
        (drop_state_layers, "its state is not the one save writes"),
        (short_mask, "its padding mask of layer 0 does not cover the 40 kept entries"),
        (foreign_layer, "its state records layer 7, but it holds 3 layers"),
        (bad_params, "its method 'restkv' cannot be rebuilt"),
    ],
)
def test_every_other_damage_is_one_sentence_naming_the_file(tmp_path, change, fragment):
    """Findings 2 and 11: the whole file is checked before use, each way it can be wrong in one sentence."""
    model, path = saved_context(tmp_path)
    rewrite(path, change)
    with pytest.raises(ValueError) as err:
        load_context(path, model, CharTokenizer())
    assert_one_sentence(err, path, fragment)


def test_save_after_the_model_moved_to_bfloat16_records_the_tensors_dtype(tmp_path):
    """Finding 12: the file said bfloat16 (the model's dtype at save) but held float32 tensors;
    loading it with the bfloat16 model then crashed inside attention."""
    model, tok = tiny_model("llama"), CharTokenizer()
    ctx = compress_context(model, tok, CONTEXT, get_press("restkv", budget=BUDGET), chat=False)
    answer = ctx.ask("What is the code?", max_new_tokens=6)
    model.to(torch.bfloat16)
    path = tmp_path / "ctx.restkv"
    ctx.save(path)
    assert torch.load(path, weights_only=True)["model"]["dtype"] == "float32"
    with pytest.raises(ValueError) as err:
        load_context(path, model, tok)
    assert_one_sentence(err, path, "was compressed with another model or dtype")
    # the float32 model it was compressed with takes it, and answers as before
    again = load_context(path, tiny_model("llama"), tok)
    assert again.ask("What is the code?", max_new_tokens=6) == answer


def test_a_file_labelled_bfloat16_holding_float32_tensors_is_refused(tmp_path):
    """Finding 12: what save used to write (the label from the model, the tensors from the cache)."""
    from restkv.context import model_fingerprint

    model, path = saved_context(tmp_path)
    model.to(torch.bfloat16)
    rewrite(path, lambda blob: blob.update(model=model_fingerprint(model)))
    with pytest.raises(ValueError) as err:
        load_context(path, model, CharTokenizer())
    assert_one_sentence(err, path, "layer 0's keys are float32, but the file says it holds bfloat16")


@pytest.mark.parametrize(
    "family,settings", [("llama", dict(budget=BUDGET)), ("gemma3_text", dict(budget=BUDGET, decode_budget=48))]
)
def test_a_model_moved_to_bfloat16_after_compression_still_answers(family, settings):
    """Finding 12: compress, model.to(torch.bfloat16), ask: a raw dtype RuntimeError inside attention."""
    model, tok = tiny_model(family), CharTokenizer()
    method = "h2o" if "decode_budget" in settings else "restkv"
    ctx = compress_context(model, tok, CONTEXT, get_press(method, **settings), chat=False)
    model.to(torch.bfloat16)
    answer = ctx.ask("What is the code?", max_new_tokens=8)
    assert isinstance(answer, str)
    # the shared cache stays as it was made: only each question's fork is cast
    assert all(layer.keys.dtype == torch.float32 for layer in ctx.cache.layers)
    _, cache, _ = ctx.next_logits("Which number?")
    assert all(layer.keys.dtype == torch.bfloat16 for layer in cache.layers)


@pytest.mark.parametrize(
    "change,fragment", [(lambda blob: blob.pop("params"), "it has no params"), (cut_keys, "were kept")]
)
def test_chat_load_of_a_damaged_context_exits_2_with_one_sentence(tmp_path, monkeypatch, capsys, change, fragment):
    """Findings 2 and 11 at the command line: a traceback (KeyError), or answers from a damaged cache."""
    import restkv.cli.chat

    model, path = saved_context(tmp_path)
    rewrite(path, change)
    loaded = TinyLoaded("llama")
    monkeypatch.setattr(restkv.cli.chat, "load_from_args", lambda args: loaded)
    questions = tmp_path / "questions.txt"
    questions.write_text("What is the code?\n")
    assert main(["chat", "--load", str(path), "--questions", str(questions)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"restkv: error: {path} is a damaged saved context" in err and fragment in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
