"""The IVR engine: a pure state machine that runs one :class:`~ivr_flow.Flow` on one call.

``start(flow, call_id) -> (state, commands)`` then
``transition(state, event) -> (state, commands)``. No I/O here (no aiohttp,
asyncpg or ``shared.ari`` imports); the ARI adapter turns ``Play`` into
``POST /channels/{id}/play``, ``StartTimer`` into an asyncio timer that comes
back as ``Timeout``, ``Submit`` into a ``request_info`` row plus its outbox
message, ``DialOperator`` into the dialer's operator leg, ``ConnectAdvisor`` into a
consultation (:mod:`callback_server.consult`, whose outcome comes back as
``AdvisorUnavailable``, ``ConsultBusy``, ``ConsultFailed``, ``ConsultRefused`` (billing's
refusal: its guidance, then the node's ``on_fail``) or ``ConsultEnded``), and
``Hangup`` into the dialer's ``EndCall``. The other verbs ask the adapter too:
``CheckHours`` (answered ``HoursChecked``), ``StartRecording`` (``Recorded``),
``CallWebhook`` (``WebhookAnswered`` / ``WebhookFailed``), ``Speak`` (a ``say`` node's
text, answered ``Spoken`` with the rendered media to play, or none), ``TransferCall``
(``TransferFailed``); ``SendSms`` and ``Submit`` need no answer. A ``subflow`` node runs
another flow in the same state (``frames`` remembers where its ``return`` goes).
Variables (``collected``: ``caller``, what was keyed, set, recorded or answered) fill
``{name}`` in templates and media.

Behaviour of the waiting nodes (``menu``, ``digits``, ``confirm``):

* the prompt plays; a key pressed during it stops it (barge-in) and counts;
* the no-input timer (``timeout_s``) starts when the prompt ends and restarts
  after each digit, so it is also the inter-digit timeout;
* an invalid key or a timeout re-prompts with ``invalid_prompt`` or
  ``timeout_prompt`` first, up to ``retries`` times, then goes to ``on_fail``;
* ``digits`` ends on the terminator (``#``) or when ``max_length`` digits are in;
  ``*`` (when it is not the terminator) clears what was typed.

Playback and timer ids carry a sequence number, so a late ``PlaybackFinished``
of a stopped prompt or a stale ``Timeout`` is recognised and ignored.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import assert_never

from callback_server.ivr_flow import (
    DIGITS_FORMAT,
    INSTANT_TYPES,
    PLACEHOLDER,
    Flow,
    Media,
    Node,
)

# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    playback_id: str


@dataclass(frozen=True, slots=True)
class Timeout:
    timer_id: str


@dataclass(frozen=True, slots=True)
class OperatorFailed:
    """The operator leg was not answered (or failed): continue at the node's ``on_fail``."""


@dataclass(frozen=True, slots=True)
class CallerHangup:
    """The customer's leg is gone."""


@dataclass(frozen=True, slots=True)
class AdvisorUnavailable:
    """The advisor chosen by code cannot take the call: ``unknown`` (no such code),
    ``talking``, ``offline`` or ``away`` (working, on a break, after-call work)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Listed:
    """One advisor read in a list: their key is their place (1-based); ``unavailable``
    is why they cannot take the call now (None: they can)."""

    advisor_id: int
    name: Media
    unavailable: str | None = None


@dataclass(frozen=True, slots=True)
class AdvisorsListed:
    """The advisors an ``advisor_list`` node reads (``ListAdvisors``), in their order;
    read 9 a page (:data:`PAGE`)."""

    advisors: tuple[Listed, ...]


@dataclass(frozen=True, slots=True)
class ConsultBusy:
    """All the merchant's lines are in use."""


@dataclass(frozen=True, slots=True)
class ConsultFailed:
    """No advisor answered, or none was available within the wait."""


