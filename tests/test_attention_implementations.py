"""Every attention implementation either works under every press or is refused by name."""

import pytest
import torch

from restkv.cli import main
from restkv.generation import greedy_decode
from restkv.models import ATTENTION, ModelLoadError, load_model
from restkv.press import get_press
from restkv.scorers import available
from tiny_models import prompt_ids, tiny_model

#: the implementations a press runs on; the others of ATTENTION are refused
WORKING = ("sdpa", "eager")


def press_for(method: str):
    return get_press("full") if method == "full" else get_press(method, budget=24, window_size=8)


@pytest.mark.parametrize("method", available())
def test_sdpa_and_eager_give_the_same_tokens_under_every_press(method):
    ids = prompt_ids(70)
    runs = []
    for attn in WORKING:
        torch.manual_seed(0)  # the random baseline draws the same positions under both
        tokens, kept, *_ = greedy_decode(tiny_model("llama", attn=attn), ids, press_for(method), 6)
        runs.append((tokens, kept))
    assert runs[0] == runs[1], method


@pytest.mark.parametrize("attn", sorted(set(ATTENTION) - set(WORKING) - {"auto"}))
def test_the_cli_refuses_the_others_by_name_before_loading_anything(attn, capsys):
    code = main(["generate", "--attn", attn, "--model", "/nonexistent/model", "hello"])
    err = capsys.readouterr().err
    assert code == 2 and f"--attn {attn} cannot run under a press" in err and "/nonexistent" not in err


def test_an_unknown_attention_implementation_is_one_sentence():
    with pytest.raises(ModelLoadError, match="attn must be one of auto, sdpa, eager"):
        load_model("/nonexistent", attn="paged")
