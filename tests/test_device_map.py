"""Models placed by accelerate (device_map), with layers offloaded to disk, under every press."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from restkv.adapters import resident_weight
from restkv.cli import main
from restkv.generation import greedy_decode
from restkv.press import get_press
from restkv.scorers import available
from tiny_models import prompt_ids, tiny_model

#: the tiny llama's modules: the first layer in memory, the other two offloaded to disk
OFFLOADED = {
    "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
    "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model("llama")
    model.save_pretrained(folder)
    placed = AutoModelForCausalLM.from_pretrained(
        folder, device_map=OFFLOADED, offload_folder=str(folder / "offload"), attn_implementation="eager"
    ).eval()
    return model, placed


def test_offloaded_weights_sit_on_meta_and_are_read_from_the_offload(models):
    model, placed = models
    o_proj = placed.model.layers[2].self_attn.o_proj
    assert o_proj.weight.device.type == "meta"  # what a scorer reading .weight directly would get
    torch.testing.assert_close(resident_weight(o_proj), model.model.layers[2].self_attn.o_proj.weight)


@pytest.mark.parametrize("method", available())
def test_every_press_gives_the_same_tokens_with_layers_offloaded_to_disk(models, method):
    model, placed = models
    press = get_press("full") if method == "full" else get_press(method, budget=24, window_size=8)
    ids = prompt_ids(90)
    torch.manual_seed(0)
    expected = greedy_decode(model, ids, press, 8)
    torch.manual_seed(0)
    got = greedy_decode(placed, ids, press, 8)
    assert got[:2] == expected[:2], method  # tokens and kept entries


def test_the_cli_places_the_embedded_model_and_answers_as_without_a_map(tmp_path, capsys):
    layers = {f"model.layers.{i}": "cpu" if i < 20 else "disk" for i in range(30)}
    mapping = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu", **layers}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    args = ["generate", "--method", "restkv", "--budget", "64", "--max-new-tokens", "8", "--no-chat"]
    prompt = "The pass key is 41552. Remember it. " + "The grass is green. " * 20 + "The pass key is"
    assert main([*args, prompt]) == 0
    plain = capsys.readouterr().out
    placed = ["--device-map", str(tmp_path / "map.json"), "--offload-folder", str(tmp_path / "off")]
    assert main([*args, *placed, prompt]) == 0
    assert capsys.readouterr().out == plain


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--device-map", "nowhere.json"], "--device-map takes auto, balanced, sequential or a JSON file"),
        (["--max-memory", "cpu=2GiB"], "--max-memory and --offload-folder go with --device-map"),
        (["--device-map", "auto", "--max-memory", "cpu"], "--max-memory takes DEVICE=SIZE pairs"),
    ],
)
def test_bad_placement_arguments_are_one_sentence(extra, message, capsys):
    assert main(["generate", *extra, "hello"]) == 2
    assert message in capsys.readouterr().err
