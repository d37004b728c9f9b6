"""restkv.timing: phases recorded only inside the block, counted once, per thread; the engine marks its phases."""

import threading

import pytest
from transformers import DynamicCache

import restkv.timing as timing
from restkv.eval.engine import Engine
from restkv.generation import prefill
from restkv.specs import MethodConfig
from restkv.timing import phase, phased, record_phases
from tiny_models import prompt_ids, tiny_model


class FakeClock:
    """``perf_counter`` that moves only when told to, so totals are exact."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def test_counts_and_totals(clock):
    with record_phases() as phases:
        for seconds in (1.0, 2.5):
            with phase("decode"):
                clock.now += seconds
        with phase("prefill"):
            clock.now += 4.0
    assert dict(phases.seconds) == {"decode": 3.5, "prefill": 4.0}
    assert dict(phases.counts) == {"decode": 2, "prefill": 1}


def test_nothing_is_recorded_outside_the_block(clock):
    with phase("prefill"):
        clock.now += 1.0
    with record_phases() as phases:
        with phase("decode"):
            clock.now += 1.0
    with phase("decode"):
        clock.now += 5.0
    assert dict(phases.seconds) == {"decode": 1.0} and dict(phases.counts) == {"decode": 1}
    assert phase("decode") is phase("prefill"), "nobody recording: the shared no-op"


def test_other_names_nest_and_a_repeated_name_counts_once(clock):
    with record_phases() as phases:
        with phase("prefill"):
            clock.now += 1.0
            for _ in range(3):
                with phase("chunk_compress"):
                    clock.now += 0.5
                    with phase("chunk_compress"):  # inside its own name: part of the outer one
                        clock.now += 0.25
    assert phases.seconds["prefill"] == 1.0 + 3 * 0.75
    assert phases.seconds["chunk_compress"] == 3 * 0.75 and phases.counts["chunk_compress"] == 3


def test_recorders_nest_and_each_sees_its_own_block(clock):
    with record_phases() as outer:
        with phase("prefill"):
            clock.now += 1.0
        with record_phases() as inner:
            with phase("decode"):
                clock.now += 2.0
        with phase("decode"):
            clock.now += 3.0
    assert dict(inner.seconds) == {"decode": 2.0}
    assert dict(outer.seconds) == {"prefill": 1.0, "decode": 5.0}


def test_a_phase_that_raises_is_still_counted(clock):
    with record_phases() as phases:
        with pytest.raises(RuntimeError):
            with phase("decode"):
                clock.now += 1.0
                raise RuntimeError("boom")
        with phase("decode"):  # the failed one is closed: this one counts again
            clock.now += 1.0
    assert phases.seconds["decode"] == 2.0 and phases.counts["decode"] == 2


def test_threads_do_not_see_each_other():
    both_inside, done = threading.Barrier(2), threading.Barrier(2)
    seen = {}

    def worker(name):
        with record_phases() as phases:
            both_inside.wait()  # the two recordings are open at the same time
            with phase(name):
                pass
            done.wait()
        seen[name] = dict(phases.counts)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("prefill", "decode")]
    with record_phases() as main:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert seen == {"prefill": {"prefill": 1}, "decode": {"decode": 1}}
    assert not main.counts, "a thread's phases are not the recording thread's"


def test_phased_names_a_call_by_its_arguments(clock):
    asked = []

    def name_of(call):
        asked.append(call)
        return "full_decode" if call["press"] is None else "decode"

    @phased(name_of)
    def decode(cache, press=None):
        clock.now += 1.0
        return cache

    @phased("prefill")
    def forward(x):
        clock.now += 2.0
        return x

    assert decode("c") == "c" and not asked, "the name is not computed while nobody records"
    with record_phases() as phases:
        decode("c")
        decode("c", press="snapkv")
        decode(cache="c", press="tova")
        assert forward(7) == 7
    assert dict(phases.counts) == {"full_decode": 1, "decode": 2, "prefill": 1}
    assert phases.seconds["decode"] == 2.0 and phases.seconds["prefill"] == 2.0


def test_the_engine_marks_its_phases():
    model = tiny_model("llama")
    configs = [MethodConfig.make("full"), MethodConfig.make("snapkv", 24, window_size=8),
               MethodConfig.make("tova", 24, window_size=8)]  # fmt: skip
    engine = Engine(model, configs)
    ids = prompt_ids(90)
    with record_phases() as batched:
        engine.run(ids, max_new_tokens=6, batch=2)
    # one shared prefill, the full cache's reference decode, both compressed caches built and
    # stacked together, the reference teacher-forced through both rows
    for name in ("prefill", "full_decode", "compress", "stack", "teacher_forcing"):
        assert batched.counts[name] == 1, name
    with record_phases() as alone:
        engine.run(ids, max_new_tokens=6, batch=1)
    assert alone.counts["compress"] == 2 and alone.counts["decode"] == 2 and alone.counts["teacher_forcing"] == 2
    assert alone.counts["full_decode"] == 1 and "stack" not in alone.counts
    assert all(seconds > 0 for seconds in alone.seconds.values())


def test_chunked_prefill_marks_each_recompressed_chunk():
    model = tiny_model("llama")
    streamed = MethodConfig.make("snapkv", 24, window_size=8, chunk_size=30)
    with record_phases() as phases:
        Engine(model, [streamed]).run(prompt_ids(90), max_new_tokens=2)
    # three chunks: the first is compressed as a whole prompt, the other two are recompressed,
    # in each of the 3 layers, inside the streamed prefill
    assert phases.counts["chunk_compress"] == 2 * 3 and phases.counts["prefill"] == 1
    assert phases.seconds["chunk_compress"] < phases.seconds["prefill"]
    with record_phases() as plain:  # the library's own chunked prefill, outside the engine
        press = streamed.press()
        with press(model):
            prefill(model, prompt_ids(90), DynamicCache(config=model.config), press.chunk_size)
    assert plain.counts["chunk_compress"] == 2 * 3
