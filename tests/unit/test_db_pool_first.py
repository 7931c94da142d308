"""The pool's first share (``shared.db.serve_first``): the gate that hands a pool's
connections to the acquires of the first labels before the others, without starving
the others, and without losing a slot to a cancelled or timed-out waiter."""

from __future__ import annotations

import asyncio

import pytest

from shared.db import _Gate


def gate(size: int, in_a_row: int = 2) -> _Gate:
    g = _Gate(size)
    g.first = frozenset({"call"})
    g.in_a_row = in_a_row
    return g


async def queued(g: _Gate, label: str, served: list[str], name: str) -> asyncio.Task[None]:
    async def enter() -> None:
        await g.enter(label)
        served.append(name)

    task = asyncio.create_task(enter())
    await asyncio.sleep(0)                   # in the queue, in this order
    return task


async def test_a_free_slot_is_taken_at_once_by_anyone() -> None:
    g = gate(2)
    await asyncio.wait_for(g.enter("dial"), 0.1)
    await asyncio.wait_for(g.enter("call"), 0.1)
    assert g.free == 0 and g.waiting() == (0, 0)


async def test_a_running_calls_acquire_is_served_before_earlier_dials() -> None:
    g = gate(1)
    await g.enter("dial")                    # the one slot, held
    served: list[str] = []
    tasks = [await queued(g, "dial", served, "dial 1"),
             await queued(g, "dial", served, "dial 2"),
             await queued(g, "call", served, "call 1")]
    assert g.waiting() == (1, 2)
    for _ in tasks:
        g.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["call 1", "dial 1", "dial 2"]     # each queue in its own order


async def test_the_dial_is_served_after_at_most_in_a_row_first_grants() -> None:
    """With both queues never empty, the head of the dial's waits for ``in_a_row`` grants
    to the running calls, no more: it gets one connection in ``in_a_row + 1``."""
    g = gate(1, in_a_row=3)
    await g.enter("dial")
    served: list[str] = []
    tasks = [await queued(g, "dial", served, f"dial {n}") for n in range(2)]
    tasks += [await queued(g, "call", served, f"call {n}") for n in range(8)]
    for _ in tasks:
        g.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["call 0", "call 1", "call 2", "dial 0",
                      "call 3", "call 4", "call 5", "dial 1", "call 6", "call 7"]
    assert g.free == 0
    g.leave()
    assert g.free == 1


async def test_a_newcomer_does_not_overtake_the_queues() -> None:
    """A slot given back goes to the waiter, not to an acquire that arrives meanwhile."""
    g = gate(1)
    await g.enter("call")
    served: list[str] = []
    waiting = await queued(g, "dial", served, "dial 1")
    g.leave()                                # handed to dial 1 (not yet woken)
    late = await queued(g, "call", served, "call late")
    await waiting
    assert served == ["dial 1"] and not late.done()
    g.leave()
    await late
    assert served == ["dial 1", "call late"]


async def test_a_cancelled_waiter_leaves_its_queue_and_a_cancelled_grant_passes_on() -> None:
    g = gate(1)
    await g.enter("dial")
    served: list[str] = []
    gone = await queued(g, "call", served, "call gone")
    gone.cancel()
    await asyncio.sleep(0)
    assert g.waiting() == (0, 0)
    handed = await queued(g, "call", served, "call handed")
    next_ = await queued(g, "dial", served, "dial next")
    g.leave()                                # to "call handed" ...
    handed.cancel()                          # ... cancelled before it woke: to "dial next"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await next_
    assert served == ["dial next"] and g.free == 0
    g.leave()
    assert g.free == 1 and g.waiting() == (0, 0)


async def test_labels_outside_the_first_share_are_one_fifo_queue() -> None:
    """A pool with no first share (the edge's, the relay's) keeps its order."""
    g = _Gate(1)
    await g.enter("a")
    served: list[str] = []
    tasks = [await queued(g, label, served, label) for label in ("b", "call", "c")]
    for _ in tasks:
        g.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["b", "call", "c"]


async def test_a_waiter_cancelled_as_a_slot_comes_back_is_skipped_once() -> None:
    """A timeout (``wait_for``) cancels a waiter; a slot given back before the waiter's
    task runs again skips it, and the waiter's task then leaves quietly."""
    g = gate(1)
    await g.enter("dial")
    served: list[str] = []
    gone = await queued(g, "dial", served, "dial gone")
    after = await queued(g, "call", served, "call after")
    gone.cancel()                            # its future cancelled, its task not yet run
    g.leave()                                # skips "dial gone", hands to "call after"
    with pytest.raises(asyncio.CancelledError):
        await gone
    await after
    assert served == ["call after"] and g.waiting() == (0, 0) and g.free == 0
