"""feature_extract.prefetch: the next batch is prepared on a thread while the caller works.

What extraction relies on: items come back in order and complete, ``prepare`` really runs
ahead of the consumer (that is the overlap), an error in ``prepare`` or in the source reaches
the consumer, and a consumer that stops early stops the thread. The CUDA stream handling is
exercised by the gpu extraction tests (test_extract_paths.py, test_extract.py).
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from feature_extract.prefetch import prefetched

CPU = torch.device("cpu")


def test_items_come_back_in_order_with_their_prepared_values():
    got = list(prefetched(range(50), lambda i: torch.full((2,), float(i)), CPU, depth=3))
    assert [i for i, _ in got] == list(range(50))
    assert all(torch.equal(x, torch.full((2,), float(i))) for i, x in got)


def test_prepare_runs_ahead_of_the_consumer_by_at_most_depth():
    prepared: list[int] = []
    ahead = []
    gen = prefetched(range(10), lambda i: prepared.append(i) or i, CPU, depth=2)
    for i, _ in gen:
        time.sleep(0.05)  # the consumer's work: the thread fills the queue meanwhile
        ahead.append(len(prepared) - 1 - i)
    # while item i is consumed, items i+1.. are already prepared: 2 queued + 1 being put
    assert max(ahead) >= 2 and max(ahead) <= 3
    assert ahead[-1] == 0  # nothing is prepared past the end


def test_an_error_in_prepare_reaches_the_consumer_after_the_good_items():
    def prepare(i):
        if i == 3:
            raise ValueError("bad batch 3")
        return i

    seen = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for i, _ in prefetched(range(10), prepare, CPU):
            seen.append(i)
    assert seen == [0, 1, 2]


def test_an_error_in_the_source_reaches_the_consumer():
    def source():
        yield 0
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(source(), lambda i: i, CPU))


def test_a_consumer_that_stops_early_stops_the_thread():
    calls = []
    gen = prefetched(range(10_000), lambda i: calls.append(i) or i, CPU, depth=2)
    for i, _ in gen:
        if i == 2:
            break
    gen.close()  # what leaving the for loop does when the generator is collected
    assert not any(t.name == "stage1-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(calls) <= 6  # stopped, not run to the end