@dataclass(frozen=True, slots=True)
class ConsultRefused:
    """Billing refused the consultation before any advisor was rung: ``reason`` is the
    admission's (``balance-too-low``, ``no-card``, ``in-dunning``, ``unpaid-limit``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConsultEnded:
    """The advisor ended the consultation; the customer is still on the line."""


@dataclass(frozen=True, slots=True)
class HoursChecked:
    """The adapter's answer to ``CheckHours``: is the merchant's line open now."""

    open: bool


@dataclass(frozen=True, slots=True)
class Recorded:
    """The recording ``name`` (``StartRecording``) ended: ``recording_id`` is the stored
    recording's id, None when nothing was recorded or it could not be stored."""

    name: str
    recording_id: str | None


@dataclass(frozen=True, slots=True)
class WebhookAnswered:
    """The webhook ``request_id`` answered 2xx; ``values``: the variables its JSON set."""

    request_id: str
    values: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class WebhookFailed:
    """The webhook ``request_id`` failed: an error, a non-2xx answer or its timeout."""

    request_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Spoken:
    """The text of ``Speak`` ``request_id`` rendered as ``media`` (a ``sound:`` URI); None:
    it could not be (the node goes on without it)."""

    request_id: str
    media: str | None


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """The transfer's number did not answer (or could not be called): ``on_fail``."""


Event = (Dtmf | PlaybackFinished | Timeout | OperatorFailed | CallerHangup
         | AdvisorUnavailable | AdvisorsListed | ConsultBusy | ConsultFailed | ConsultRefused
         | ConsultEnded | HoursChecked | Recorded | WebhookAnswered | WebhookFailed
         | TransferFailed | Spoken)

#: what the customer hears when the advisor of a code cannot take the call, by reason
UNAVAILABLE: dict[str, Media] = {
    "unknown": ("sound:cbgw/advisor-unknown",),
    "talking": ("sound:cbgw/advisor-talking",),
    "offline": ("sound:cbgw/advisor-offline",),
    "away": ("sound:cbgw/advisor-away",),
}

#: the guidance a customer refused by billing hears, by the admission's reason, before
#: the node's ``on_fail``
REFUSED: dict[str, Media] = {reason: (f"sound:cbgw/{reason}",) for reason in
                             ("balance-too-low", "no-card", "in-dunning", "unpaid-limit")}

# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Play:
    playback_id: str
    media: Media


@dataclass(frozen=True, slots=True)
class StopPlayback:
    playback_id: str


@dataclass(frozen=True, slots=True)
class StartTimer:
    timer_id: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer_id: str


@dataclass(frozen=True, slots=True)
class Submit:
    """The request information collected (the patent's 電話要望情報)."""

    category: str
    fields: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, str]:
        return dict(self.fields)


@dataclass(frozen=True, slots=True)
class DialOperator:
    target: str


@dataclass(frozen=True, slots=True)
class ConnectAdvisor:
    """Put the customer through to an advisor: of the 4-digit ``code`` (method ``code``),
    a member of the group named ``group`` (method ``group``) or the one chosen from a
    list (``advisor_id``; methods ``online_list``, ``all_list``); wait up to ``queue_s``
    for one to be free."""

    method: str
    code: str | None = None
    group: str | None = None
    queue_s: int = 0
    advisor_id: int | None = None


@dataclass(frozen=True, slots=True)
class ListAdvisors:
    """Read the merchant's advisors: ``online`` (who can take a call now) or ``all``;
    the answer comes back as ``AdvisorsListed``."""

    listing: str


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class CheckHours:
    """Ask whether the merchant's line is open now; the answer is ``HoursChecked``."""


@dataclass(frozen=True, slots=True)
class StartRecording:
    """Record the customer as ``name``: a beep first (``beep``), up to ``max_s`` seconds,
    ending on ``silence_s`` of silence (0: never) or the ``terminator`` key; the end
    comes back as ``Recorded``."""

    name: str
    max_s: int
    silence_s: int
    beep: bool
    terminator: str


@dataclass(frozen=True, slots=True)
class SendSms:
    """Send ``text`` to ``to`` (E.164) in the background: the call does not wait."""

    to: str
    text: str


