"""benchmarks/profiling/speculative_lookup.py: the lookup draft and the replay that counts verification steps."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profiling" / "speculative_lookup.py"
spec = importlib.util.spec_from_file_location("speculative_lookup", SCRIPT)
lookup = importlib.util.module_from_spec(spec)
sys.modules["speculative_lookup"] = lookup
spec.loader.exec_module(lookup)


def test_draft_follows_the_latest_occurrence_of_the_longest_tail():
    context = [1, 2, 3, 9, 9, 5, 2, 3, 7, 8, 1, 2, 3]
    assert lookup.lookup_draft(context, 2) == [9, 9]  # the 3-gram [1, 2, 3] wins over the later 2-gram [2, 3]
    assert lookup.lookup_draft(context, 2, longest=2) == [7, 8]
    assert lookup.lookup_draft([4, 5, 6], 3) == []  # nothing repeats
    assert lookup.lookup_draft([5, 6, 5], 2) == [6, 5]  # falls back to the last token alone


def test_replay_counts_steps_from_where_the_row_leaves_the_reference():
    prompt = [10, 11, 12, 13, 14]
    reference = [10, 20]
    # leaves the reference at token 1; tokens 2.. copy the prompt, so one draft of 3 covers them
    tokens = [10, 11, 12, 13, 14]
    assert lookup.replay(prompt, reference, tokens, 3) == (3, 1)
    assert lookup.replay(prompt, reference, tokens, 1) == (3, 2)
    assert lookup.replay(prompt, reference, reference, 3) == (0, 0)  # never leaves: nothing to decode
