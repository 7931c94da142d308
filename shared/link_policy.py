"""Which route(s) of the link carry which kind of message, and how routes are watched.

Parsed from a site's ``[peer]`` section::

    [peer]
    routes = [{name = "internet", url = "https://callback.example:9443"},
              {name = "leased",   url = "https://10.20.0.2:9443"}]
    # ([[peer.routes]] tables are the same thing in TOML)

    [peer.policy]
    default = "primary_backup"                 # routes in the order listed
    cdr = "both"                               # send on every route at once
    consultation = "both"                      # (records travel like CDRs)
    billing = {mode = "pinned", route = "leased"}
    request_info = {mode = "primary_backup", order = ["leased", "internet"]}

    [peer.health]
    path = "/healthz"       # unsigned GET, over the same mutual-TLS session
    interval_s = 5.0        # 0 disables active probing (passive quarantine only)
    timeout_s = 5.0         # what a loaded peer still meets
    fall = 3                # consecutive failures (probes or deliveries) before down
    rise = 2                # consecutive successes before it is up again (failback)

Modes (:class:`LinkMode`):

* ``primary_backup``: the first *healthy* route in order; the next ones if it
  fails. A route is down after ``fall`` consecutive failures (probes or
  deliveries that got no answer), and up again after ``rise`` consecutive
  successes: automatic failback without flapping on one slow answer (a refused or
  unroutable connection needs no streak: nothing listens there). Any HTTP
  answer is a success of the route: the peer answered over it (a busy peer
  answering 503 is the peer's state, not the route's).
* A link of one route never takes it out of use: there is nowhere else to
  send, so messages keep going and the outbox's retries do the rest.
* ``both``: POST on every listed route concurrently; delivered when any acks.
  The receiver dedupes by message id (:func:`shared.link.accept_once`).
* ``pinned``: one route only. If it is down the message waits in the outbox
  (billing data that must stay on the leased line).

A kind without an entry uses ``default``. Names of kinds are the outbox's
``kind`` column (``callback_request``, ``cdr``, ``request_info``,
``callback_status``, ``consultation`` ...).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shared.config import ConfigError, LinkRoute, Section

log = logging.getLogger("shared.link.routes")

_RESERVED = frozenset({"default"})


class LinkMode(enum.StrEnum):
    PRIMARY_BACKUP = "primary_backup"
    BOTH = "both"
    PINNED = "pinned"


@dataclass(frozen=True, slots=True)
class KindPolicy:
    """How one kind of message travels. ``routes`` is the order (or set) of route names;
    empty means every configured route in configured order."""

    mode: LinkMode = LinkMode.PRIMARY_BACKUP
    routes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode is LinkMode.PINNED and len(self.routes) != 1:
            raise ValueError("a pinned policy names exactly one route")

    @classmethod
    def pinned(cls, route: str) -> KindPolicy:
        return cls(LinkMode.PINNED, (route,))

    def describe(self) -> str:
        return self.mode.value + (f"({','.join(self.routes)})" if self.routes else "")


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Active probing of each route: ``GET <route url><path>``; any HTTP answer is up."""

    path: str = "/healthz"
    interval_s: float = 5.0
    timeout_s: float = 5.0
    fall: int = 3
    rise: int = 2

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    @classmethod
    def parse(cls, s: Section) -> HealthSettings:
        d = cls()
        interval = float(s.decimal("interval_s", str(d.interval_s)))
        timeout = float(s.decimal("timeout_s", str(d.timeout_s)))
        if interval and not 0 < timeout <= interval:
            raise s.error("timeout_s", "must be above 0 and at most interval_s")
        return cls(path=s.str("path", d.path, pattern=r"/[A-Za-z0-9_./-]*"),
                   interval_s=interval, timeout_s=timeout,
                   fall=s.int("fall", d.fall, min=1, max=100),
                   rise=s.int("rise", d.rise, min=1, max=100))


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """Per-kind policies over a fixed set of route names."""

    default: KindPolicy = KindPolicy()
    kinds: Mapping[str, KindPolicy] = field(default_factory=dict)
    health: HealthSettings = HealthSettings()

    def for_kind(self, kind: str | None) -> KindPolicy:
        if kind is None:
            return self.default
        return self.kinds.get(kind, self.default)

    def check_routes(self, route_names: Sequence[str]) -> None:
        """Raise ``ValueError`` if a policy names a route that is not configured."""
        known = set(route_names)
        for kind, policy in [("default", self.default), *self.kinds.items()]:
            unknown = [r for r in policy.routes if r not in known]
            if unknown:
                raise ValueError(f"policy for {kind!r} names unknown route(s) "
                                 f"{', '.join(unknown)}; configured: {', '.join(route_names)}")

    @classmethod
    def parse(cls, s: Section, route_names: Sequence[str]) -> LinkPolicy:
        default = KindPolicy()
        kinds: dict[str, KindPolicy] = {}
        for key in s.keys():
            policy = _parse_kind(s, key, s.data[key], route_names)
            if key in _RESERVED:
                default = policy
            else:
                if not key.replace("_", "").replace("-", "").isalnum():
                    raise s.error(key, "a message kind is letters, digits, _ and -")
                kinds[key] = policy
        return cls(default=default, kinds=kinds)


