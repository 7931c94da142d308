"""EventRouter: one queue and one task per call; pre-claimed channels; re-sync hook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from shared.ari import (
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    Connected,
    Event,
    EventRouter,
    StasisEnd,
    StasisStart,
)


def start(cid: str) -> StasisStart:
    return StasisStart(Channel(cid), ("inbound",))


async def test_new_channel_gets_its_own_task_and_queue() -> None:
    seen: dict[str, list[Event]] = {}

    async def call(first: StasisStart, queue: asyncio.Queue[Event]) -> None:
        got = seen.setdefault(first.channel.id, [])
        while True:
            event = await queue.get()
            got.append(event)
            if isinstance(event, StasisEnd):
                return

    router = EventRouter(on_stasis_start=call)
    for event in (start("a"), start("b"), ChannelDtmfReceived(Channel("a"), "1"),
                  ChannelDtmfReceived(Channel("b"), "2"), StasisEnd(Channel("a")),
                  StasisEnd(Channel("b"))):
        router.dispatch(event)
    await asyncio.wait_for(router.drain(), 2)
    assert [type(e).__name__ for e in seen["a"]] == ["StasisStart", "ChannelDtmfReceived",
                                                     "StasisEnd"]
    assert seen["b"][1] == ChannelDtmfReceived(Channel("b"), "2")
    assert router.channel_ids == frozenset()                 # released when the task ended


async def test_subscribed_channel_is_not_a_new_call() -> None:
    calls: list[str] = []

    async def call(first: StasisStart, queue: asyncio.Queue[Event]) -> None:
        calls.append(first.channel.id)

    router = EventRouter(on_stasis_start=call)
    shared_queue = router.subscribe("customer")
    router.subscribe("operator", queue=shared_queue)          # two legs, one call queue
    router.dispatch(start("customer"))
    router.dispatch(ChannelDestroyed(Channel("operator"), cause=17))
    router.dispatch(ChannelDestroyed(Channel("unknown"), cause=16))   # dropped
    await router.drain()
    assert calls == []
    assert shared_queue.qsize() == 2
    router.release("customer")
    router.release("operator")
    assert router.channel_ids == frozenset()


async def test_connected_runs_resync_and_failing_handlers_do_not_kill_router() -> None:
    resyncs: list[Connected] = []

    async def resync(event: Connected) -> None:
        resyncs.append(event)

    async def broken(first: StasisStart, queue: asyncio.Queue[Event]) -> None:
        raise RuntimeError("bug in one call")

    router = EventRouter(on_stasis_start=broken, on_connected=resync)
    for event in (Connected(), start("x"), Connected(reconnect=True), start("y")):
        router.dispatch(event)
    await router.drain()
    assert router.channel_ids == frozenset()
    assert resyncs == [Connected(), Connected(reconnect=True)]


async def test_run_cancels_call_tasks_when_the_stream_ends() -> None:
    started = asyncio.Event()

    async def call(first: StasisStart, queue: asyncio.Queue[Event]) -> None:
        started.set()
        await asyncio.sleep(3600)

    async def stream() -> AsyncIterator[Event]:
        yield start("z")
        await started.wait()

    router = EventRouter(on_stasis_start=call)
    await asyncio.wait_for(router.run(stream()), 2)
    await asyncio.wait_for(router.drain(), 2)


async def test_observers_see_every_event_before_it_is_routed_and_never_stop_it() -> None:
    seen: list[Event] = []

    def broken(_event: Event) -> None:
        raise RuntimeError("observer bug")

    router = EventRouter()
    router.observe(broken)
    router.observe(seen.append)
    queue = router.subscribe("a")
    events = [ChannelDtmfReceived(Channel("a"), "1"), ChannelDtmfReceived(Channel("z"), "2")]
    for event in events:
        router.dispatch(event)
    assert seen == events                      # routed or not
    assert queue.get_nowait() == events[0]     # still routed after the broken observer
