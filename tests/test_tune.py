"""restkv tune: the coordinate search, the profile file, and loading it."""

import json

import pytest

from restkv import get_press
from restkv.eval.tasks.base import Sample
from restkv.profiles import load_profile
from restkv.tune import GRID, PAPER, builtin_calibration, calibration_samples, tune
from tiny_models import TinyLoaded


def test_tune_writes_a_profile_that_presses_load(tmp_path):
    samples = [Sample(f"s{i}", "x" * 90 + f"\nquestion {i}?", [], 4) for i in range(2)]
    grid = {"window_size": [8, 16], "pooling": ["adaptive", "none"]}
    profile = tune(TinyLoaded(), samples, budget=40, grid=grid, batch=4)
    assert profile["paper_defaults"]["params"] == PAPER
    assert profile["params"]["window_size"] in (8, 16) and profile["params"]["pooling"] in ("adaptive", "none")
    assert profile["candidates_evaluated"] == 4  # the paper setting, window 8 and 16, then the other pooling
    best = min(profile["results"], key=lambda r: r["kl"])
    assert (
        profile["chosen"]["kl"] == pytest.approx(best["kl"])
        or profile["chosen"]["kl"] <= profile["paper_defaults"]["kl"]
    )
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    press = get_press("restkv", budget=40, profile=str(path))
    assert press.scorer.window_size == profile["params"]["window_size"]
    assert get_press("restkv", budget=40, profile=str(path), pooling="maxpool").scorer.pooling == "maxpool"


def test_profile_and_calibration_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a restkv tuning profile"):
        load_profile(bad)
    with pytest.raises(ValueError, match="snapkv takes no profile"):
        get_press("snapkv", budget=64, profile=str(bad))
    calib = tmp_path / "c.jsonl"
    calib.write_text('{"prompt": "hi", "answers": ["a"]}\n\n{"prompt": "yo"}\n')
    assert [s.answers for s in calibration_samples(calib)] == [["a"], []]
    calib.write_text('{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="line 1 is not a calibration record"):
        calibration_samples(calib)


def test_builtin_calibration_mixes_pass_keys_and_needles():
    loaded = TinyLoaded()
    samples = builtin_calibration(loaded, 5, 600)
    kinds = [s.id.split("-")[0] for s in samples]
    assert kinds == ["passkey"] * 3 + ["niah"] * 2
    assert all(s.answers for s in samples)
    assert len({s.prompt for s in samples}) == 5
    assert GRID["kernel_size"][0] == PAPER["kernel_size"] == 5  # the paper's kernel is the first tried
