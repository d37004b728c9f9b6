"""The lm-evaluation-harness bridge, offline: local JSON tasks on the embedded model."""

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the local tasks below need nothing from the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402  (the lm-eval extra: CI installs it, so a missing harness fails here, not skips)
import pytest  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from restkv.cli import main  # noqa: E402
from restkv.eval.harness import PressedLM  # noqa: E402
from restkv.models import DEFAULT_MODEL, load_model  # noqa: E402

QUESTIONS = [
    ("The capital of France is", ["Paris", "Berlin", "Madrid"], 0),
    ("Two plus two equals", ["five", "four", "three"], 1),
    ("The color of the clear daytime sky is", ["green", "red", "blue"], 2),
    ("Water freezes at zero degrees", ["Celsius", "Kelvin", "Fahrenheit"], 0),
]
PASSKEY = "The pass key is {key}. Remember it. " + "The grass is green. The sky is blue. " * 12


def write_tasks(root):
    """A multiple-choice task (log-likelihood) and a generation task, read from local JSON."""
    choice = root / "choice.jsonl"
    preamble = "Read the statement, then complete it with the one word that makes it true. " * 3
    choice.write_text(
        "".join(json.dumps({"question": preamble + q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS)
    )
    keys = root / "keys.jsonl"
    keys.write_text("".join(json.dumps({"text": PASSKEY.format(key=k), "key": str(k)}) + "\n" for k in (4821, 90317)))
    (root / "local_choice.yaml").write_text(
        f"task: local_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {choice}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"
    )
    (root / "local_key.yaml").write_text(
        f"task: local_key\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {keys}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{text}}\\nThe pass key is'\n"
        "doc_to_target: '{{key}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "filter_list:\n  - name: first\n    filter:\n      - function: regex\n        regex_pattern: '(\\d+)'\n"
        "      - function: take_first\nmetric_list:\n  - metric: exact_match\n"
    )
    return root


@pytest.fixture(scope="module")
def loaded():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return TaskManager(include_path=str(write_tasks(tmp_path_factory.mktemp("tasks"))))


def evaluate(lm, tasks, names=("local_choice", "local_key")):
    return lm_eval.simple_evaluate(model=lm, tasks=list(names), task_manager=tasks, log_samples=True)


def loglikelihoods(results):
    return [resp[0] for doc in results["samples"]["local_choice"] for resp in doc["filtered_resps"]]


def test_full_equals_lm_evals_own_hf_model_on_both_kinds_of_request(loaded, tasks):
    ours = evaluate(PressedLM(loaded.model, "full", tokenizer=loaded.tokenizer), tasks)
    theirs = evaluate(HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, device="cpu"), tasks)
    for task, metric in (("local_choice", "acc,none"), ("local_key", "exact_match,first")):
        assert ours["results"][task][metric] == theirs["results"][task][metric], task
    assert loglikelihoods(ours) == pytest.approx(loglikelihoods(theirs), abs=1e-4)
    generated = [[d["resps"] for d in r["samples"]["local_key"]] for r in (ours, theirs)]
    assert generated[0] == generated[1]


def test_a_press_compresses_the_context_once_per_question_and_scores_on_the_compressed_cache(loaded, tasks):
    lm = PressedLM(loaded.model, "streamingllm", budget=8, tokenizer=loaded.tokenizer, press_params={"window_size": 2})
    compressed = []
    original = lm._compress
    lm._compress = lambda context: compressed.append(len(context)) or original(context)
    results = evaluate(lm, tasks, ["local_choice"])
    assert len(compressed) == len(QUESTIONS)  # the three choices of a question share one compression
    full = evaluate(PressedLM(loaded.model, "full", tokenizer=loaded.tokenizer), tasks, ["local_choice"])
    # 8 entries of a ~50-token context: the scores move, so the press really acted
    assert loglikelihoods(results) != pytest.approx(loglikelihoods(full), abs=1e-3)


def test_generation_runs_under_the_press(loaded, tasks):
    lm = PressedLM(loaded.model, "snapkv", budget=40, tokenizer=loaded.tokenizer, press_params={"window_size": 8})
    evaluate(lm, tasks, ["local_key"])
    stats = lm.press.last_stats  # what the press did to the last generation prompt
    assert stats.prompt_tokens > 100 and set(stats.entries_per_layer.values()) == {40 * 3}


def test_the_command_writes_results_and_refuses_unknown_tasks(loaded, tasks, tmp_path, capsys):
    (tmp_path / "t").mkdir()
    include = write_tasks(tmp_path / "t")
    args = ["lm-eval", "--tasks", "local_choice", "--include-path", str(include), "--method", "snapkv"]
    assert main([*args, "--budget", "40", "--param", "window_size=8", "--out", str(tmp_path / "o")]) == 0
    record = json.loads((tmp_path / "o" / "results.json").read_text())
    assert record["press"]["method"] == "snapkv" and "acc,none" in record["results"]["local_choice"]
    assert main([*args[:2], "no_such_task", "--out", str(tmp_path / "o2")]) == 2
    assert "lm-eval has no task no_such_task" in capsys.readouterr().err