@dataclass(frozen=True, slots=True)
class CallWebhook:
    """POST the call's ``variables`` to ``url``; the answer comes back as
    ``WebhookAnswered`` (keeping only the variables of ``sets``) or ``WebhookFailed``."""

    request_id: str
    url: str
    variables: tuple[tuple[str, str], ...]
    sets: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Speak:
    """Render ``parts`` as speech in ``language`` (None: the merchant's); the media comes
    back as ``Spoken``. ``parts``: (text, digits) in order, ``digits`` for a variable's
    value read digit by digit (``{name:digits}``)."""

    request_id: str
    parts: tuple[tuple[str, bool], ...]
    language: str | None


@dataclass(frozen=True, slots=True)
class TransferCall:
    """Put the customer through to ``number`` (E.164), ringing up to ``ring_s``."""

    number: str
    ring_s: int


Command = (Play | StopPlayback | StartTimer | CancelTimer | Submit | DialOperator
           | ConnectAdvisor | ListAdvisors | Hangup | CheckHours | StartRecording | SendSms
           | CallWebhook | TransferCall | Speak)

# --- state ---------------------------------------------------------------------------------


class _Keep(enum.Enum):
    """:meth:`IvrState.evolve`'s default: the field is kept (None is a value)."""

    KEEP = enum.auto()


KEEP = _Keep.KEEP


class Mode(enum.StrEnum):
    PROMPT = "prompt"        # a prompt is playing
    WAIT = "wait"            # waiting for keys, the no-input timer running
    OPERATOR = "operator"    # handed to the operator leg
    CONSULT = "consult"      # handed to a consultation with an advisor
    LISTING = "listing"      # waiting for the advisors a list node reads
    HOURS = "hours"          # waiting for the business hours' answer
    RECORDING = "recording"  # recording the customer
    WEBHOOK = "webhook"      # waiting for a webhook's answer
    TRANSFER = "transfer"    # handed to a transfer to a number
    SPEAKING = "speaking"    # waiting for a say node's text to be rendered
    ENDING = "ending"        # playing the last prompt before hanging up
    DONE = "done"


