"""Robustness, round three (issue 35), finding 1: two threads on one model, one press each.

Checking a model's press marker and setting it were two steps, so two threads could both pass the
check; the first to leave then took the marker, the second's ``delattr`` raised, and its hooks
stayed on the model for good (every later "uncompressed" answer came from a compressed cache).
"""

import threading
import time

import pytest
import torch

import restkv.press
from restkv import get_press
from restkv.press import _ACTIVE
from tiny_models import prompt_ids, tiny_model


def hooks_left(model) -> int:
    """Forward hooks and pre-hooks still on any module of ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def assert_released(model) -> None:
    """No hook and no press marker is left on ``model``."""
    assert hooks_left(model) == 0
    assert _ACTIVE not in vars(model) and not hasattr(model, _ACTIVE)


def run_pair(model, presses, body, delays=(0.0, 0.0)):
    """Enter ``presses[i]`` on ``model`` in thread ``i`` (after ``delays[i]``), both released together,
    each running ``body`` inside its block; neither thread leaves before both have tried to enter.

    Returns ``(refused, other)``: the ValueErrors, and every other exception, the threads raised.
    """
    start, tried = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    refused, other = [], []

    def worker(press, delay):
        start.wait()
        time.sleep(delay)
        try:
            with press(model):
                tried.wait()  # the other thread tries to enter while this block holds the model
                body()
        except ValueError as err:
            refused.append(err)
            tried.wait()
        except BaseException as err:  # noqa: B036 - a test collects everything a thread raised
            other.append(err)

    threads = [threading.Thread(target=worker, args=(p, d)) for p, d in zip(presses, delays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return refused, other


def meet_before_hooks(monkeypatch) -> None:
    """Make two threads' press blocks meet right before building hooks: in the old code both were
    there, past the marker check, before either set the marker."""
    met = threading.Barrier(2, timeout=1)
    original = restkv.press._Session.__init__

    def wait_for_the_other(self, press, model):
        try:
            met.wait()
        except threading.BrokenBarrierError:
            pass  # the other thread was refused: it never builds hooks
        original(self, press, model)

    monkeypatch.setattr(restkv.press._Session, "__init__", wait_for_the_other)


def forward(model):
    """A short prefill, so a block does what a real one does with the hooks it installed."""
    ids = prompt_ids(64)
    with torch.no_grad():
        model(ids, use_cache=True)


def test_two_threads_with_two_presses_one_is_refused_and_no_hook_is_left(monkeypatch):
    """Finding 1: both threads passed the marker check; one raised AttributeError and left its hooks."""
    model = tiny_model("llama")
    meet_before_hooks(monkeypatch)
    presses = (get_press("snapkv", budget=40, window_size=8), get_press("tova", budget=40))
    refused, other = run_pair(model, presses, lambda: forward(model))
    assert other == []
    assert len(refused) == 1
    assert "already under a press in another thread" in str(refused[0])
    assert "\n" not in str(refused[0])
    assert_released(model)


def test_a_full_press_and_a_scoring_press_in_two_threads_never_share_the_model(monkeypatch):
    """Finding 1, whichever side has the press: get_press("full") installs no hook but holds the model too."""
    model = tiny_model("llama")
    original = restkv.press._Session.__init__

    def slow(self, press, model_):
        time.sleep(0.05)  # old code: the marker was set only after the hooks were built
        original(self, press, model_)

    monkeypatch.setattr(restkv.press._Session, "__init__", slow)
    scoring, full = get_press("snapkv", budget=40, window_size=8), get_press("full")
    for i in range(6):
        first_scoring = i % 2 == 0  # the scoring press enters first in even rounds, the full one in odd
        delays = (0.0, 0.01) if first_scoring else (0.01, 0.0)
        refused, other = run_pair(model, (scoring, full), lambda: forward(model), delays)
        assert other == [], f"round {i}"
        assert len(refused) == 1, f"round {i}"
        assert_released(model)


def test_a_press_block_that_raised_leaves_no_hook_behind_and_its_own_error_goes_up(monkeypatch):
    """Finding 1: a block that raised, while another thread's press raced it, kept its hooks and
    surfaced an AttributeError from the marker's removal instead of its own error."""
    model = tiny_model("llama")
    press = get_press("snapkv", budget=40, window_size=8)
    with pytest.raises(RuntimeError, match="inside the block"):
        with press(model):
            forward(model)
            raise RuntimeError("inside the block")
    assert_released(model)

    def failing():
        forward(model)
        raise RuntimeError("inside the block")

    meet_before_hooks(monkeypatch)
    presses = (get_press("snapkv", budget=40, window_size=8), get_press("tova", budget=40))
    refused, other = run_pair(model, presses, failing)
    assert len(refused) == 1
    assert [type(err) for err in other] == [RuntimeError]
    assert_released(model)
    with press(model):  # the model takes a press again
        forward(model)
    assert_released(model)


def test_a_nested_press_is_still_refused_with_its_own_sentence():
    """Finding 1's fix keeps the nested-press message (same thread) apart from the other-thread one."""
    model = tiny_model("llama")
    outer = get_press("full")
    with outer(model):
        with pytest.raises(ValueError, match="already under a press; a nested press would be ignored"):
            with get_press("snapkv", budget=40, window_size=8)(model):
                pass
        assert hooks_left(model) == 0  # the refused press installed nothing
    assert_released(model)