def _parse_kind(s: Section, key: str, value: Any, route_names: Sequence[str]) -> KindPolicy:
    routes: tuple[str, ...]
    if isinstance(value, str):
        mode_text, routes = value, ()
    elif isinstance(value, Mapping):
        sub = s.section(key)
        mode_text = sub.str("mode")
        if sub.has("route") and sub.has("order"):
            raise sub.error("route", "give either route or order, not both")
        if sub.has("route"):
            routes = (sub.str("route"),)
        else:
            routes = sub.str_list("order")
    else:
        raise s.error(key, 'expected a mode string or {mode = "...", route = "..."}')
    try:
        mode = LinkMode(mode_text)
    except ValueError:
        allowed = ", ".join(m.value for m in LinkMode)
        raise s.error(key, f"expected one of {allowed}, got {mode_text!r}") from None
    unknown = [r for r in routes if r not in route_names]
    if unknown:
        raise s.error(key, f"unknown route {unknown[0]!r}; configured: {', '.join(route_names)}")
    if mode is LinkMode.PINNED and len(routes) != 1:
        raise s.error(key, 'pinned needs exactly one route: {mode = "pinned", route = "..."}')
    if len(set(routes)) != len(routes):
        raise s.error(key, "a route is listed twice")
    return KindPolicy(mode, tuple(routes))


#: Messages one batch request of the link may carry (``shared.link.parse_batch``).
BATCH_MAX_MESSAGES = 100
DEFAULT_BATCH_MESSAGES = 32
#: Claims (of up to 64 messages) whose deliveries one outbox relay keeps under way at once
#: while a backlog lasts. Sized for the link's bandwidth-delay product: 16 × 64 = 1,024
#: messages in flight carry 5,000 messages/s over a round trip of up to ≈ 200 ms (the
#: 120 ms between Tokyo and the US plus the peer's answer); on this 2-core machine 8 was
#: window-bound and 32 slower than 16 (bench.relay_drain; ``git show 7d988d0:bench/README.md``).
DEFAULT_PASSES_IN_FLIGHT = 16
MAX_PASSES_IN_FLIGHT = 64


#: a site's certificate identity: its name, as ``shared.pki`` issues it (CN and DNS name)
IDENTITY_PATTERN = r"[a-z0-9][a-z0-9.-]{0,62}"


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """The ``[peer]`` section: routes to the other site, per-kind policy, health probes."""

    routes: tuple[LinkRoute, ...]
    policy: LinkPolicy
    #: most messages the outbox relay puts in one batch request (1: every message alone)
    batch_messages: int = DEFAULT_BATCH_MESSAGES
    #: claims whose deliveries the outbox relay keeps under way at once (a backlog)
    passes_in_flight: int = DEFAULT_PASSES_IN_FLIGHT
    #: the peer site's certificate identity (its name, as ``shared.pki`` issues it: CN and
    #: a DNS name): the only client the link routes take, the only server the client trusts
    identity: str | None = None

    @classmethod
    def parse(cls, s: Section, *, default_identity: str | None = None) -> PeerSettings:
        routes = tuple(LinkRoute.parse(r) for r in s.sections("routes"))
        if not routes:
            raise s.error("routes", "at least one route to the peer site is needed")
        names = [r.name for r in routes]
        if len(set(names)) != len(names):
            raise s.error("routes", "route names must be unique")
        policy = LinkPolicy.parse(s.section("policy"), names)
        health = HealthSettings.parse(s.section("health"))
        return cls(routes=routes, policy=LinkPolicy(policy.default, policy.kinds, health),
                   batch_messages=s.int("batch_messages", DEFAULT_BATCH_MESSAGES, min=1,
                                        max=BATCH_MAX_MESSAGES),
                   passes_in_flight=s.int("passes_in_flight", DEFAULT_PASSES_IN_FLIGHT, min=1,
                                          max=MAX_PASSES_IN_FLIGHT),
                   identity=s.str("identity", default_identity, pattern=IDENTITY_PATTERN)
                   if default_identity or s.has("identity") else None)


# --- route health: pure state, no I/O ----------------------------------------------------


