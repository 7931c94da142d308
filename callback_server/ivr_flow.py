"""IVR flows as data: load a TOML flow, validate it, and hand the engine frozen nodes.

A flow (``callback_server/flows/<name>.toml``) is a named graph of nodes, in the
spirit of jambonz verbs::

    name = "order"
    start = "main"

    [nodes.main]
    type = "menu"
    prompt = ["sound:cbgw/welcome-menu"]
    choices = { "1" = "item_code", "2" = "order_number", "0" = "operator" }
    on_fail = "goodbye"

Node types and their keys (``*`` = required):

============  ==================================================================
``menu``      prompt*, choices* (DTMF key → node), timeout_s, retries,
              invalid_prompt, timeout_prompt, on_fail*, field (keeps the key chosen)
``digits``    prompt*, field*, next*, max_length, min_length, terminator,
              timeout_s, retries, invalid_prompt, timeout_prompt, on_fail*
``readback``  prompt, fields* (collected fields), labels (field → media), next*
``confirm``   prompt*, yes* (node on 1), no* (node on 2), yes_key, no_key,
              timeout_s, retries, invalid_prompt, timeout_prompt, on_fail*
``say``       prompt* or text* (one of), next*, language (with text: ja | en)
``submit``    category*, fields*, next*
``operator``  prompt, target*, on_fail* (when no operator answers)
``advisor_code``  prompt*, next*, on_busy*, on_fail*, busy_prompt, timeout_s,
              retries, invalid_prompt, timeout_prompt
``connect``   group or advisor* (one of), next*, on_busy*, on_fail*, prompt,
              busy_prompt, queue_s
``advisor_list``  prompt*, next*, on_busy*, on_fail*, list (online | all), busy_prompt,
              timeout_s, retries, invalid_prompt, timeout_prompt
``hangup``    prompt
``set``       values* (variable → template), next*
``hours``     open* (node while the line is open), closed* (node while closed)
``subflow``   flow* (another flow's name), next* (where its ``return`` comes back to)
``return``    (none): back from a sub-flow (at the top: hangs up)
``record``    field*, next*, prompt, max_s, silence_s, beep, terminator, on_fail
``sms``       to* (``caller`` or an E.164 number), text* (template), next*
``webhook``   url*, next*, on_fail*, sets (variables its answer may set), timeout_s
``transfer``  number* (E.164), on_fail*, prompt, ring_s
============  ==================================================================

Variables: what ``digits`` and ``advisor_code`` collect, the key a ``menu`` with a
``field`` was answered with, ``set`` sets, ``record`` names
(the stored recording's id) and a ``webhook``'s answer sets, and ``caller`` (the
customer's E.164 number). A template (``set`` values, ``sms`` and ``say`` text) and a media URI
(``digits:{order_no}``) put a variable's value where ``{name}`` is; every ``{name}`` must be
a variable of the flow. A ``submit`` node's ``fields`` may name any variable: that is the
call's request data.

* ``hours``: the merchant's business hours for the dialled number (``[merchants.hours]``;
  none: always open), asked of the adapter (the machine stays pure).
* ``subflow``: runs the flow named ``flow`` (a file flow beside this one, or for a stored
  flow the merchant's newest stored version of that name) from its ``start``; its
  ``return`` node comes back to this node's ``next``, its ``hangup`` ends the call. The
  variables are the call's: a sub-flow names those it expects from the flow running it in
  its top-level ``uses = ["order_no"]``, which that flow must collect or set.
  Resolved when the flow is loaded (:func:`resolve`): a missing sub-flow, or one that
  leads back to a flow already being run (recursion), is a :class:`FlowError`.
* ``record``: ``prompt``, a beep (``beep = false``: none), then records up to ``max_s``
  seconds (default 60, 1..600), ending on ``silence_s`` seconds of silence (default 5;
  0: not on silence) or the ``terminator`` key (``#``); the recording is stored for the
  merchant's retention and its id is the variable ``field``. Nothing recorded:
  ``on_fail`` (default ``next``).
* ``say`` with ``text``: the text (a template) is spoken by the site's TTS (Open JTalk
  for ``ja``, espeak-ng for ``en``; ``language`` defaults to the merchant's), rendered
  once per filled text and cached. ``{name:digits}`` reads the variable's digits one by
  one (other characters dropped: ``{caller:digits}``); ``:digits`` is only for a say
  node's text. A text that cannot be rendered during a call is skipped (``next``).
* ``sms``: sends ``text`` to the customer (``to = "caller"``) or a fixed number, in the
  background (the call goes on at once, whatever becomes of the message).
* ``webhook``: POSTs the call's variables as JSON to ``url`` (signed), waits up to
  ``timeout_s`` (default 5, 1..30); the JSON object answered sets the variables named in
  ``sets`` (strings or numbers); an error, a non-2xx answer or the timeout: ``on_fail``.
* ``transfer``: puts the customer through to ``number`` (the cheapest carrier), ringing
  up to ``ring_s`` (default 30); bridged, the IVR's part ends; no answer: ``on_fail``.

Consultation nodes put the customer through to an advisor (``advisors``):

* ``advisor_code``: the customer enters an advisor's 4-digit code (``#`` ends it
  early, ``*`` clears it). An unknown code plays ``sound:cbgw/advisor-unknown``, an
  advisor who cannot take the call now says why (``advisor-talking``,
  ``advisor-offline``, ``advisor-away``), then the node asks again (``retries``, then
  ``on_fail``). An advisor in standby is rung (method ``code``).
* ``connect``: rings the group named ``group`` (its member idle the longest, the next
  one on a missed ring; method ``group``) or the advisor whose code is ``advisor``.
  A customer no member can take waits up to ``queue_s`` seconds (default 60, 0: not
  at all) with music on hold.

* ``advisor_list``: reads the merchant's advisors, 9 a page, as "1, <name prompt>; 2,
  ..." after its ``prompt``: ``list = "online"`` (default) those who can take a call
  now (method ``online_list``), ``"all"`` every advisor, each who cannot with why
  (method ``all_list``). The key of one who can rings them; of one who cannot says why
  and reads the page again (``retries``, then ``on_fail``); no advisor: ``on_fail``.
  More than 9: each page ends with "for more, press 0" (the last page: "to hear the
  list from the start, press 0"), and 0 reads the next page (after the last, the
  first); keys 1-9 pick from the page being read.

All three go to ``on_busy`` after ``busy_prompt`` (default ``sound:cbgw/lines-busy``) when
all the merchant's lines are in use, to ``on_fail`` when no advisor answered or none
was available, and to ``next`` when the advisor ended the consultation (the customer
hanging up ends everything).

Confirm before connect (toll-fraud and harassment guard): the top-level key
``confirm_callback = "<node>"`` names a ``confirm`` node that must be the
``start`` node. The customer must press its yes key (1) within its
``timeout_s`` before any IVR, advisor or billing; the ARI adapter reports a
passed gate to the guard, and a round without it counts as *unconfirmed*
(two lock the number for 24 h). Its ``yes`` target must be a node the call stops at
(not ``submit``, ``set``, ``sms``, ``subflow`` or ``return``), so passing the gate is
visible as entering it.

Every error names the file, the line (when read from text: :func:`load_flow`,
:func:`parse_text`) and the node: ``flows/order.toml:21: node 'main':
choices: key '12' is not a single DTMF key``. Validation also checks that
every target exists, every node is reachable from ``start``, every field
read back or submitted is collected by some ``digits`` node, and every node can
reach a ``hangup`` or ``operator`` node (no loop without exit;
:mod:`callback_server.flow_check`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from callback_server.flow_check import EXIT_TYPES, error_line, without_exit

FLOWS_DIR = Path(__file__).resolve().parent / "flows"
DTMF_KEYS = frozenset("0123456789*#")
MEDIA = re.compile(r"^(sound|digits|number|characters|tone|recording):[A-Za-z0-9_/.,:#*+{}-]+$")
FIELD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
NODE_ID = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
ADVISOR_CODE = re.compile(r"^[0-9]{4}$")
E164_NUMBER = re.compile(r"^\+[1-9][0-9]{6,14}$")
FLOW_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: a say node's text reads ``{name:digits}`` digit by digit
DIGITS_FORMAT = ":digits"
LANGUAGES = ("ja", "en")
#: variables every call has
BUILTINS = frozenset({"caller"})
MAX_TEMPLATE = 1600

_TIMED = {"timeout_s", "retries", "invalid_prompt", "timeout_prompt", "on_fail"}
KEYS: dict[str, tuple[set[str], set[str]]] = {   # type -> (required, optional)
    "menu": ({"prompt", "choices", "on_fail"}, _TIMED | {"field"}),
    "digits": ({"prompt", "field", "next", "on_fail"},
               _TIMED | {"max_length", "min_length", "terminator"}),
    "readback": ({"fields", "next"}, {"prompt", "labels"}),
    "confirm": ({"prompt", "yes", "no", "on_fail"}, _TIMED | {"yes_key", "no_key"}),
    "say": ({"next"}, {"prompt", "text", "language"}),
    "submit": ({"category", "fields", "next"}, set()),
    "operator": ({"target", "on_fail"}, {"prompt"}),
    "advisor_code": ({"prompt", "next", "on_busy", "on_fail"}, _TIMED | {"busy_prompt"}),
    "connect": ({"next", "on_busy", "on_fail"},
                {"prompt", "group", "advisor", "busy_prompt", "queue_s"}),
    "advisor_list": ({"prompt", "next", "on_busy", "on_fail"},
                     _TIMED | {"list", "busy_prompt"}),
    "hangup": (set(), {"prompt"}),
    "set": ({"values", "next"}, set()),
    "hours": ({"open", "closed"}, set()),
    "subflow": ({"flow", "next"}, set()),
    "return": (set(), set()),
    "record": ({"field", "next"},
               {"prompt", "max_s", "silence_s", "beep", "terminator", "on_fail"}),
    "sms": ({"to", "text", "next"}, set()),
    "webhook": ({"url", "next", "on_fail"}, {"sets", "timeout_s"}),
    "transfer": ({"number", "on_fail"}, {"prompt", "ring_s"}),
}
#: nodes the machine passes through without waiting for anything
INSTANT_TYPES = frozenset({"submit", "set", "sms"})
#: nodes the call never stops at: entering one is not visible (a confirm gate's yes)
PASSED_THROUGH = INSTANT_TYPES | {"subflow", "return"}


class FlowError(ValueError):
    """A flow file that cannot be used. ``file``, ``line`` (when known) and ``node`` say
    where; ``message`` is what is wrong."""

    def __init__(self, file: str, node: str | None, message: str,
                 line: int | None = None) -> None:
        at = f"{file}:{line}" if line else file
        super().__init__(f"{at}: node {node!r}: {message}" if node else f"{at}: {message}")
        self.file = file
        self.node = node
        self.message = message
        self.line = line


Media = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    type: str
    prompt: Media = ()
    next: str | None = None
    choices: tuple[tuple[str, str], ...] = ()      # (key, node) for menu and confirm
    field: str | None = None
    max_length: int = 16
    min_length: int = 1
    terminator: str = "#"
    timeout_s: float = 8.0
    retries: int = 2
    invalid_prompt: Media = ("sound:cbgw/invalid",)
    timeout_prompt: Media = ("sound:cbgw/no-input",)
    on_fail: str | None = None
    fields: tuple[str, ...] = ()
    labels: tuple[tuple[str, Media], ...] = ()
    category: str | None = None
    target: str | None = None
    on_busy: str | None = None
    busy_prompt: Media = ("sound:cbgw/lines-busy",)
    group: str | None = None             # connect: the group's name
    advisor: str | None = None           # connect: a fixed advisor's 4-digit code
    queue_s: int = 60                    # connect: longest wait for a free member
    list: str = "online"                 # advisor_list: online | all
    values: tuple[tuple[str, str], ...] = ()   # set: (variable, template)
    branches: tuple[tuple[str, str], ...] = ()  # hours: (open|closed, node)
    flow: str | None = None              # subflow: the flow's name
    max_s: int = 60                      # record
    silence_s: int = 5                   # record
    beep: bool = True                    # record
    to: str | None = None                # sms: "caller" or an E.164 number
    text: str | None = None              # sms, say: the template
    language: str | None = None          # say: ja | en (None: the merchant's)
    url: str | None = None               # webhook
    sets: tuple[str, ...] = ()           # webhook: variables its answer may set
    number: str | None = None            # transfer: E.164
    ring_s: int = 30                     # transfer

    def branch(self, key: str) -> str:
        return next(node for k, node in self.branches if k == key)

    def choice(self, key: str) -> str | None:
        return next((node for k, node in self.choices if k == key), None)

    def label(self, field: str) -> Media:
        return next((media for f, media in self.labels if f == field), ())

    @property
    def waits_for_input(self) -> bool:
        return self.type in ("menu", "digits", "confirm", "advisor_code", "advisor_list")


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    start: str
    nodes: tuple[Node, ...]
    source: str = "<memory>"
    confirm_callback: str | None = None   # the confirm-before-connect gate node
    #: the flows its ``subflow`` nodes run, by name (:func:`resolve`)
    subflows: tuple[tuple[str, Flow], ...] = ()
    #: variables a sub-flow expects from the flow that runs it (top-level ``uses``)
    uses: tuple[str, ...] = ()

    def subflow(self, name: str) -> Flow:
        for known, flow in self.subflows:
            if known == name:
                return flow
        raise KeyError(f"{self.source}: sub-flow {name!r} was not resolved")

    @property
    def calls(self) -> tuple[str, ...]:
        """The names of the flows its ``subflow`` nodes run, in order, once each."""
        return tuple(dict.fromkeys(n.flow for n in self.nodes if n.flow))

    @property
    def confirm_yes(self) -> str | None:
        """The node the gate leads to when the customer confirms."""
        if self.confirm_callback is None:
            return None
        return self.node(self.confirm_callback).choices[0][1]

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)


# --- loading -------------------------------------------------------------------------------


def load_flow(path: Path) -> Flow:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FlowError(str(path), None, f"cannot read flow: {exc.strerror}") from None
    return parse_text(text, str(path))


def parse_text(text: str, source: str) -> Flow:
    """The flow written in the TOML ``text``; its errors name ``source``, the line and
    the node."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FlowError(source, None, f"invalid TOML: {exc}") from None
    try:
        return parse_flow(data, source)
    except FlowError as exc:
        raise FlowError(exc.file, exc.node, exc.message,
                        error_line(text, exc.node, exc.message)) from None