@dataclass(frozen=True, slots=True)
class IvrState:
    flow: Flow
    call_id: str
    node: str
    mode: Mode = Mode.PROMPT
    buffer: str = ""
    tries: int = 0
    collected: tuple[tuple[str, str], ...] = ()
    playback: str | None = None
    timer: str | None = None
    seq: int = 0
    listed: tuple[Listed, ...] = ()       # the advisors an advisor_list node read
    page: int = 0                         # the page of them read (PAGE a page), from 0
    pending: str | None = None            # the recording, webhook or speech awaited
    held: Media = ()                      # what plays before the speech awaited
    #: the sub-flows being run: (the flow that called, the node its return goes to)
    frames: tuple[tuple[Flow, str], ...] = ()
    #: the types of the nodes the last step entered, in order (passed through or stopped
    #: at; a re-prompt enters none): what the adapter counts
    entered: tuple[str, ...] = field(default=(), compare=False)

    @property
    def current(self) -> Node:
        return self.flow.node(self.node)

    def value(self, field: str) -> str | None:
        return next((v for f, v in self.collected if f == field), None)

    def with_value(self, field: str, value: str) -> IvrState:
        kept = tuple((f, v) for f, v in self.collected if f != field)
        return self.evolve(collected=(*kept, (field, value)))

    def evolve(self, *,
               flow: Flow | _Keep = KEEP,
               call_id: str | _Keep = KEEP,
               node: str | _Keep = KEEP,
               mode: Mode | _Keep = KEEP,
               buffer: str | _Keep = KEEP,
               tries: int | _Keep = KEEP,
               collected: tuple[tuple[str, str], ...] | _Keep = KEEP,
               playback: str | None | _Keep = KEEP,
               timer: str | None | _Keep = KEEP,
               seq: int | _Keep = KEEP,
               listed: tuple[Listed, ...] | _Keep = KEEP,
               page: int | _Keep = KEEP,
               pending: str | None | _Keep = KEEP,
               held: Media | _Keep = KEEP,
               frames: tuple[tuple[Flow, str], ...] | _Keep = KEEP,
               entered: tuple[str, ...] | _Keep = KEEP,
               ) -> IvrState:
        """A copy with the fields given changed: what ``dataclasses.replace`` makes, in a
        third of its time (it gathers every field into a dict and runs the frozen
        ``__init__``); the machine makes some fifty copies a call. A field added to the
        class is added here too (``tests/unit/test_callback_ivr.py`` checks each)."""
        new = object.__new__(IvrState)
        put = object.__setattr__                # what the frozen ``__init__`` sets with
        put(new, "flow", self.flow if flow is KEEP else flow)
        put(new, "call_id", self.call_id if call_id is KEEP else call_id)
        put(new, "node", self.node if node is KEEP else node)
        put(new, "mode", self.mode if mode is KEEP else mode)
        put(new, "buffer", self.buffer if buffer is KEEP else buffer)
        put(new, "tries", self.tries if tries is KEEP else tries)
        put(new, "collected", self.collected if collected is KEEP else collected)
        put(new, "playback", self.playback if playback is KEEP else playback)
        put(new, "timer", self.timer if timer is KEEP else timer)
        put(new, "seq", self.seq if seq is KEEP else seq)
        put(new, "listed", self.listed if listed is KEEP else listed)
        put(new, "page", self.page if page is KEEP else page)
        put(new, "pending", self.pending if pending is KEEP else pending)
        put(new, "held", self.held if held is KEEP else held)
        put(new, "frames", self.frames if frames is KEEP else frames)
        put(new, "entered", self.entered if entered is KEEP else entered)
        return new

    def render(self, template: str) -> str:
        """``template`` with each ``{variable}`` replaced by its value ("" if it has none)."""
        return PLACEHOLDER.sub(lambda m: self.value(m.group(1)) or "", template)


Step = tuple[IvrState, list[Command]]
MAX_HOPS = 64


def start(flow: Flow, call_id: str, variables: tuple[tuple[str, str], ...] = ()) -> Step:
    """Run ``flow``; ``variables``: what the call brings (``caller``)."""
    state = IvrState(flow=flow, call_id=call_id, node=flow.start, collected=variables)
    return _enter(state, flow.start)


def transition(state: IvrState, event: Event) -> Step:
    if state.entered:            # what the last step entered (a copy only when it did)
        state = state.evolve(entered=())
    if state.mode is Mode.DONE:
        return state, []
    if isinstance(event, CallerHangup):
        cmds: list[Command] = [CancelTimer(state.timer)] if state.timer else []
        return state.evolve(mode=Mode.DONE, timer=None, playback=None), cmds
    if isinstance(event, PlaybackFinished):
        return _playback_finished(state, event)
    if isinstance(event, Dtmf):
        return _dtmf(state, event.digit)
    if isinstance(event, Timeout):
        if event.timer_id != state.timer or state.mode is not Mode.WAIT:
            return state, []
        return _retry(state.evolve(timer=None), state.current.timeout_prompt)
    if isinstance(event, OperatorFailed):
        if state.mode is Mode.OPERATOR and state.current.on_fail:
            return _enter(state, state.current.on_fail)
        return state, []
    if isinstance(event, AdvisorsListed):
        return _listed(state, event.advisors)
    if isinstance(event, HoursChecked | Recorded | WebhookAnswered | WebhookFailed
                  | TransferFailed | Spoken):
        return _answered(state, event)
    return _consult_outcome(state, event)


