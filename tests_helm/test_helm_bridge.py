"""The HELM bridge (issue 33): restkv's deployments register through HELM's entry point, a
request is answered exactly as restkv answers the same prompt under the same press, what a
greedy pressed model cannot serve is refused in one sentence, and ``helm-run`` evaluates a
pressed model on a scenario HELM generates locally (synthetic reasoning)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helm.benchmark.model_deployment_registry import get_model_deployment
from helm.common.cache_backend_config import BlackHoleCacheBackendConfig
from helm.common.request import Request

from restkv.generation import generate_with_stats
from restkv.models import load_model
from restkv.press import get_press

MODEL = "smollm2-135m-instruct"
NAME = f"restkv/{MODEL}"


def _client_and_tokenizer(method: str, settings: dict | None = None):
    from restkv.integrations.helm import RestkvClient, RestkvTokenizer

    cache = BlackHoleCacheBackendConfig().get_cache_config("restkv")
    tokenizer = RestkvTokenizer(cache, NAME, MODEL)
    return RestkvClient(cache, tokenizer, NAME, MODEL, method, settings), tokenizer


def _request(prompt: str, **settings) -> Request:
    settings = {"temperature": 0.0, "max_tokens": 12, **settings}
    return Request(model_deployment=NAME, model=NAME, prompt=prompt, **settings)


def test_helm_finds_the_deployments_through_restkvs_entry_point():
    from helm.benchmark.run import load_entry_point_plugins

    loaded = load_entry_point_plugins()
    assert any(getattr(module, "__name__", "") == "restkv.integrations.helm" for module in loaded)
    full, pressed = get_model_deployment(NAME), get_model_deployment(f"{NAME}-restkv-0.5")
    assert full.client_spec.class_name == "restkv.integrations.helm.client.RestkvClient"
    assert full.client_spec.args == {"model": MODEL, "method": "full", "settings": {}}
    assert pressed.client_spec.args == {"model": MODEL, "method": "restkv", "settings": {"compression_ratio": 0.5}}
    assert pressed.tokenizer_name == NAME and pressed.max_sequence_length == 8192


@pytest.mark.parametrize(
    ("method", "settings"), [("full", None), ("restkv", {"budget": 48}), ("snapkv", {"compression_ratio": 0.5})]
)
def test_a_request_is_answered_as_restkv_answers_the_prompt_under_the_press(method, settings):
    prompt = "Remember the code 4812. " + "The sky was grey and the road was long. " * 12 + "What was the code?"
    client, _ = _client_and_tokenizer(method, settings)
    result = client.make_request(_request(prompt))
    assert result.success, result.error
    loaded = load_model(MODEL)
    press = get_press(method, **(settings or {}))
    expected = generate_with_stats(loaded.model, loaded.tokenizer, prompt, press, 12, loaded.chat)
    assert result.completions[0].text == expected.text
    if method != "full":
        assert expected.kept_entries < expected.full_entries  # the press really evicted


def test_stop_sequences_cut_the_answer_and_set_the_finish_reason():
    client, _ = _client_and_tokenizer("full")
    prompt = "Count from one to ten in words."
    text = client.make_request(_request(prompt, max_tokens=20)).completions[0].text
    stop = text[4:6]  # a piece of the answer itself, so the cut is known whatever the model says
    assert len(text) > 6 and stop
    cut = client.make_request(_request(prompt, max_tokens=20, stop_sequences=[stop])).completions[0]
    assert cut.text == text[: text.index(stop)]
    assert cut.finish_reason == {"reason": "stop"}


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"temperature": 0.7}, "decodes greedily"),
        ({"num_completions": 3}, "decodes greedily"),
        ({"echo_prompt": True, "max_tokens": 0}, "no prompt log-probabilities"),
        ({"embedding": True}, "embeddings"),
    ],
)
def test_what_a_greedy_pressed_model_cannot_serve_is_refused_in_one_sentence(settings, says):
    client, _ = _client_and_tokenizer("restkv", {"budget": 48})
    result = client.make_request(_request("Hello", **settings))
    assert not result.success and says in result.error and result.error.count(". ") == 0


def test_a_wrong_method_fails_when_helm_builds_the_client():
    with pytest.raises(ValueError, match="budget"):
        _client_and_tokenizer("restkv", {"budget": -3})
    with pytest.raises(ValueError, match="unknown method"):
        _client_and_tokenizer("restkv[budget=48]")
    with pytest.raises(ValueError, match="settings must be a mapping"):
        _client_and_tokenizer("restkv", ["budget", 48])


def test_helm_run_evaluates_a_pressed_model_on_a_locally_generated_scenario(tmp_path: Path):
    helm_run = Path(sys.executable).parent / "helm-run"
    entries = [f"synthetic_reasoning:mode=pattern_match,model={NAME}{suffix}" for suffix in ("", "-restkv-0.75")]
    command = [str(helm_run), "--run-entries", *entries, "--suite", "ci", "--max-eval-instances", "2",
               "--local-path", str(tmp_path / "prod_env"), "--output-path", str(tmp_path / "out"),
               "--num-threads", "2"]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for entry in entries:
        folder = tmp_path / "out" / "runs" / "ci" / entry.replace("restkv/", "restkv_")
        states = json.loads((folder / "scenario_state.json").read_text())["request_states"]
        assert len(states) == 2 and all(s["result"]["success"] for s in states)
        assert all(s["request"]["model_deployment"] == entry.split("model=")[1] for s in states)
        stats = {s["name"]["name"]: s for s in json.loads((folder / "stats.json").read_text())
                 if s["name"].get("split") == "test" and "perturbation" not in s["name"]}  # fmt: skip
        assert stats["exact_match"]["count"] == 1 and 0 <= stats["exact_match"]["mean"] <= 1
