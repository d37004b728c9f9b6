"""Task families: one registry, one builder signature, a mode that picks how samples run."""

import inspect
import json

import pytest

from restkv.eval import runner
from restkv.eval.runner import run_eval, run_sweep
from restkv.eval.store import ResultStore
from restkv.eval.tasks import FAMILIES, TASK_FAMILIES, TaskGroup, TaskOptions, build, get_family, register_family
from restkv.eval.tasks.base import Sample
from restkv.eval.tasks.registry import MODES
from restkv.specs import MethodConfig
from tiny_models import TinyLoaded

CONFIGS = [MethodConfig.make("full"), MethodConfig.make("restkv", 24, window_size=8)]


@pytest.fixture(scope="module")
def loaded():
    return TinyLoaded()


def test_families_are_registered_in_the_documented_order():
    assert TASK_FAMILIES == (
        "ruler",
        "ruler-handwritten",
        "niah",
        "fidelity",
        "passkey",
        "longbench",
        "infinitebench",
        "bbh",
        "bbh-haystack",
    )
    assert tuple(FAMILIES) == TASK_FAMILIES


@pytest.mark.parametrize("name", TASK_FAMILIES)
def test_every_family_has_a_mode_and_the_uniform_builder(name):
    family = get_family(name)
    assert family.name == name and family.mode in MODES
    assert family.mode == ("teacher_forced" if name == "fidelity" else "generate")
    assert list(inspect.signature(family.groups).parameters) == ["loaded", "options"]


def test_unknown_family_is_one_sentence_listing_the_others():
    with pytest.raises(ValueError) as err:
        build("nope", None, TaskOptions())
    assert str(err.value) == (
        "unknown task 'nope'; available: ruler, ruler-handwritten, niah, fidelity, passkey, longbench, infinitebench, "
        "bbh, bbh-haystack"
    )


def test_register_family_rejects_a_second_registration_and_unknown_modes():
    with pytest.raises(ValueError, match="registered twice"):
        register_family("passkey")(lambda loaded, options: [])
    with pytest.raises(ValueError, match="mode must be one of generate, teacher_forced"):
        register_family("new", mode="stream")
    assert "new" not in FAMILIES and FAMILIES["passkey"].groups.__module__.endswith(".passkey")


def test_build_goes_through_the_registry(loaded):
    groups = build("passkey", loaded, TaskOptions(samples=2, length=600))
    assert [type(g) for g in groups] == [TaskGroup]
    name, samples, score = groups[0]  # still unpacks as (task, samples, score)
    assert name == "passkey" and len(samples) == 2 and score(samples[0].answers[0], samples[0]) == 1.0
    (fidelity,) = build("fidelity", loaded, TaskOptions(samples=1, length=64, continuation=8))
    assert fidelity.name == "fidelity/64" and fidelity.score is None
    assert len(fidelity.samples[0].meta["prompt_ids"]) == 64
    ruler = build("ruler-handwritten", loaded, TaskOptions(samples=1, length=2000, subtasks=("niah_single_1", "vt")))
    assert [g.name for g in ruler] == ["ruler-handwritten/niah_single_1", "ruler-handwritten/vt"]


def generate_sample_with_token_metadata():
    """A generation sample whose metadata happens to hold ``prompt_ids``: the mode must decide."""
    return Sample(
        "g", "x" * 60 + " question " + "y" * 40, ["1"], 3, {"prompt_ids": [5] * 40, "continuation_ids": [6] * 4}
    )


def test_the_mode_not_the_metadata_picks_teacher_forcing(tmp_path, loaded):
    with ResultStore(tmp_path / "generate.sqlite") as store:
        run_sweep(loaded, "t", [generate_sample_with_token_metadata()], CONFIGS, store, lambda p, s: 0.5,
                  progress=False, mode="generate")  # fmt: skip
        generated = store.rows()
    assert len(generated) == 2 and {r["score"] for r in generated} == {0.5}
    assert all(r["prompt_tokens"] == 110 for r in generated)  # the prompt's characters, not the 40 ids
    with ResultStore(tmp_path / "inferred.sqlite") as store:  # old callers: no mode, metadata decides
        run_sweep(loaded, "t", [generate_sample_with_token_metadata()], CONFIGS, store, None, progress=False)
        forced = store.rows()
    assert all(r["prompt_tokens"] == 40 and r["score"] == r["top1"] for r in forced)


def test_run_sweep_rejects_an_unknown_mode(tmp_path, loaded):
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ValueError, match="mode must be one of"):
        run_sweep(loaded, "t", [], CONFIGS, store, None, progress=False, mode="stream")


def test_run_eval_sweeps_every_group_and_logs_the_run(tmp_path, loaded):
    family = get_family("fidelity")
    groups = family.groups(loaded, TaskOptions(samples=2, length=48, continuation=4))
    totals = run_eval(loaded, groups, CONFIGS, tmp_path, batch=2, command="restkv eval fidelity", mode=family.mode)
    assert totals["samples_run"] == 2 and totals["samples_skipped"] == 0 and totals["wall_s"] > 0
    again = run_eval(loaded, groups, CONFIGS, tmp_path, batch=2, command="again", mode=family.mode)
    assert again["samples_run"] == 0 and again["samples_skipped"] == 2
    log = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [e["command"] for e in log] == ["restkv eval fidelity", "again"]
    assert log[0]["samples_run"] == 2 and set(log[0]) == {
        "command", "wall_s", "samples_run", "samples_skipped", "prefill_s", "compress_s",
    }  # fmt: skip
    with ResultStore(tmp_path / "results.sqlite") as store:
        rows = store.rows()
    assert len(rows) == 4 and all(r["task"] == "fidelity/48" and r["score"] == r["top1"] for r in rows)


def test_eos_ids_is_still_importable_from_the_runner():
    from restkv.generation import eos_ids

    assert runner.eos_ids is eos_ids