def _answered(state: IvrState, event: HoursChecked | Recorded | WebhookAnswered
              | WebhookFailed | TransferFailed | Spoken) -> Step:
    """What an adapter answered for a node waiting on it (stale answers are ignored)."""
    node = state.current
    match event:
        case HoursChecked(open=is_open) if state.mode is Mode.HOURS:
            return _enter(state, node.branch("open" if is_open else "closed"))
        case Recorded(name=name, recording_id=rid) if state.mode is Mode.RECORDING \
                and name == state.pending:
            assert node.field is not None and node.next is not None
            state = state.evolve(pending=None)
            if rid is None:
                return _enter(state, node.on_fail or node.next)
            return _enter(state.with_value(node.field, rid), node.next)
        case WebhookAnswered(request_id=rid, values=values) if state.mode is Mode.WEBHOOK \
                and rid == state.pending:
            assert node.next is not None
            state = state.evolve(pending=None)
            for name, value in values:
                if name in node.sets:
                    state = state.with_value(name, value)
            return _enter(state, node.next)
        case WebhookFailed(request_id=rid) if state.mode is Mode.WEBHOOK \
                and rid == state.pending:
            assert node.on_fail is not None
            return _enter(state.evolve(pending=None), node.on_fail)
        case Spoken(request_id=rid, media=media) if state.mode is Mode.SPEAKING \
                and rid == state.pending:
            assert node.next is not None
            played = state.held + ((media,) if media else ())
            state = state.evolve(pending=None, held=())
            return _play(state, played, Mode.PROMPT) if played else _enter(state, node.next)
        case TransferFailed() if state.mode is Mode.TRANSFER:
            assert node.on_fail is not None
            return _enter(state, node.on_fail)
    return state, []


def _consult_outcome(state: IvrState, event: AdvisorUnavailable | ConsultBusy
                     | ConsultFailed | ConsultRefused | ConsultEnded) -> Step:
    node = state.current
    if state.mode is not Mode.CONSULT:
        return state, []
    assert node.on_fail is not None and node.on_busy is not None and node.next is not None
    match event:
        case AdvisorUnavailable(reason=reason) if node.type in ("advisor_code",
                                                                "advisor_list"):
            return _retry(state, UNAVAILABLE.get(reason, node.invalid_prompt))
        case AdvisorUnavailable() | ConsultFailed():
            return _enter(state, node.on_fail)
        case ConsultRefused(reason=reason):
            return _enter(state, node.on_fail, REFUSED.get(reason, ()))
        case ConsultBusy():
            return _enter(state, node.on_busy, node.busy_prompt)
        case ConsultEnded():
            return _enter(state, node.next)
        case _:
            assert_never(event)


# --- internals -----------------------------------------------------------------------------


def _play(state: IvrState, media: Media, mode: Mode) -> Step:
    seq = state.seq + 1
    pid = f"{state.call_id}-p{seq}"
    return state.evolve(seq=seq, playback=pid, mode=mode), [Play(pid, _rendered(state, media))]


def _rendered(state: IvrState, media: Media) -> Media:
    """``media`` with its ``{variable}`` filled in; a value keeps only what a media URI may
    hold (no ``,``: one variable is never two media), and a URI left empty is dropped."""
    out = []
    for uri in media:
        if "{" in uri:
            uri = PLACEHOLDER.sub(lambda m: _MEDIA_UNSAFE.sub("", state.value(m.group(1)) or ""),
                                  uri)
            if uri.endswith(":"):
                continue
        out.append(uri)
    return tuple(out)


_MEDIA_UNSAFE = re.compile(r"[^A-Za-z0-9_/.:#*+-]")


def _next_id(state: IvrState, kind: str) -> tuple[IvrState, str]:
    seq = state.seq + 1
    return state.evolve(seq=seq), f"{state.call_id}-{kind}{seq}"


def _start_timer(state: IvrState) -> Step:
    seq = state.seq + 1
    tid = f"{state.call_id}-t{seq}"
    cmds: list[Command] = [CancelTimer(state.timer)] if state.timer else []
    return state.evolve(seq=seq, timer=tid, mode=Mode.WAIT), [
        *cmds, StartTimer(tid, state.current.timeout_s)]


def _leave(state: IvrState) -> Step:
    """Stop what belongs to the current node: its timer and its prompt."""
    if not state.timer and not state.playback:
        return state, []
    cmds: list[Command] = []
    if state.timer:
        cmds.append(CancelTimer(state.timer))
    if state.playback:
        cmds.append(StopPlayback(state.playback))
    return state.evolve(timer=None, playback=None), cmds