def load_named(name: str, directory: Path = FLOWS_DIR) -> Flow:
    """The flow ``<directory>/<name>.toml``; its ``name`` must match the file name. Its
    sub-flows are the files of the same directory (:func:`resolve`)."""
    flow = _load_file(name, directory)
    if not flow.calls:
        return flow

    def lookup(called: str) -> Flow | None:
        exists = (directory / f"{called}.toml").exists()
        return _load_file(called, directory) if exists else None

    return resolve(flow, lookup, Path(flow.source).read_text(encoding="utf-8"))


def _load_file(name: str, directory: Path) -> Flow:
    if not NODE_ID.match(name.replace("-", "_")):
        raise FlowError(name, None, "flow names are lower-case letters, digits, - and _")
    flow = load_flow(directory / f"{name}.toml")
    if flow.name != name:
        raise FlowError(flow.source, None, f"name {flow.name!r} differs from the file name")
    return flow


def resolve(flow: Flow, lookup: Callable[[str], Flow | None], text: str | None = None
            ) -> Flow:
    """``flow`` with the flows its ``subflow`` nodes run, and theirs, found by ``lookup``
    (a name → its flow, None: no such flow). A missing sub-flow or one leading back to a
    flow being run (recursion) is a :class:`FlowError` naming the node (and its line in
    ``text``, the flow's TOML, when given)."""
    try:
        return _resolve(flow, lookup, (flow.name,))
    except FlowError as exc:
        if text is None or exc.file != flow.source:
            raise
        raise FlowError(exc.file, exc.node, exc.message,
                        error_line(text, exc.node, exc.message)) from None


