"""Callback-site settings: the sections every site has (:class:`shared.site.SiteCommon`)
plus ``[callback]``, ``[guard]`` (:mod:`callback_server.guard.settings`) and ``[billing]``
(:mod:`billing.settings`).

Read from one TOML file with ``CALLBACK__SECTION__KEY`` environment overrides
(``shared.config``). ``deploy/callback.example.toml`` shows every key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from billing.settings import BillingSettings
from callback_server.dialer_messages import EDGE_TRUNK, Route
from callback_server.guard.settings import GuardSettings
from callback_server.ivr import UNAVAILABLE
from callback_server.ivr_flow import FLOWS_DIR, Flow, FlowError, load_named
from callback_server.worker import WorkerSettings
from ivr_platform.guidance import GUIDANCE_PREFIX, GuidanceLibrary, parse_ref, plays
from ivr_platform.media_config import MediaSettings
from ivr_platform.notify_config import NotifySettings, merchant_languages
from ivr_platform.prompts import SYSTEM_PROMPTS
from ivr_platform.sms_config import SmsSettings
from ivr_platform.tts import EngineMissing, default_voices
from shared.capacity import CapacitySettings, cap_problems
from shared.config import (
    AriSettings,
    ConfigError,
    DatabaseSettings,
    HttpSettings,
    Merchant,
    Section,
    SigningSettings,
    TlsSettings,
    load,
    root,
)
from shared.language import Language
from shared.link_policy import PeerSettings
from shared.outbox_operator import OperatorSettings
from shared.site import RatesSettings, SiteCommon

ENV_PREFIX = "CALLBACK"
DEFAULT_DATABASE = "cbgw_callback"
DEFAULT_PORT = 9443
#: ``sound:cbgw/<name>``: a system prompt (:data:`ivr_platform.prompts.SYSTEM_PROMPTS`,
#: installed by ``deploy/asterisk`` in every language) or one in ``[callback] prompts_dir``
PROMPT_PREFIX = "sound:cbgw/"


@dataclass(frozen=True, slots=True)
class StaticRoute:
    """A fallback route used when routing_rates is disabled or has no answer."""

    carrier_id: str
    dial_string: str        # "PJSIP/{digits}@carrier-b": {digits} = E.164 digits without +

    def route(self, digits: str) -> Route:
        return Route(self.carrier_id, self.dial_string.format(digits=digits, e164="+" + digits))


@dataclass(frozen=True, slots=True)
class CallbackBehaviour:
    worker: WorkerSettings
    lease_s: int
    flows_dir: Path
    static_routes: tuple[StaticRoute, ...]
    #: more prompts than the system ones: ``<prompts_dir>/<language>/<name>.*``
    prompts_dir: Path | None = None
    #: Asterisk's log of answers (``cbgw-answers.csv`` in its astlogdir, as this host sees
    #: it; :mod:`callback_server.answerlog`); None: an answer dies with a killed Asterisk
    answer_log: Path | None = None

    @classmethod
    def parse(cls, s: Section) -> CallbackBehaviour:
        lease_s = s.int("lease_s", 30, min=5, max=50)
        heartbeat = float(s.decimal("heartbeat_s", "10", min=Decimal(1)))
        if heartbeat * 2 > lease_s:
            raise s.error("heartbeat_s", f"must be at most half of lease_s ({lease_s})")
        trunks = s.str_list("edge_trunks", (EDGE_TRUNK,))
        if not trunks or len(set(trunks)) < len(trunks) \
                or not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", t) for t in trunks):
            raise s.error("edge_trunks", "expected distinct endpoint names of the callback "
                          "Asterisk's pjsip.conf, at least one")
        operator = s.str("operator_endpoint", "PJSIP/{operator}@{trunk}")
        if len(trunks) > 1 and "{trunk}" not in operator:
            raise s.error("operator_endpoint", "needs {trunk} to reach the operator over each "
                          "of edge_trunks")
        routes = []
        for r in s.sections("routes"):
            dial = r.str("dial_string")
            if "{digits}" not in dial and "{e164}" not in dial:
                raise r.error("dial_string", "needs {digits} or {e164}")
            routes.append(StaticRoute(r.str("carrier", pattern=r"[a-z0-9][a-z0-9-]*"), dial))
        return cls(
            worker=WorkerSettings(
                max_calls=s.int("max_calls", 50, min=1, max=10000),
                sweep_s=float(s.decimal("sweep_s", "5", min=Decimal("0.5"))),
                heartbeat_s=heartbeat,
                drain_s=float(s.decimal("drain_s", "30", min=Decimal(0))),
                operator_endpoint=operator, edge_trunks=trunks),
            lease_s=lease_s,
            flows_dir=s.path_value("flows_dir") if s.has("flows_dir") else FLOWS_DIR,
            static_routes=tuple(routes),
            prompts_dir=s.path_value("prompts_dir") if s.has("prompts_dir") else None,
            answer_log=s.path_value("answer_log") if s.has("answer_log") else None)


@dataclass(frozen=True, slots=True)
class CallbackSettings:
    path: Path
    database: DatabaseSettings
    http: HttpSettings
    tls: TlsSettings | None            # None: plain HTTP (development only)
    require_client_cert: bool
    ari: AriSettings
    signing: SigningSettings
    peer: PeerSettings
    merchants: tuple[Merchant, ...]
    rates: RatesSettings
    operator: OperatorSettings
    callback: CallbackBehaviour
    flows: Mapping[str, Flow]
    guard: GuardSettings = field(default_factory=GuardSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    billing: BillingSettings = field(default_factory=BillingSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    capacity: CapacitySettings | None = None
    sms: SmsSettings | None = None      # [sms]: what a flow's sms node sends through

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None, *,
             check_files: bool = False) -> CallbackSettings:
        """The settings; with ``check_files``, also every file ``serve`` will open loads
        and every prompt the merchants' flows play is there in the merchant's language (a
        system prompt, or one in ``[callback] prompts_dir``)."""
        source = load(path, ENV_PREFIX, environ)
        top = root(source)
        common = SiteCommon.parse(top, path, app="callback", default_database=DEFAULT_DATABASE,
                                  default_port=DEFAULT_PORT, require_client_cert=True)
        merchants = common.merchants
        guard = GuardSettings.parse(top.section("guard"))
        billing = BillingSettings.parse(top.section("billing"), [m.id for m in merchants])
        behaviour = CallbackBehaviour.parse(top.section("callback"))
        behaviour = replace(behaviour, worker=replace(behaviour.worker,
                                                      max_call_s=guard.max_call_s))
        flows: dict[str, Flow] = {}
        for i, m in enumerate(merchants):
            if m.ivr_flow not in flows:
                try:
                    flows[m.ivr_flow] = load_named(m.ivr_flow, behaviour.flows_dir)
                except FlowError as exc:
                    raise top.error(f"merchants[{i}].ivr_flow", str(exc)) from None
                if gate := _gate_problem(guard, flows[m.ivr_flow]):
                    raise top.error(f"merchants[{i}].ivr_flow", gate)
        media = MediaSettings.parse(top.section("media"), (m.id for m in merchants))
        notify = NotifySettings.parse(top.section("notify"), merchant_languages(merchants))
        sms = SmsSettings.parse(top.section("sms"), (m.id for m in merchants))
        source.check_unknown()
        if check_files:
            source.refuse(common.file_problems() + media.file_problems()
                          + _prompt_problems(merchants, flows, behaviour.prompts_dir)
                          + _guidance_problems(merchants, flows, media)
                          + _verb_problems(merchants, flows, media, sms)
                          + cap_problems(common.capacity, "guard.caps.global.channels",
                                         guard.caps.global_limits.channels))
        return cls(**common.fields(), callback=behaviour, flows=flows, guard=guard,
                   media=media, billing=billing, notify=notify, sms=sms)

    @classmethod
    def load_checked(cls, path: Path) -> CallbackSettings:
        """For ``check`` and ``serve``: :meth:`load` with the files checked."""
        return cls.load(path, check_files=True)

    def merchant(self, merchant_id: str) -> Merchant:
        for m in self.merchants:
            if m.id == merchant_id:
                return m
        raise ConfigError(f"{self.path}: no merchant {merchant_id!r}")

    def stored_flow_problems(self, merchant_id: str, flow: Flow) -> list[str]:
        """Why the site refuses ``flow`` as one of the merchant's stored flows although it
        validates: as ``check`` does for a configured flow, a confirm gate missing while
        ``[guard] require_confirm``, prompts it plays that are not there in the merchant's
        language, guidance not the merchant's or not uploaded, a record, sms or say node
        the site cannot run (its sub-flows' too, once resolved)."""
        merchant = replace(self.merchant(merchant_id), ivr_flow=flow.name)
        flows = {flow.name: flow}
        gate = _gate_problem(self.guard, flow)
        problems = [gate] if gate else []
        return problems + [p for _, p in _prompt_problems([merchant], flows,
                                                          self.callback.prompts_dir)
                           + _guidance_problems([merchant], flows, self.media)
                           + _verb_problems([merchant], flows, self.media, self.sms)]

    def flows_playing(self, merchant_id: str, media: str,
                      stored: Mapping[str, Flow] | None = None) -> list[str]:
        """The merchant's configured flow and its ``stored`` flows (label → flow) that play
        ``media`` (a guidance in use is not deleted)."""
        flow = next((m.ivr_flow for m in self.merchants if m.id == merchant_id), None)
        flows = ({flow: self.flows[flow]} if flow is not None else {}) | dict(stored or {})
        return [label for label, f in flows.items() if media in _media(f)]

    def flows_connecting(self, merchant_id: str, group: str,
                         stored: Mapping[str, Flow] | None = None) -> list[str]:
        """The merchant's configured flow and its ``stored`` flows (label → flow) whose
        ``connect`` nodes ring the group named ``group``, as ``<label> node <id>`` (a
        group a flow rings is not deleted)."""
        flow = next((m.ivr_flow for m in self.merchants if m.id == merchant_id), None)
        flows = ({flow: self.flows[flow]} if flow is not None else {}) | dict(stored or {})
        return [f"{label} node {node}" for label, f in flows.items()
                for node in _connecting(f, group)]


def _connecting(flow: Flow, group: str) -> list[str]:
    """The ids of the ``connect`` nodes of ``flow`` and its sub-flows ringing ``group``."""
    return ([n.id for n in flow.nodes if n.type == "connect" and n.group == group]
            + [f"{name}.{node}" for name, sub in flow.subflows
               for node in _connecting(sub, group)])


def _gate_problem(guard: GuardSettings, flow: Flow) -> str | None:
    if guard.require_confirm and flow.confirm_callback is None:
        return (f"flow {flow.name!r} has no confirm_callback gate (press 1 before anything "
                "else); [guard] require_confirm = true requires one")
    return None


def _prompt_problems(merchants: Sequence[Merchant], flows: Mapping[str, Flow],
                     prompts_dir: Path | None) -> list[tuple[str, str]]:
    """``(merchants[i].ivr_flow, problem)`` for each ``sound:cbgw/<name>`` its flow plays
    that is neither a system prompt nor in ``prompts_dir/<language>/`` as ``<name>.*`` (a
    recording or its text), for the merchant's language."""
    problems = []
    seen: set[tuple[str, Language]] = set()
    for i, m in enumerate(merchants):
        if (m.ivr_flow, m.language) in seen:
            continue
        seen.add((m.ivr_flow, m.language))
        own = prompts_dir / m.language.value if prompts_dir is not None else None
        have = set(SYSTEM_PROMPTS) | (
            {p.stem for p in own.iterdir()} if own is not None and own.is_dir() else set())
        missing = sorted({media.removeprefix(PROMPT_PREFIX) for media in _media(flows[m.ivr_flow])
                          if media.startswith(PROMPT_PREFIX)} - have)
        if missing:
            where = f"the system prompts or {own}" if own is not None else "the system prompts"
            problems.append((f"merchants[{i}].ivr_flow",
                             f"flow {m.ivr_flow!r} plays prompts in {m.language.value!r} "
                             f"not in {where} ([callback] prompts_dir): {', '.join(missing)}"))
    return problems


def _guidance_problems(merchants: Sequence[Merchant], flows: Mapping[str, Flow],
                       media: MediaSettings) -> list[tuple[str, str]]:
    """``(merchants[i].ivr_flow, problem)`` for each ``sound:cbgw-guidance/<merchant>/<name>``
    its flow plays that is another merchant's, malformed, or not uploaded."""
    library = GuidanceLibrary(media.guidance_dir) if media.guidance_dir is not None else None
    problems = []
    for i, m in enumerate(merchants):
        for played in sorted(p for p in _media(flows[m.ivr_flow])
                             if p.startswith(GUIDANCE_PREFIX)):
            ref = parse_ref(played)
            if ref is None:
                problem = "is not sound:cbgw-guidance/<merchant>/<name>"
            elif ref[0] != m.id:
                problem = f"is merchant {ref[0]!r}'s guidance, not {m.id!r}'s"
            elif library is None:
                problem = "is a guidance, but [media] guidance_dir is not set"
            elif not plays(library.files(*ref), m.language):
                problem = f"is not uploaded (no {library.wav(*ref)})"
            else:
                continue
            problems.append((f"merchants[{i}].ivr_flow",
                             f"flow {m.ivr_flow!r} plays {played}, which {problem}"))
    return problems


def _media(flow: Flow) -> set[str]:
    """Everything ``flow`` can play."""
    played: set[str] = set()
    for node in flow.nodes:
        played.update(node.prompt, *(media for _, media in node.labels))
        if node.waits_for_input:
            played.update(node.invalid_prompt, node.timeout_prompt)
        if node.on_busy is not None:      # a consultation node
            played.update(node.busy_prompt)
        if node.type in ("advisor_code", "advisor_list"):
            played.update(*UNAVAILABLE.values())
    for _, sub in flow.subflows:          # what its sub-flows play is the flow's too
        played |= _media(sub)
    return played


def _verb_problems(merchants: Sequence[Merchant], flows: Mapping[str, Flow],
                   media: MediaSettings, sms: SmsSettings | None) -> list[tuple[str, str]]:
    """``(merchants[i].ivr_flow, problem)`` for a verb its flow (or a sub-flow) uses that
    the site cannot run: ``record`` without somewhere to keep recordings, ``sms``
    without ``[sms]``, ``say`` with a text the site cannot render."""
    problems = []
    for i, m in enumerate(merchants):
        types = _node_types(flows[m.ivr_flow])
        if "record" in types and (media.recordings_dir is None
                                  or media.asterisk_recordings_dir is None):
            problems.append((f"merchants[{i}].ivr_flow",
                             f"flow {m.ivr_flow!r} records (a record node), but [media] "
                             "recordings_dir and asterisk_recordings_dir are not both set"))
        if "sms" in types and sms is None:
            problems.append((f"merchants[{i}].ivr_flow",
                             f"flow {m.ivr_flow!r} sends SMS (an sms node), but [sms] is "
                             "not set"))
        problems += [(f"merchants[{i}].ivr_flow", problem) for problem
                     in speech_problems(flows[m.ivr_flow], m.language, media)]
    return problems


def speech_problems(flow: Flow, language: Language, media: MediaSettings) -> list[str]:
    """Why the site cannot speak the texts of ``flow``'s say nodes: nowhere to render them
    (``[media] guidance_dir``), or the TTS engine of a language not installed."""
    spoken = _spoken_languages(flow, language)
    if not spoken:
        return []
    if media.guidance_dir is None:
        return [f"flow {flow.name!r} speaks a text (a say node), but [media] guidance_dir "
                "(where the callback Asterisk reads it) is not set"]
    problems = []
    voices = default_voices()
    for spoken_in in sorted(spoken):
        try:
            voices[spoken_in].check()
        except EngineMissing as exc:
            problems.append(f"flow {flow.name!r} speaks {spoken_in.value!r} text (a say "
                            f"node), but {exc}")
    return problems


def _spoken_languages(flow: Flow, language: Language) -> set[Language]:
    """The languages ``flow``'s say nodes (and its sub-flows') speak their texts in."""
    spoken = {Language(node.language or language.value) for node in flow.nodes
              if node.type == "say" and node.text is not None}
    for _, sub in flow.subflows:
        spoken |= _spoken_languages(sub, language)
    return spoken


def _node_types(flow: Flow) -> set[str]:
    types = {node.type for node in flow.nodes}
    for _, sub in flow.subflows:
        types |= _node_types(sub)
    return types