def _enter(state: IvrState, node_id: str, preamble: Media = (), *, silent: bool = False
           ) -> Step:
    """Go to ``node_id``. ``silent``: an input node skips its prompt (type-ahead)."""
    state, cmds = _leave(state)
    for _ in range(MAX_HOPS):
        node = state.flow.node(node_id)
        state = state.evolve(node=node_id, buffer="", tries=0, listed=(), pending=None,
                        held=(), entered=(*state.entered, node.type))
        passed = _pass(state, node)
        if passed is None:
            state, more = _arrive(state, node, preamble, silent)
            return state, cmds + more
        state, node_id, more = passed
        cmds += more
    raise RuntimeError(f"{state.flow.source}: more than {MAX_HOPS} nodes without waiting")


def _pass(state: IvrState, node: Node) -> tuple[IvrState, str, list[Command]] | None:
    """Where a node the machine passes through leads (submit, set, sms, a sub-flow's start
    and its return), with what it did; None: the machine stops at ``node``."""
    if node.type in INSTANT_TYPES:
        state, cmds = _instant(state, node)
        assert node.next is not None
        return state, node.next, cmds
    if node.type == "subflow":
        assert node.flow is not None and node.next is not None
        sub = state.flow.subflow(node.flow)
        return state.evolve(flow=sub, frames=(*state.frames, (state.flow, node.next))), \
            sub.start, []
    if node.type == "return" and state.frames:
        back, node_id = state.frames[-1]
        return state.evolve(flow=back, frames=state.frames[:-1]), node_id, []
    return None


def _arrive(state: IvrState, node: Node, preamble: Media, silent: bool) -> Step:
    """Start what ``node`` does where the machine stops at it."""
    if silent and node.waits_for_input:
        return state.evolve(mode=Mode.WAIT), []
    if node.type == "say" and node.text is not None:
        state, rid = _next_id(state, "s")
        return state.evolve(mode=Mode.SPEAKING, pending=rid, held=preamble), [
            Speak(rid, _speech(state, node.text), node.language)]
    if node.type in ("menu", "digits", "confirm", "say", "advisor_code"):
        return _play(state, preamble + node.prompt, Mode.PROMPT)
    if node.type == "readback":
        media = list(preamble + node.prompt)
        for f in node.fields:
            media += [*node.label(f), f"digits:{state.value(f) or ''}"]
        return _play(state, tuple(m for m in media if m != "digits:"), Mode.PROMPT)
    if node.type in HANDED_OFF:
        return _hand_off(state, node, preamble)
    if node.type == "hours":
        return state.evolve(mode=Mode.HOURS), [CheckHours()]
    if node.type == "record":
        if preamble + node.prompt:
            return _play(state, preamble + node.prompt, Mode.PROMPT)
        return _record(state, node)
    if node.type == "webhook":
        state, rid = _next_id(state, "w")
        assert node.url is not None
        return state.evolve(mode=Mode.WEBHOOK, pending=rid), [
            CallWebhook(rid, node.url, state.collected, node.sets, node.timeout_s)]
    if node.prompt or preamble:       # hangup, or return from the top flow
        return _play(state, preamble + node.prompt, Mode.ENDING)
    return state.evolve(mode=Mode.DONE), [Hangup()]


def _instant(state: IvrState, node: Node) -> Step:
    """What a node the machine passes through does: submit, set, sms."""
    if node.type == "submit":
        fields = tuple((f, v) for f in node.fields if (v := state.value(f)) is not None)
        return state, [Submit(node.category or "request", fields)]
    if node.type == "set":
        for name, template in node.values:
            state = state.with_value(name, state.render(template))
        return state, []
    assert node.to is not None and node.text is not None   # sms
    to = state.value("caller") if node.to == "caller" else node.to
    text = state.render(node.text).strip()
    return state, [SendSms(to, text)] if to and text else []