def _resolve(flow: Flow, lookup: Callable[[str], Flow | None], running: tuple[str, ...]
             ) -> Flow:
    subflows = []
    for name in flow.calls:
        node = next(n for n in flow.nodes if n.flow == name)
        if name in running:
            raise FlowError(flow.source, node.id, f"flow: {name!r} is already running "
                            f"({' -> '.join((*running, name))}): a flow cannot call itself")
        sub = lookup(name)
        if sub is None:
            raise FlowError(flow.source, node.id, f"flow: no flow {name!r}")
        if missing := sorted(set(sub.uses) - variables(flow)):
            raise FlowError(flow.source, node.id, f"flow: {name!r} uses "
                            f"{', '.join(missing)}, which this flow does not collect or set")
        subflows.append((name, _resolve(sub, lookup, (*running, name))))
    return replace(flow, subflows=tuple(subflows))


def parse_flow(data: Mapping[str, Any], source: str) -> Flow:
    unknown = set(data) - {"name", "start", "nodes", "description", "confirm_callback",
                           "uses"}
    if unknown:
        raise FlowError(source, None, f"unknown top-level keys: {', '.join(sorted(unknown))}")
    name, start, raw_nodes = data.get("name"), data.get("start"), data.get("nodes")
    if not isinstance(name, str) or not name:
        raise FlowError(source, None, "name: required string")
    if not isinstance(start, str):
        raise FlowError(source, None, "start: required node id")
    if not isinstance(raw_nodes, Mapping) or not raw_nodes:
        raise FlowError(source, None, "nodes: at least one [nodes.<id>] table is required")
    gate = data.get("confirm_callback")
    if gate is not None and not isinstance(gate, str):
        raise FlowError(source, None, "confirm_callback: expected a node id")
    uses = data.get("uses", [])
    if not isinstance(uses, list) or not all(isinstance(u, str) and FIELD.match(u)
                                             for u in uses):
        raise FlowError(source, None, "uses: expected a list of variable names")
    nodes = tuple(_parse_node(source, str(k), v) for k, v in raw_nodes.items())
    flow = Flow(name=name, start=start, nodes=nodes, source=source, confirm_callback=gate,
                uses=tuple(uses))
    _check_graph(flow)
    _check_gate(flow)
    return flow