@dataclass
class RouteStatus:
    """What we know about one route: up or down, and counters for ``/healthz`` and tests."""

    name: str
    up: bool = True
    changed_at: float = 0.0       # monotonic time of the last up/down change
    failed_at: float = 0.0        # monotonic time of the last failure (delivery or probe)
    ok_streak: int = 0            # consecutive successes (probes, answered deliveries)
    fail_streak: int = 0          # consecutive failures (probes, unanswered deliveries)
    probes: int = 0
    sent: int = 0                 # POSTs attempted on this route
    delivered: int = 0            # POSTs the peer acknowledged on this route
    failures: int = 0             # transport errors, 5xx and 429
    last_error: str | None = None


class RouteBook:
    """Health of each route and the plan for a message kind.

    A route goes *down* after ``fall`` consecutive failures (a probe or a
    delivery without an answer: transport error, timeout) and *up* again after
    ``rise`` consecutive successes (any answer of the peer). Without active
    probing, a down route is tried last for ``quarantine_s`` and then first
    again (passive failback). The only route of a link is never down.
    """

    def __init__(self, routes: Sequence[LinkRoute], policy: LinkPolicy, *,
                 quarantine_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        policy.check_routes([r.name for r in routes])
        self.routes = tuple(routes)
        self.policy = policy
        self.quarantine_s = quarantine_s
        self.clock = clock
        self._by_name = {r.name: r for r in routes}
        self._status = {r.name: RouteStatus(r.name) for r in routes}
        self._alone = len(self.routes) == 1

    def is_sick(self, name: str) -> bool:
        st = self._status[name]
        if st.up:
            return False
        if self.policy.health.enabled:
            return True
        return self.clock() - st.failed_at < self.quarantine_s

    def plan(self, kind: str | None) -> tuple[LinkMode, list[LinkRoute]]:
        """The mode for ``kind`` and the routes to use, in the order to try them."""
        kp = self.policy.for_kind(kind)
        names = kp.routes or tuple(r.name for r in self.routes)
        routes = [self._by_name[n] for n in names]
        if kp.mode is LinkMode.PRIMARY_BACKUP:
            routes.sort(key=lambda r: self.is_sick(r.name))  # stable: preferred order first
        return kp.mode, routes

    def attempt(self, name: str) -> None:
        self._status[name].sent += 1

    def delivered(self, name: str) -> None:
        """The peer acknowledged a message on this route."""
        self._status[name].delivered += 1
        self.reachable(name)

    def reachable(self, name: str) -> None:
        """The peer answered on this route (even if it refused the message, or was busy)."""
        st = self._status[name]
        st.last_error = None
        self._observe(st, True, "the peer answered")

    def failed(self, name: str, error: str, *, refused: bool = False) -> None:
        """A delivery on this route got no answer (transport error, timeout).

        ``refused``: the connection itself was refused or unroutable (nothing listens
        there, no route to the host). That is the route's state, not a slow machine's,
        so the route is down at once rather than after ``fall`` of them."""
        st = self._status[name]
        st.failures += 1
        self._observe(st, False, error, refused=refused)

    def probed(self, name: str, ok: bool, detail: str = "", *, refused: bool = False) -> None:
        st = self._status[name]
        st.probes += 1
        self._observe(st, ok, detail or ("answered" if ok else "failed"), refused=refused)

    def _observe(self, st: RouteStatus, ok: bool, detail: str, *, refused: bool = False
                 ) -> None:
        """One success or failure of the route: up or down only after a streak of them
        (a refused connection needs no streak)."""
        health = self.policy.health
        if ok:
            st.ok_streak += 1
            st.fail_streak = 0
            if not st.up and st.ok_streak >= health.rise:
                self._set(st, up=True, why=f"{st.ok_streak} successes")
            return
        st.fail_streak += 1
        st.ok_streak = 0
        st.failed_at = self.clock()
        st.last_error = detail
        if st.up and st.fail_streak == health.fall and self._alone:
            log.warning("link route %s failed %d times in a row (%s); it is the only "
                        "route, so it stays in use", st.name, st.fail_streak, detail[:300])
        elif st.up and (refused or st.fail_streak >= health.fall) and not self._alone:
            self._set(st, up=False, why=f"{st.fail_streak} failures: {detail}")

    def _set(self, st: RouteStatus, *, up: bool, why: str) -> None:
        if st.up == up:
            return
        st.up = up
        st.changed_at = self.clock()
        if up:
            log.warning("link route %s is up again (%s)", st.name, why)
        else:
            log.warning("link route %s is down: %s", st.name, why[:300])

    def status(self) -> dict[str, RouteStatus]:
        """A copy of every route's status, by name."""
        return {name: replace(st) for name, st in self._status.items()}


__all__ = ["ConfigError", "HealthSettings", "KindPolicy", "LinkMode", "LinkPolicy",
           "PeerSettings", "RouteBook", "RouteStatus"]