def _speech(state: IvrState, template: str) -> tuple[tuple[str, bool], ...]:
    """A say node's ``template`` filled in: (text, digits) parts, ``digits`` for a
    ``{name:digits}`` value; empty parts are left out."""
    parts: list[tuple[str, bool]] = []
    at = 0
    for m in PLACEHOLDER.finditer(template):
        name = m.group(1)
        digits = name.endswith(DIGITS_FORMAT)
        parts += [(template[at:m.start()], False),
                  (state.value(name.removesuffix(DIGITS_FORMAT)) or "", digits)]
        at = m.end()
    parts.append((template[at:], False))
    return tuple((text, digits) for text, digits in parts if text)


def _record(state: IvrState, node: Node) -> Step:
    state, name = _next_id(state, "r")
    return state.evolve(mode=Mode.RECORDING, pending=name), [
        StartRecording(name, node.max_s, node.silence_s, node.beep, node.terminator)]


#: nodes whose work another machine does while their prompt plays, and the mode they wait in
HANDED_OFF = {"operator": Mode.OPERATOR, "connect": Mode.CONSULT, "advisor_list": Mode.LISTING,
              "transfer": Mode.TRANSFER}


def _hand_off(state: IvrState, node: Node, preamble: Media) -> Step:
    command: Command
    if node.type == "operator":
        assert node.target is not None
        command, media = DialOperator(node.target), node.prompt
    elif node.type == "transfer":
        assert node.number is not None
        command, media = TransferCall(node.number, node.ring_s), preamble + node.prompt
    elif node.type == "advisor_list":           # its prompt plays with the list
        command, media = ListAdvisors(node.list), preamble
    else:
        command = ConnectAdvisor("group" if node.group else "code", node.advisor,
                                 node.group, node.queue_s)
        media = preamble + node.prompt
    mode = HANDED_OFF[node.type]
    more: list[Command] = [command]
    if media:
        state, play = _play(state, media, mode)
        more = play + more
    return state.evolve(mode=mode), more


def _playback_finished(state: IvrState, ev: PlaybackFinished) -> Step:
    if ev.playback_id != state.playback:
        return state, []           # a stopped or superseded prompt
    state = state.evolve(playback=None)
    node = state.current
    if state.mode is Mode.ENDING:
        return state.evolve(mode=Mode.DONE), [Hangup()]
    if state.mode is not Mode.PROMPT:
        return state, []
    if node.waits_for_input:
        return _start_timer(state)
    if node.type == "record":
        return _record(state, node)
    assert node.next is not None   # say, readback
    return _enter(state, node.next)


def _dtmf(state: IvrState, digit: str) -> Step:
    node = state.current
    if (node.type in ("say", "readback") and state.mode is Mode.PROMPT and node.next is not None
            and state.flow.node(node.next).waits_for_input):
        # Type-ahead: a key during an announcement (a read-back) answers the question
        # that follows it, as a caller who knows the flow expects.
        state, skipped = _enter(state, node.next, silent=True)
        nxt, answered = _dtmf(state, digit)
        return nxt, skipped + answered
    if not node.waits_for_input or state.mode not in (Mode.PROMPT, Mode.WAIT):
        return state, []
    cmds: list[Command] = []
    if state.playback:                       # barge-in
        cmds.append(StopPlayback(state.playback))
        state = state.evolve(playback=None, mode=Mode.WAIT)
    if node.type in ("digits", "advisor_code"):
        nxt, more = _digit(state, node, digit)
    elif node.type == "advisor_list":
        nxt, more = _pick(state, node, digit)
    else:
        target = node.choice(digit)
        if target and node.type == "menu" and node.field:    # the choice is request data
            state = state.with_value(node.field, digit)
        nxt, more = _enter(state, target) if target else _retry(state, node.invalid_prompt)
    return nxt, cmds + more