def _check_gate(flow: Flow) -> None:
    gate = flow.confirm_callback
    if gate is None:
        return
    ids = {n.id for n in flow.nodes}
    if gate not in ids:
        raise FlowError(flow.source, None, f"confirm_callback: no node {gate!r}")
    node = flow.node(gate)
    if node.type != "confirm":
        raise FlowError(flow.source, gate, "confirm_callback must name a confirm node")
    if gate != flow.start:
        raise FlowError(flow.source, gate, "confirm_callback must be the start node: "
                        "nothing may run before the customer confirms")
    yes = flow.confirm_yes
    assert yes is not None
    if flow.node(yes).type in PASSED_THROUGH or yes == gate or yes in (node.choices[1][1],
                                                                        node.on_fail):
        raise FlowError(flow.source, gate, "yes: must lead to its own node that the call "
                        f"stops at (not {', '.join(sorted(PASSED_THROUGH))}), different "
                        "from no and on_fail")


def _parse_node(source: str, node_id: str, raw: Any) -> Node:
    def err(message: str) -> FlowError:
        return FlowError(source, node_id, message)

    if not NODE_ID.match(node_id):
        raise err("node ids are lower-case letters, digits and _")
    if not isinstance(raw, Mapping):
        raise err("expected a table")
    kind = raw.get("type")
    if kind not in KEYS:
        raise err(f"type: expected one of {', '.join(sorted(KEYS))}, got {kind!r}")
    required, optional = KEYS[kind]
    given = set(raw) - {"type"}
    if missing := required - given:
        raise err(f"missing required keys: {', '.join(sorted(missing))}")
    if unknown := given - required - optional:
        raise err(f"unknown keys for a {kind} node: {', '.join(sorted(unknown))}")
    r = _Reader(raw, err)
    node = Node(id=node_id, type=kind)
    values: dict[str, Any] = {
        "prompt": r.media("prompt", node.prompt),
        "next": r.target("next"),
        "field": r.field("field"),
        "max_length": r.integer("max_length", node.max_length, 1, 32),
        "min_length": r.integer("min_length", node.min_length, 0, 32),
        "terminator": r.choice_of("terminator", node.terminator, ("#", "*")),
        "timeout_s": float(r.integer("timeout_s", int(node.timeout_s), 1, 60)),
        "retries": r.integer("retries", node.retries, 0, 5),
        "invalid_prompt": r.media("invalid_prompt", node.invalid_prompt),
        "timeout_prompt": r.media("timeout_prompt", node.timeout_prompt),
        "on_fail": r.target("on_fail"),
        "fields": r.fields("fields"),
        "labels": r.labels("labels"),
        "category": r.string("category"),
        "target": r.string("target"),
        "on_busy": r.target("on_busy"),
        "busy_prompt": r.media("busy_prompt", node.busy_prompt),
        "group": r.name("group"),
        "advisor": r.code("advisor"),
        "queue_s": r.integer("queue_s", node.queue_s, 0, 3600),
        "list": r.choice_of("list", node.list, ("online", "all")),
        "values": r.templates("values"),
        "flow": r.flow_name("flow"),
        "max_s": r.integer("max_s", node.max_s, 1, 600),
        "silence_s": r.integer("silence_s", node.silence_s, 0, 60),
        "beep": r.boolean("beep", node.beep),
        "to": r.recipient("to"),
        "text": r.template("text"),
        "language": r.optional_choice("language", LANGUAGES),
        "url": r.url("url"),
        "sets": r.fields("sets"),
        "number": r.number("number"),
        "ring_s": r.integer("ring_s", node.ring_s, 5, 120),
    }
    values.update(_kind_values(kind, r, values))
    if values["min_length"] > values["max_length"]:
        raise err("min_length is greater than max_length")
    return Node(id=node_id, type=kind, **{k: v for k, v in values.items()
                                          if v is not None and k in _used(kind)})


