"""Who gets a customer (advisors.assignment): examples, then properties over a simulated
merchant driven by random presence changes, customers, answers, misses and hang-ups, with
every ``OfferTo`` executed on the advisor's own state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from advisors.assignment import (
    Assign,
    Assignment,
    Board,
    Cancelled,
    Connect,
    LinesBusy,
    NotApplicable,
    OfferAnswered,
    OfferMissed,
    OfferTo,
    Phase,
    Queue,
    Withdraw,
    longest_idle,
    transition,
)
from advisors.model import Desk, Rules, Via
from advisors.presence import (
    Answered,
    ConsultationEnded,
    GoOnline,
    Offered,
    Presence,
    RefuseOffer,
    RingMissed,
    SetBreak,
    SetWorking,
    WrapUpElapsed,
)
from advisors.presence import Event as PresenceEvent
from advisors.presence import transition as presence_transition

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def standby(idle_s: int, load: int = 0, max_concurrent: int = 1) -> Presence:
    p = Presence(desk=Desk.STANDBY, max_concurrent=max_concurrent,
                 idle_since=T0 + timedelta(seconds=idle_s))
    for i in range(load):
        p, _ = presence_transition(p, Offered(T0, f"busy{i}"), Rules())
    return p


def test_the_longest_idle_member_in_standby_with_a_free_line_gets_the_call() -> None:
    board = Board(lines=10, seats={1: standby(30), 2: standby(10), 3: standby(5, load=1),
                                   4: Presence(desk=Desk.BREAK, idle_since=T0),
                                   5: standby(0)})
    assert longest_idle(board, {1, 2, 3, 4}) == 2
    assert longest_idle(board, {1, 2, 3, 4}, excluded={2}) == 1
    assert longest_idle(board, {3, 4}) is None
    a, cmds = transition(Assignment("c1", frozenset({1, 2, 3, 4})), Assign(board))
    assert cmds == [OfferTo(2, "c1")] and a.phase is Phase.OFFERING and a.offered_to == 2


def test_a_missed_ring_goes_to_the_next_member_then_back_to_the_queue() -> None:
    board = Board(lines=10, seats={1: standby(30), 2: standby(10)})
    a, _ = transition(Assignment("c", frozenset({1, 2})), Assign(board))
    a, cmds = transition(a, OfferMissed(board))
    assert cmds == [OfferTo(1, "c")]
    a, cmds = transition(a, OfferMissed(board))
    assert a.phase is Phase.QUEUED and isinstance(cmds[0], Queue)
    a, cmds = transition(a, Assign(board))   # retried from the queue: a clean slate
    assert cmds == [OfferTo(2, "c")]
    a, cmds = transition(a, OfferAnswered())
    assert a.phase is Phase.CONNECTED and cmds == [Connect(2)]
    assert isinstance(transition(a, Cancelled())[1][0], NotApplicable)


def test_all_lines_busy_refuses_a_new_customer_but_queues_one_already_in() -> None:
    full = Board(lines=1, seats={1: standby(0, load=1, max_concurrent=2), 2: standby(5)})
    a, cmds = transition(Assignment("new", frozenset({2})), Assign(full))
    assert a.phase is Phase.LINES_BUSY and cmds == [LinesBusy(1)]
    waiting = Assignment("old", frozenset({2}), phase=Phase.QUEUED)
    a, cmds = transition(waiting, Assign(full))
    assert a.phase is Phase.QUEUED and cmds == [Queue("all 1 lines busy")]


def test_the_lines_count_the_consultations_of_advisors_off_the_board() -> None:
    board = Board(lines=3, seats={1: standby(0, load=1, max_concurrent=2), 2: standby(5)},
                  elsewhere=2)
    assert board.lines_in_use == 3
    a, cmds = transition(Assignment("new", frozenset({2})), Assign(board))
    assert a.phase is Phase.LINES_BUSY and cmds == [LinesBusy(3)]
    freed = Board(lines=3, seats=board.seats, elsewhere=1)
    assert transition(Assignment("new", frozenset({2})), Assign(freed))[1] == [OfferTo(2, "new")]


def test_no_member_free_queues_and_a_hang_up_while_ringing_withdraws_the_offer() -> None:
    board = Board(lines=5, seats={1: Presence(desk=Desk.WORKING)})
    a, cmds = transition(Assignment("c", frozenset({1})), Assign(board))
    assert a.phase is Phase.QUEUED
    a, cmds = transition(Assignment("c", frozenset({1}), Phase.OFFERING, 1), Cancelled())
    assert a.phase is Phase.CANCELLED and cmds == [Withdraw(1)]


# --- properties over a simulated merchant -----------------------------------------------------

ADVISORS = [1, 2, 3, 4]
GROUPS = [frozenset({1, 2}), frozenset({2, 3, 4}), frozenset({4}), frozenset(ADVISORS)]
RULES = Rules(wrap_up_s=5, misses_before_break=2)

actions = st.one_of(
    st.tuples(st.just("online"), st.sampled_from(ADVISORS)),
    st.tuples(st.just("working"), st.sampled_from(ADVISORS)),
    st.tuples(st.just("break"), st.sampled_from(ADVISORS)),
    st.tuples(st.just("timer"), st.sampled_from(ADVISORS)),
    st.tuples(st.just("customer"), st.integers(0, len(GROUPS) - 1)),
    st.tuples(st.sampled_from(["answer", "miss", "hangup", "end", "retry"]),
              st.integers(0, 30)),
)


class Merchant:
    """A merchant's advisors and customers, run by the two machines as the store does."""

    def __init__(self, lines: int, capacities: list[int]) -> None:
        self.lines = lines
        self.seats = {a: Presence(max_concurrent=c) for a, c in zip(ADVISORS, capacities,
                                                                      strict=True)}
        self.customers: list[Assignment] = []
        self.now = T0

    def board(self, members: frozenset[int] | None = None) -> Board:
        """Every advisor on the board, or only ``members`` (the others' consultations
        counted), as the store builds it for an assignment."""
        if members is None:
            return Board(self.lines, dict(self.seats))
        return Board(self.lines, {a: self.seats[a] for a in members},
                     sum(p.load for a, p in self.seats.items() if a not in members))

    def apply(self, advisor: int, event: PresenceEvent) -> None:
        self.seats[advisor], cmds = presence_transition(self.seats[advisor], event, RULES)
        assert not any(isinstance(c, RefuseOffer) for c in cmds), cmds

    def step(self, index: int, event: Assign | OfferMissed | OfferAnswered | Cancelled
             ) -> None:
        before = self.customers[index]
        board = event.board if isinstance(event, Assign | OfferMissed) else None
        after, cmds = transition(before, event)
        self.customers[index] = after
        for cmd in cmds:
            if isinstance(cmd, OfferTo):
                assert board is not None
                self.check_offer(after, cmd, board)
                self.apply(cmd.advisor_id, Offered(self.now, cmd.consultation_id))
            elif isinstance(cmd, Withdraw):
                self.apply(cmd.advisor_id, ConsultationEnded(self.now, after.consultation_id))

    def check_offer(self, a: Assignment, cmd: OfferTo, board: Board) -> None:
        chosen = board.seats[cmd.advisor_id]
        # offered only to a member in standby with a free line of their own
        assert cmd.advisor_id in a.members
        assert chosen.desk is Desk.STANDBY and chosen.load < chosen.max_concurrent
        assert board.lines_in_use < board.lines
        # the longest idle of those who take an offer (and have not missed this customer)
        for other in a.members - a.tried - {cmd.advisor_id}:
            p = board.seats[other]
            if p.takes_offer():
                assert (p.idle_since is None and other > cmd.advisor_id) or (
                    chosen.idle_since is None or (p.idle_since is not None and (
                        (p.idle_since, other) > (chosen.idle_since, cmd.advisor_id))))

    def act(self, name: str, arg: int) -> None:
        self.now += timedelta(seconds=3)
        match name:
            case "online":
                self.apply(arg, GoOnline(self.now, Via.API))
            case "working":
                self.apply(arg, SetWorking(self.now, Via.API))
            case "break":
                self.apply(arg, SetBreak(self.now, Via.PHONE))
            case "timer":
                self.apply(arg, WrapUpElapsed(self.now, self.seats[arg].wrap_up_token))
            case "customer":
                self.customers.append(Assignment(f"c{len(self.customers)}", GROUPS[arg]))
                self.step(len(self.customers) - 1, Assign(self.board(GROUPS[arg])))
            case _ if self.customers:
                self.customer_act(name, arg % len(self.customers))

    def customer_act(self, name: str, index: int) -> None:
        a = self.customers[index]
        ringing = a.phase is Phase.OFFERING and a.offered_to is not None
        if name == "answer" and ringing and a.offered_to is not None:
            self.apply(a.offered_to, Answered(self.now, a.consultation_id))
            self.step(index, OfferAnswered())
        elif name == "miss" and ringing and a.offered_to is not None:
            self.apply(a.offered_to, RingMissed(self.now, a.consultation_id))
            self.step(index, OfferMissed(self.board(a.members)))
        elif name == "hangup" and a.phase in (Phase.OFFERING, Phase.QUEUED):
            self.step(index, Cancelled())
        elif name == "end" and a.phase is Phase.CONNECTED:
            talking = next(x for x, p in self.seats.items() if p.session(a.consultation_id))
            self.apply(talking, ConsultationEnded(self.now, a.consultation_id))
        elif name == "retry" and a.phase is Phase.QUEUED:
            self.step(index, Assign(self.board(a.members)))


@settings(max_examples=300, deadline=None)
@given(lines=st.integers(1, 4), capacities=st.lists(st.integers(1, 2), min_size=4, max_size=4),
       script=st.lists(actions, max_size=80))
def test_assignment_never_exceeds_capacities_nor_offers_outside_standby(
        lines: int, capacities: list[int], script: list[tuple[str, int]]) -> None:
    merchant = Merchant(lines, capacities)
    for name, arg in script:
        merchant.act(name, arg)
        board = merchant.board()
        assert board.lines_in_use <= lines
        for p in board.seats.values():
            assert p.load <= p.max_concurrent
        offering = [a for a in merchant.customers if a.phase is Phase.OFFERING]
        ringing = {s.consultation_id for p in board.seats.values() for s in p.sessions
                   if not s.answered}
        assert {a.consultation_id for a in offering} == ringing