def _digit(state: IvrState, node: Node, digit: str) -> Step:
    if digit == node.terminator:
        if len(state.buffer) >= node.min_length:
            return _collect(state, node)
        return _retry(state, node.invalid_prompt)
    if digit == "*":
        return _start_timer(state.evolve(buffer=""))
    if not digit.isdigit():
        return state, []
    state = state.evolve(buffer=state.buffer + digit)
    if len(state.buffer) >= node.max_length:
        return _collect(state, node)
    return _start_timer(state)


def _collect(state: IvrState, node: Node) -> Step:
    assert node.field is not None and node.next is not None
    kept = tuple((f, v) for f, v in state.collected if f != node.field)
    state = state.evolve(collected=(*kept, (node.field, state.buffer)))
    if node.type == "advisor_code":
        state, cmds = _leave(state)
        return state.evolve(mode=Mode.CONSULT), [*cmds, ConnectAdvisor("code", state.buffer)]
    return _enter(state, node.next)


def _retry(state: IvrState, preamble: Media) -> Step:
    node = state.current
    if state.tries >= node.retries:
        assert node.on_fail is not None
        return _enter(state, node.on_fail)
    tries = state.tries + 1
    state, cmds = _leave(state)
    state, more = _play(state.evolve(buffer="", tries=tries),
                        preamble + node.prompt + _listing(state), Mode.PROMPT)
    return state, cmds + more


# --- advisor lists ------------------------------------------------------------------------


#: advisors read a page: one key each, 1 to 9; 0 turns the page
PAGE = 9
#: the page key, and what it says at the end of a page: the next page, or (at the last
#: page of a list of more than one) back to the first
PAGE_KEY = "0"
MORE: Media = ("sound:cbgw/advisor-list-more",)
FIRST: Media = ("sound:cbgw/advisor-list-first",)


def _page(state: IvrState) -> tuple[Listed, ...]:
    return state.listed[state.page * PAGE:(state.page + 1) * PAGE]


def _listing(state: IvrState) -> Media:
    """What a list node reads after its prompt: the page's "1, <name>; 2, <name>, <why
    not> ..." then, if the list has more than one page, how 0 turns it."""
    media: list[str] = []
    for key, advisor in enumerate(_page(state), start=1):
        media += [f"digits:{key}", *advisor.name]
        if advisor.unavailable is not None:
            media += UNAVAILABLE.get(advisor.unavailable, ())
    if len(state.listed) > PAGE:
        media += MORE if (state.page + 1) * PAGE < len(state.listed) else FIRST
    return tuple(media)


def _listed(state: IvrState, advisors: tuple[Listed, ...]) -> Step:
    node = state.current
    if state.mode is not Mode.LISTING or node.type != "advisor_list":
        return state, []
    if not advisors:
        assert node.on_fail is not None
        return _enter(state, node.on_fail)
    state = state.evolve(listed=advisors, page=0, playback=None)
    return _play(state, node.prompt + _listing(state), Mode.PROMPT)


def _turn_page(state: IvrState) -> Step:
    """0 on a list of more than one page: the next page is read (after the last, the
    first again), without the node's prompt and without counting a try."""
    pages = -(-len(state.listed) // PAGE)
    state, cmds = _leave(state)
    state = state.evolve(page=(state.page + 1) % pages, buffer="")
    state, more = _play(state, _listing(state), Mode.PROMPT)
    return state, cmds + more


def _pick(state: IvrState, node: Node, digit: str) -> Step:
    if digit == PAGE_KEY and len(state.listed) > PAGE:
        return _turn_page(state)
    page = _page(state)
    index = int(digit) - 1 if digit.isdigit() else -1
    if not 0 <= index < len(page):
        return _retry(state, node.invalid_prompt)
    chosen = page[index]
    if chosen.unavailable is not None:
        return _retry(state, UNAVAILABLE.get(chosen.unavailable, node.invalid_prompt))
    state, cmds = _leave(state)
    method = "online_list" if node.list == "online" else "all_list"
    return state.evolve(mode=Mode.CONSULT), [
        *cmds, ConnectAdvisor(method, advisor_id=chosen.advisor_id)]