def _kind_values(kind: str, r: _Reader, values: Mapping[str, Any]) -> dict[str, Any]:
    """What a node type adds to or checks in the common ``values``."""
    if kind == "menu":
        return {"choices": r.choices("choices")}
    if kind == "confirm":
        yes_key = r.choice_of("yes_key", "1", tuple(sorted(DTMF_KEYS)))
        no_key = r.choice_of("no_key", "2", tuple(sorted(DTMF_KEYS)))
        if yes_key == no_key:
            raise r.err("yes_key and no_key must differ")
        return {"choices": ((yes_key, r.target("yes")), (no_key, r.target("no")))}
    if kind == "advisor_code":   # the code is 4 digits; '#' ends it early, '*' clears it
        return {"field": "advisor_code", "max_length": 4, "min_length": 4}
    if kind == "connect" and (values["group"] is None) == (values["advisor"] is None):
        raise r.err("give one of group (a group's name) or advisor (an advisor's code)")
    if kind == "hours":
        return {"branches": (("open", r.target("open")), ("closed", r.target("closed")))}
    if kind == "webhook":
        return {"timeout_s": float(r.integer("timeout_s", 5, 1, 30))}
    if kind == "say" and (values["prompt"] == ()) == (values["text"] is None):
        raise r.err("give one of prompt (media) or text (spoken by the site's TTS)")
    if kind == "say" and values["language"] is not None and values["text"] is None:
        raise r.err("language: only with text")
    if kind == "set" and not values["values"]:
        raise r.err("values: set at least one variable")
    return {}


