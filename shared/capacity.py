"""``[capacity]``: the rate a server's Asterisks must carry, held against their limits.

``check`` (and ``serve``, which checks the same) reads each Asterisk's ``asterisk.conf``
(``[options] maxcalls``) and ``rtp.conf`` (``[general] rtpstart``, ``rtpend``) from the
config directories named in ``asterisk_config`` and refuses a config whose Asterisks
cannot carry ``calls_per_second``. The sizing (deploy/README, "Sizing the Asterisks"):

* a call holds ``channels_per_call`` channels for ``hold_s`` seconds on average, so by
  Little's law ``calls_per_second * hold_s * channels_per_call`` channels are up at
  once; with :data:`HEADROOM` for the spread around the mean, each of the ``n``
  Asterisks needs ``ceil(calls_per_second / n * hold_s * channels_per_call * 1.25)``;
* a channel is refused past ``maxcalls`` (0 or absent: no limit);
* a channel with media takes one RTP session, two ports (RTP on an even port, RTCP on
  the next), so the range carries ``(rtpend - rtpstart + 1) // 2`` sessions (Asterisk's
  defaults when unset: 5000..31000).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from shared.config import Section

#: channels provisioned over the mean: calls do not arrive or end evenly
HEADROOM = Decimal("1.25")
#: Asterisk's RTP port range when rtp.conf does not set one
RTP_DEFAULTS = (5000, 31000)

_SECTION = re.compile(r"^\[([^\]]+)\]")
_SETTING = re.compile(r"^([A-Za-z0-9_]+)\s*=>?\s*(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class CapacitySettings:
    calls_per_second: Decimal
    hold_s: Decimal
    channels_per_call: int
    asterisk_config: tuple[Path, ...]     # each Asterisk's config directory

    @classmethod
    def parse(cls, top: Section) -> CapacitySettings | None:
        """``[capacity]``, or None when the config has no such section."""
        if not top.has("capacity"):
            return None
        s = top.section("capacity")
        directories = s.str_list("asterisk_config")
        if not directories:
            raise s.error("asterisk_config", "name at least one Asterisk config directory")
        base = s.source.path.parent
        return cls(calls_per_second=s.decimal("calls_per_second", min=Decimal("0.001")),
                   hold_s=s.decimal("hold_s", min=Decimal("0.001")),
                   channels_per_call=s.int("channels_per_call", 1, min=1),
                   asterisk_config=tuple(p if p.is_absolute() else (base / p).resolve()
                                         for p in map(Path, directories)))

    def channels_needed(self) -> int:
        """Channels (and RTP sessions) each Asterisk must have for its share of the rate."""
        share = self.calls_per_second / len(self.asterisk_config)
        return math.ceil(share * self.hold_s * self.channels_per_call * HEADROOM)

    def problems(self) -> list[tuple[str, str]]:
        """``(key, problem)`` for each Asterisk that cannot carry its share."""
        needed = self.channels_needed()
        want = (f"{self.calls_per_second} calls/s over {len(self.asterisk_config)} "
                f"Asterisk(s), {self.hold_s} s each with {self.channels_per_call} "
                f"channel(s), need {needed} channels on each (x{HEADROOM} headroom)")
        problems = []
        for i, directory in enumerate(self.asterisk_config):
            key = f"capacity.asterisk_config[{i}]"
            try:
                limits = AsteriskLimits.read(directory)
            except LimitsError as exc:
                problems.append((key, str(exc)))
                continue
            if limits.maxcalls and limits.maxcalls < needed:
                problems.append(("capacity.calls_per_second", f"{want}: {limits.maxcalls_at} "
                                 f"maxcalls = {limits.maxcalls}"))
            if limits.rtp_sessions < needed:
                problems.append(("capacity.calls_per_second", f"{want}: {limits.rtp_at} "
                                 f"rtpstart..rtpend {limits.rtp_ports[0]}..{limits.rtp_ports[1]} "
                                 f"is {limits.rtp_sessions} RTP sessions (2 ports each)"))
        return problems

    def carried(self) -> int | None:
        """Channels all the Asterisks carry together (None: one cannot be read)."""
        try:
            return sum(AsteriskLimits.read(d).channels for d in self.asterisk_config)
        except LimitsError:
            return None


class LimitsError(ValueError):
    """An Asterisk config file that cannot be read or holds a bad limit."""


@dataclass(frozen=True, slots=True)
class AsteriskLimits:
    maxcalls: int                     # 0: no limit
    maxcalls_at: str                  # file:line (or the file) it was read from
    rtp_ports: tuple[int, int]
    rtp_at: str

    @property
    def rtp_sessions(self) -> int:
        return max(self.rtp_ports[1] - self.rtp_ports[0] + 1, 0) // 2

    @property
    def channels(self) -> int:
        """Channels with media this Asterisk carries at once."""
        return min(self.maxcalls or self.rtp_sessions, self.rtp_sessions)

    @classmethod
    def read(cls, directory: Path) -> AsteriskLimits:
        asterisk = directory / "asterisk.conf"
        rtp = directory / "rtp.conf"
        options = _settings(asterisk, "options")
        general = _settings(rtp, "general")
        maxcalls, maxcalls_line = _int(asterisk, options, "maxcalls", 0)
        start, start_line = _int(rtp, general, "rtpstart", RTP_DEFAULTS[0])
        end, end_line = _int(rtp, general, "rtpend", RTP_DEFAULTS[1])
        lines = sorted({n for n in (start_line, end_line) if n})
        return cls(maxcalls=maxcalls,
                   maxcalls_at=f"{asterisk}:{maxcalls_line}" if maxcalls_line else str(asterisk),
                   rtp_ports=(start, end),
                   rtp_at=f"{rtp}:{','.join(map(str, lines))}" if lines else str(rtp))


def _settings(path: Path, section: str) -> dict[str, tuple[str, int]]:
    """``key -> (value, line)`` of ``[section]`` in an Asterisk config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LimitsError(f"{path}: no such file") from None
    except OSError as exc:
        raise LimitsError(f"{path}: cannot read ({exc.strerror})") from None
    found: dict[str, tuple[str, int]] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if header := _SECTION.match(line):
            current = header.group(1).strip()
        elif current == section and (setting := _SETTING.match(line)):
            found[setting.group(1).lower()] = (setting.group(2), number)
    return found


def _int(path: Path, found: dict[str, tuple[str, int]], key: str, default: int
         ) -> tuple[int, int | None]:
    if key not in found:
        return default, None
    value, line = found[key]
    try:
        number = int(value)
    except ValueError:
        raise LimitsError(f"{path}:{line}: {key}: expected an integer, got {value!r}") from None
    if number < 0:
        raise LimitsError(f"{path}:{line}: {key}: {number} is negative")
    return number, line


def cap_problems(capacity: CapacitySettings | None, key: str, cap: int | None
                 ) -> list[tuple[str, str]]:
    """A cap of ``cap`` calls at ``key`` that the Asterisks cannot carry: a cap that is
    never reached (Asterisk refuses the calls first)."""
    if capacity is None or not cap:
        return []
    carried = capacity.carried()
    needed = cap * capacity.channels_per_call
    if carried is None or needed <= carried:
        return []
    return [(key, f"{cap} calls with {capacity.channels_per_call} channel(s) each is "
                  f"{needed} channels, more than the {carried} the Asterisks in "
                  "capacity.asterisk_config carry")]

