"""Long commands say how long they will take before they start (the estimate's accuracy is a
benchmark: benchmarks/results/forecast)."""

import pytest

from restkv import forecast
from restkv.eval.runner import run_sweep
from restkv.eval.store import ResultStore
from restkv.eval.tasks import passkey
from restkv.specs import MethodConfig
from tiny_models import TinyLoaded, tiny_model


def test_sweep_seconds_adds_a_prefill_per_prompt_and_per_config_compression_and_decoding():
    rates = forecast.Rates(tokens=100, prefill_s=2.0, step_s=0.1)
    assert rates.prefill(300) == pytest.approx(6.0)  # linear beyond the calibration length
    one = 6.0 + 3 * (forecast.COMPRESS_SHARE * 6.0 + forecast.STEPS_SHARE * 10 * 0.1)
    assert forecast.sweep_seconds(rates, [(300, 10, 3)]) == pytest.approx(one)
    assert forecast.sweep_seconds(rates, [(300, 10, 3)] * 4) == pytest.approx(4 * one)
    assert forecast.sweep_seconds(rates, []) == 0
    batched = forecast.Rates(tokens=100, prefill_s=2.0, step_s=0.1, row_step_s=0.02)
    rows = 6.0 + 3 * (forecast.COMPRESS_SHARE * 6.0 + forecast.STEPS_SHARE * 10 * 0.02)
    assert forecast.sweep_seconds(batched, [(300, 10, 3)], batch="auto") == pytest.approx(rows)
    assert forecast.sweep_seconds(batched, [(300, 10, 3)], batch=1) == pytest.approx(one)


@pytest.mark.parametrize("seconds,text", [(42, "42 s"), (600, "10 min"), (9000, "2.5 h")])
def test_durations_read_in_the_unit_that_fits(seconds, text):
    assert forecast.duration(seconds) == text


def test_measure_times_a_capped_prefill_one_step_and_a_batched_step():
    model = tiny_model("llama")
    rates = forecast.measure(model, 10 * forecast.CALIBRATION_TOKENS)
    assert rates.tokens == forecast.CALIBRATION_TOKENS and rates.prefill_s > 0 and rates.step_s > 0
    assert rates.row_step_s > 0
    assert rates.per_config_step(1) == rates.step_s and rates.per_config_step("auto") == rates.row_step_s
    assert forecast.measure(model, 20).tokens == 20


def sweep(tmp_path, progress=True):
    loaded = TinyLoaded()
    samples = passkey.passkey_samples(2, 400, len, seed=0)
    configs = [MethodConfig.make("full"), MethodConfig.make("snapkv", 40, window_size=8)]
    with ResultStore(tmp_path / "results.sqlite", writer=True) as store:
        return run_sweep(loaded, "passkey", samples, configs, store, passkey.score, progress=progress)


def test_a_sweep_says_its_estimate_before_it_starts_and_only_for_the_work_left(tmp_path, capsys):
    sweep(tmp_path)
    err = capsys.readouterr().err
    assert "restkv: passkey: 2 prompts x 2 configurations to run; about " in err and "here (estimate " in err
    assert err.index("restkv: passkey:") < err.index("passkey (2 configs)")  # before the progress bar
    sweep(tmp_path)  # everything is in the store: nothing to estimate
    assert "configurations to run" not in capsys.readouterr().err


def test_tune_says_its_estimate_before_it_starts_with_the_settings_it_will_try(capsys):
    from restkv.tune import tune

    loaded = TinyLoaded()
    samples = passkey.passkey_samples(1, 400, len, seed=0)
    profile = tune(loaded, samples, budget=40, grid={"alpha": [0.3, 0.5], "temporal": ["ema", "mean"]})
    # the starting point and alpha 0.5, then temporal mean: exactly what the search evaluates
    assert profile["candidates_evaluated"] == 3
    assert "restkv: tune: 3 settings on 1 prompts; about " in capsys.readouterr().err


def test_compiling_is_announced_once_per_buffer_shape(capsys):
    from restkv.static_decode import announce_compile

    shape = ("test-shape", 1, 2)
    assert announce_compile(shape) is True and announce_compile(shape) is False
    assert capsys.readouterr().err.count("compiling the decoding step") == 1


def test_generate_announces_a_long_prompt_before_its_prefill(monkeypatch, capsys):
    from restkv.cli import generate as generate_command
    from restkv.cli import main

    monkeypatch.setattr(generate_command, "LONG_PROMPT", 10)  # the demo model on a short prompt stands in
    assert main(["generate", "--method", "snapkv", "--budget", "40", "--param", "window_size=8",
                 "--max-new-tokens", "2", "The grass is green. " * 10]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "restkv: generate: a " in err and "-token prompt, up to 2 new tokens; about " in err
    assert err.index("restkv: generate:") < err.index("[snapkv]")