def _used(kind: str) -> set[str]:
    required, optional = KEYS[kind]
    used = (required | optional) - {"yes", "no", "yes_key", "no_key", "open", "closed"}
    if kind == "confirm":
        used.add("choices")
    if kind == "hours":
        used.add("branches")
    if kind == "advisor_code":
        used |= {"field", "max_length", "min_length"}
    return used


class _Reader:
    def __init__(self, raw: Mapping[str, Any], err: Any) -> None:
        self.raw = raw
        self.err = err

    def media(self, key: str, default: Media) -> Media:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.err(f"{key}: expected a list of media URIs")
        for v in value:
            if not MEDIA.match(v):
                raise self.err(f"{key}: {v!r} is not a media URI (sound:, digits:, number:, "
                               "characters:, tone:, recording:)")
        return tuple(value)

    def target(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and (not isinstance(value, str) or not NODE_ID.match(value)):
            raise self.err(f"{key}: expected a node id, got {value!r}")
        return value

    def string(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and (not isinstance(value, str) or not FIELD.match(value)):
            raise self.err(f"{key}: expected a lower-case identifier, got {value!r}")
        return value

    def field(self, key: str) -> str | None:
        return self.string(key)

    def name(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 64):
            raise self.err(f"{key}: expected a name of 1 to 64 characters, got {value!r}")
        return value

    def code(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and (not isinstance(value, str) or not ADVISOR_CODE.match(value)):
            raise self.err(f"{key}: expected a 4-digit advisor code as a string, got {value!r}")
        return value

    def flow_name(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and (not isinstance(value, str) or not FLOW_NAME.match(value)):
            raise self.err(f"{key}: expected a flow name (lower-case letters, digits, - and _),"
                           f" got {value!r}")
        return value

    def number(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and (not isinstance(value, str) or not E164_NUMBER.match(value)):
            raise self.err(f"{key}: expected an E.164 number such as \"+819012345678\", "
                           f"got {value!r}")
        return value

    def recipient(self, key: str) -> str | None:
        value = self.raw.get(key)
        return value if value == "caller" else self.number(key)

    def url(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        parsed = urlsplit(value) if isinstance(value, str) else None
        if parsed is None or parsed.scheme not in ("https", "http") or not parsed.hostname \
                or len(value) > 2000:
            raise self.err(f"{key}: expected an http(s) URL")
        return str(value)

    def template(self, key: str, raw: Any = None) -> str | None:
        value = self.raw.get(key) if raw is None else raw
        if value is None:
            return None
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEMPLATE:
            raise self.err(f"{key}: expected a text of 1 to {MAX_TEMPLATE} characters")
        for name in PLACEHOLDER.findall(value):
            if not FIELD.match(name.removesuffix(DIGITS_FORMAT)):
                raise self.err(f"{key}: {{{name}}} is not a variable name")
        return value

    def templates(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self.raw.get(key, {})
        if not isinstance(value, Mapping):
            raise self.err(f"{key}: expected a table of variable = text")
        out = []
        for name, text in value.items():
            if not FIELD.match(name):
                raise self.err(f"{key}: {name!r} is not a variable name")
            if name in BUILTINS:
                raise self.err(f"{key}: {name!r} is set by the call itself")
            if text == "":
                out.append((name, ""))
                continue
            template = self.template(f"{key}.{name}", text)
            assert template is not None
            out.append((name, template))
        return tuple(out)

    def optional_choice(self, key: str, allowed: tuple[str, ...]) -> str | None:
        return None if self.raw.get(key) is None else self.choice_of(key, "", allowed)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self.err(f"{key}: expected true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.err(f"{key}: expected an integer in {lo}..{hi}, got {value!r}")
        return value

    def choice_of(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.raw.get(key, default)
        if value not in allowed:
            raise self.err(f"{key}: expected one of {' '.join(allowed)}, got {value!r}")
        return str(value)

    def fields(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(
                isinstance(v, str) and FIELD.match(v) for v in value):
            raise self.err(f"{key}: expected a list of field names")
        if key in self.raw and not value:
            raise self.err(f"{key}: must not be empty")
        return tuple(value)

    def labels(self, key: str) -> tuple[tuple[str, Media], ...]:
        value = self.raw.get(key, {})
        if not isinstance(value, Mapping):
            raise self.err(f"{key}: expected a table of field = [media]")
        return tuple((str(k), _Reader(value, self.err).media(str(k), ())) for k in value)

    def choices(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self.raw.get(key)
        if not isinstance(value, Mapping) or not value:
            raise self.err(f"{key}: expected a table of key = node")
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            if k not in DTMF_KEYS:
                raise self.err(f"{key}: key {k!r} is not a single DTMF key (0-9 * #)")
            if not isinstance(v, str) or not NODE_ID.match(v):
                raise self.err(f"{key}.{k}: expected a node id, got {v!r}")
            out.append((k, v))
        return tuple(out)


def _targets(node: Node) -> list[tuple[str, str]]:
    """(key, target) pairs of a node's outgoing edges."""
    edges = [(f"choices.{k}", v) for k, v in node.choices]
    edges += [(k, v) for k, v in (("next", node.next), ("on_fail", node.on_fail),
                                  ("on_busy", node.on_busy)) if v]
    return edges + list(node.branches)


def variables(flow: Flow) -> frozenset[str]:
    """The variables ``flow`` collects or sets, and those every call has."""
    names = set(BUILTINS) | set(flow.uses)
    for node in flow.nodes:
        if node.type in ("menu", "digits", "advisor_code", "record") and node.field:
            names.add(node.field)
        names.update(name for name, _ in node.values)
        names.update(node.sets)
    return frozenset(names)


def _templates(node: Node) -> list[tuple[str, str]]:
    """(key, text) of everything of ``node`` in which ``{variable}`` is replaced."""
    media = [("prompt", m) for m in node.prompt] + [(f"labels.{f}", m) for f, ms in node.labels
                                                    for m in ms]
    texts = [(f"values.{name}", text) for name, text in node.values]
    return media + texts + ([("text", node.text)] if node.text else [])


def _check_graph(flow: Flow) -> None:
    ids = {n.id for n in flow.nodes}
    if flow.start not in ids:
        raise FlowError(flow.source, None, f"start: no node {flow.start!r}")
    collected = variables(flow)
    for node in flow.nodes:
        for key, target in _targets(node):
            if target not in ids:
                raise FlowError(flow.source, node.id, f"{key}: no node {target!r}")
        for f in node.fields:
            if f not in collected:
                raise FlowError(flow.source, node.id,
                                f"fields: {f!r} is not collected or set by any node")
        _check_variables(flow, node, collected)
        for f, _ in node.labels:
            if f not in node.fields:
                raise FlowError(flow.source, node.id, f"labels: {f!r} is not in fields")
    _check_reachable(flow, ids)
    _check_loops(flow)
    _check_exits(flow)


def _check_variables(flow: Flow, node: Node, collected: frozenset[str]) -> None:
    """Every ``{name}`` of ``node``'s templates is a variable of ``flow``; ``{name:digits}``
    only in a say node's text."""
    for key, text in _templates(node):
        for name in PLACEHOLDER.findall(text):
            if name.endswith(DIGITS_FORMAT) and (node.type, key) == ("say", "text"):
                name = name.removesuffix(DIGITS_FORMAT)
            elif name.endswith(DIGITS_FORMAT):
                raise FlowError(flow.source, node.id, f"{key}: {{{name}}}: "
                                f"{DIGITS_FORMAT} is only for a say node's text")
            if name not in collected:
                raise FlowError(flow.source, node.id, f"{key}: {{{name}}} is not a "
                                "variable of this flow (collected, set or caller)")


def _check_reachable(flow: Flow, ids: set[str]) -> None:
    seen, todo = {flow.start}, [flow.start]
    while todo:
        for _, target in _targets(flow.node(todo.pop())):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    if unreachable := sorted(ids - seen):
        raise FlowError(flow.source, unreachable[0], "not reachable from start")


def _check_loops(flow: Flow) -> None:
    for node in flow.nodes:   # chains of nodes that never wait must end
        hop, path = node, []
        while hop.type in INSTANT_TYPES and hop.next:
            if hop.id in path:
                raise FlowError(flow.source, node.id,
                                f"{', '.join(sorted(INSTANT_TYPES))} nodes form a loop")
            path.append(hop.id)
            hop = flow.node(hop.next)


def _check_exits(flow: Flow) -> None:
    trapped = without_exit({n.id: [t for _, t in _targets(n)] for n in flow.nodes},
                           {n.id for n in flow.nodes if n.type in EXIT_TYPES})
    if trapped:
        raise FlowError(flow.source, trapped[0], f"loop without exit: from {', '.join(trapped)} "
                        "no path reaches a hangup, operator, transfer or return node")
