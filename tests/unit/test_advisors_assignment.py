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
            # a consultation ends once: a second "end" of the same customer finds no seat
            talking = next((x for x, p in self.seats.items()
                            if p.session(a.consultation_id)), None)
            if talking is not None:
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


# --- the place said is the order of service -----------------------------------------------


class Line:
    """A merchant's queue, every customer tried again after each change, in any order
    (each process retries its own customer on its own timer), as the store does: the board
    has every advisor and the customers queued before the one tried."""

    def __init__(self, lines: int, seats: dict[int, Presence], elsewhere: int) -> None:
        self.lines = lines
        self.seats = seats
        self.elsewhere = elsewhere          # the lines the merchant's other calls use
        self.waiting: list[Assignment] = []
        self.said: dict[str, int] = {}      # the place each customer was told last
        self.served: list[str] = []
        self.now = T0

    def board(self, before: list[Assignment]) -> Board:
        return Board(self.lines, dict(self.seats), self.elsewhere,
                     ahead=tuple(a.members for a in before), busy_queue=True)

    def queue(self, members: frozenset[int]) -> None:
        a = Assignment(f"c{len(self.said)}", members)
        after, cmds = transition(a, Assign(self.board(self.waiting)))
        assert after.phase is Phase.QUEUED, cmds
        self.waiting.append(after)
        self.said[a.consultation_id] = next(c.position for c in cmds if isinstance(c, Queue))

    def retry(self, order: list[int]) -> None:
        """Each waiting customer tried again, in ``order`` (indexes into the queue); one
        offered a call answers it at once."""
        queued = list(self.waiting)
        for index in order:
            a = queued[index]
            position = self.waiting.index(a)
            after, cmds = transition(a, Assign(self.board(self.waiting[:position])))
            for cmd in cmds:
                if isinstance(cmd, Queue):
                    self.waiting[position] = after
                    queued[index] = after
                    self.said[a.consultation_id] = cmd.position
                elif isinstance(cmd, OfferTo):
                    for event in (Offered(self.now, a.consultation_id),
                                  Answered(self.now, a.consultation_id)):
                        self.seats[cmd.advisor_id], _ = presence_transition(
                            self.seats[cmd.advisor_id], event, Rules())
                    del self.waiting[position]
                    self.served.append(a.consultation_id)


@settings(max_examples=400, deadline=None)
@given(lines=st.integers(1, 3), standby_=st.lists(st.booleans(), min_size=4, max_size=4),
       idle=st.permutations(range(4)),
       groups=st.lists(st.integers(0, len(GROUPS) - 1), min_size=1, max_size=8),
       data=st.data())
def test_the_customer_told_place_k_is_the_kth_served_as_lines_free_up(
        lines: int, standby_: list[bool], idle: list[int], groups: list[int],
        data: st.DataObject) -> None:
    """Every line in use, customers of any groups (sharing members or not) queue; each
    is told a place. The lines then free up one at a time, every customer tried again
    after each in any order: the customers served are those told 1, 2, 3, ... in that
    order; once the lines are free again, no customer with an advisor in standby still
    waits."""
    seats = {a: standby(idle[a - 1]) if up else Presence(desk=Desk.WORKING)
             for a, up in zip(ADVISORS, standby_, strict=True)}
    line = Line(lines, seats, elsewhere=lines)
    for g in groups:
        line.queue(GROUPS[g])
    told = dict(line.said)
    while line.elsewhere:
        line.elsewhere -= 1                 # a call of another group ends: a line frees
        line.retry(data.draw(st.permutations(range(len(line.waiting)))))
    assert [told[c] for c in line.served] == list(range(1, len(line.served) + 1))
    if line.board([]).lines_free():
        free = {a for a, p in line.seats.items() if p.takes_offer()}
        assert not any(a.members & free for a in line.waiting), line.waiting


@settings(max_examples=300, deadline=None)
@given(groups=st.lists(st.integers(0, 2), min_size=1, max_size=8), data=st.data())
def test_customers_of_separate_groups_are_served_in_their_groups_order(
        groups: list[int], data: st.DataObject) -> None:
    """Lines to spare, every advisor talking; customers of three groups without a member
    in common queue. The advisors then free up in any order, every customer tried again
    after each in any order: each group's customers are served in the order of the places
    they were told, 1, 2, 3, ... (each group served separately)."""
    separate = [frozenset({1, 2}), frozenset({3}), frozenset({4})]
    seats = {}
    for a in ADVISORS:
        p = standby(a)
        for event in (Offered(T0, f"busy{a}"), Answered(T0, f"busy{a}")):
            p, _ = presence_transition(p, event, Rules())
        seats[a] = p
    line = Line(10, seats, elsewhere=0)
    for g in groups:
        line.queue(separate[g])
    told = dict(line.said)
    of_group = {c: separate[g] for c, g in zip(told, groups, strict=True)}
    while line.waiting:
        talking = sorted(a for a, p in line.seats.items() if p.sessions)
        a = data.draw(st.sampled_from(talking))
        line.now += timedelta(seconds=10)
        ended = line.seats[a].sessions[0].consultation_id
        p, _ = presence_transition(line.seats[a], ConsultationEnded(line.now, ended), Rules())
        line.seats[a], _ = presence_transition(p, WrapUpElapsed(line.now, p.wrap_up_token),
                                               Rules())
        line.retry(data.draw(st.permutations(range(len(line.waiting)))))
    for members in separate:
        served = [c for c in line.served if of_group[c] == members]
        assert [told[c] for c in served] == list(range(1, len(served) + 1))
