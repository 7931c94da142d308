#!/usr/bin/env python3
"""Install, start, stop and inspect one site's Asterisk inside the shared root.

Usage::

    deploy/asterisk/instance.py [--root ROOT] install SITE   # configs, dirs, prompts
    deploy/asterisk/instance.py [--root ROOT] start SITE     # waits for ARI; prints asterisk -V
    deploy/asterisk/instance.py [--root ROOT] stop SITE
    deploy/asterisk/instance.py [--root ROOT] restart SITE
    deploy/asterisk/instance.py [--root ROOT] status SITE    # exit 0 running, 3 stopped
    deploy/asterisk/instance.py [--root ROOT] rotate-logs SITE [--keep N]
                                                  # logger rotate; archives gzipped, pruned

SITE is a directory next to this file holding the versioned configs
(``edge``, ``callback``, and ``edge2`` / ``callback2``: a second Asterisk of each site with
its own SIP/ARI/RTP ports for scale-out and fault tests; edge2 sits behind Kamailio with
edge, deploy/kamailio). ROOT defaults to ``$CBGW_ASTERISK_ROOT`` or
``/var/cache/cbgw/asterisk-sid`` and is built by ``provision-root.sh``.

Each site runs as the root's ``asterisk`` user with its own config, run, log,
spool, lib and data directories::

    ROOT/etc/asterisk-SITE/*.conf            owned asterisk:asterisk, 0640
    ROOT/var/lib/asterisk-SITE/data/         astdatadir: links to /usr/share/asterisk
        sounds/LANG/cbgw/<name>.wav          the system prompts (ivr_platform/prompts.py),
                                             LANG ja and en
        sounds/ja/digits/<0-9>.wav           Japanese digits for ``digits:`` read-backs
                                             (en/digits links Asterisk's own)
        sounds/cbgw-guidance/<merchant>/     merchants' own guidance, written by the
                                             callback site ([media] guidance_dir)
        cbgw-moh/hold.wav                    the music on hold (musiconhold.conf), a
                                             generated tune

    Every sound installed here (the prompts, the digits, the hold music) is also written
    as ``.ulaw`` and ``.alaw`` (G.711, :func:`g711`) beside its ``.wav``: the endpoints
    allow only ulaw and alaw, and Asterisk plays the file of the channel's own codec,
    so no 20 ms frame of a prompt is translated from signed linear.
    ROOT/run/asterisk-SITE/asterisk.pid, asterisk.ctl
    ROOT/var/log/asterisk-SITE/{messages,full}.log
        {messages,full}.log.0, .1.gz ... .N.gz  rotate-logs' archives (newest .0), N < keep

Every command is idempotent. Standard library only; ``install`` renders the prompts with
``python -m ivr_platform prompts`` run by the interpreter running this tool (the
project's virtualenv: Open JTalk for Japanese, espeak-ng for English).
"""

from __future__ import annotations

import argparse
import array
import base64
import functools
import gzip
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROVISION_SCRIPT = HERE / "provision-root.sh"
DEFAULT_ROOT = Path(os.environ.get("CBGW_ASTERISK_ROOT", "/var/cache/cbgw/asterisk-sid"))
MARKER = ".cbgw-provisioned"
SHARE = "/usr/share/asterisk"
#: the languages prompts are installed in (``sounds/LANG/cbgw``); ARI ``play?lang=`` picks one
LANGUAGES = ("ja", "en")
#: merchants' guidance (``ivr_platform.guidance.SOUNDS_SUBDIR``): one file for every language
GUIDANCE = "cbgw-guidance"
#: music on hold (``musiconhold.conf`` ``directory``, under astdatadir)
HOLD_MUSIC_DIR = "cbgw-moh"
#: the formats every sound is installed in beside its 8 kHz ``.wav`` (signed linear)
G711_FORMATS = ("ulaw", "alaw")
#: every extension :func:`install_prompts` writes, and so the stale files it removes
SOUND_EXTENSIONS = ("wav", *G711_FORMATS)
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class InstanceError(RuntimeError):
    """A step failed; the message says which component and what to do."""


# --------------------------------------------------------------------------- config


def parse_asterisk_conf(text: str) -> dict[str, dict[str, str]]:
    """Parse the subset of Asterisk's config syntax the site files use.

    ``[section]`` / ``[section](template)`` headers and ``key = value`` or
    ``key => value`` lines; ``;`` starts a comment. Later keys win.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line[1 : line.index("]")]
            current = sections.setdefault(name, {})
            continue
        if current is None:
            continue
        sep = "=>" if "=>" in line else "="
        if sep not in line:
            continue
        key, value = line.split(sep, 1)
        current[key.strip()] = value.strip()
    return sections


@dataclass(frozen=True)
class Site:
    """One Asterisk instance: its versioned configs and where they go in ROOT."""

    name: str
    root: Path

    @property
    def source(self) -> Path:
        return HERE / self.name

    @property
    def conf_path(self) -> str:
        """asterisk.conf as seen inside the root."""
        return f"/etc/asterisk-{self.name}/asterisk.conf"

    def host(self, inner: str) -> Path:
        """Translate a path inside the root into a host path."""
        return self.root / inner.lstrip("/")

    def directories(self) -> dict[str, str]:
        conf = parse_asterisk_conf((self.source / "asterisk.conf").read_text())
        return conf["directories"]

    @property
    def ari_port(self) -> int:
        http = parse_asterisk_conf((self.source / "http.conf").read_text())["general"]
        return int(http.get("bindport", "8088"))

    @property
    def ari_credentials(self) -> tuple[str, str]:
        """The first ``type = user`` in ari.conf."""
        for name, body in parse_asterisk_conf((self.source / "ari.conf").read_text()).items():
            if body.get("type") == "user":
                return name, body["password"]
        raise InstanceError(f"{self.source / 'ari.conf'} defines no ARI user")

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.ari_port}"

    @property
    def pidfile(self) -> Path:
        return self.host(self.directories()["astrundir"]) / "asterisk.pid"


def load_site(name: str, root: Path) -> Site:
    site = Site(name, root)
    if not (site.source / "asterisk.conf").is_file():
        known = sorted(p.parent.name for p in HERE.glob("*/asterisk.conf"))
        raise InstanceError(f"unknown site {name!r}; known sites: {', '.join(known)}")
    return site


# --------------------------------------------------------------------------- root


def ensure_root(root: Path) -> None:
    """Build the Asterisk root if it is missing (provision-root.sh is idempotent)."""
    if (root / MARKER).is_file() and (root / "usr/sbin/asterisk").exists():
        return
    log(f"Asterisk root {root} is not provisioned; running {PROVISION_SCRIPT.name}")
    result = subprocess.run(["bash", str(PROVISION_SCRIPT), str(root)], check=False)
    if result.returncode != 0:
        raise InstanceError(f"provisioning the Asterisk root at {root} failed")


def asterisk_ids(root: Path) -> tuple[int, int]:
    """uid and gid of the ``asterisk`` user inside the root (not the host's)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "asterisk":
            return int(fields[2]), int(fields[3])
    raise InstanceError(f"no asterisk user in {root}/etc/passwd; re-provision the root")


def resolve_in_root(root: Path, inner: str) -> str:
    """Resolve symlinks of an inner path as the chrooted process would see them."""
    parts = [p for p in inner.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        resolved.append(parts.pop(0))
        host = root.joinpath(*resolved)
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise InstanceError(f"symlink loop resolving {inner} in {root}")
            target = os.readlink(host)
            resolved.pop()
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            # normalise '..'
            merged: list[str] = []
            for p in resolved + parts:
                if p == "..":
                    if merged:
                        merged.pop()
                elif p != ".":
                    merged.append(p)
            resolved, parts = [], merged
    return "/" + "/".join(resolved)


# --------------------------------------------------------------------------- install


def install(site: Site) -> bool:
    """Install (idempotent). True if a config file changed (a running instance is stale)."""
    ensure_root(site.root)
    uid, gid = asterisk_ids(site.root)
    dirs = site.directories()
    for key in ("astetcdir", "astvarlibdir", "astdatadir", "astspooldir", "astrundir",
                "astlogdir", "astcachedir"):
        make_dir(site.host(dirs[key]), uid, gid)
    make_dir(site.host(dirs["astspooldir"]) / "tmp", uid, gid)
    make_dir(site.host(dirs["astspooldir"]) / "recording", uid, gid)   # record nodes
    changed = install_configs(site, site.host(dirs["astetcdir"]), uid, gid)
    link_data_dir(site, dirs["astdatadir"], uid, gid)
    sounds = site.host(dirs["astdatadir"]) / "sounds"
    install_prompts(render_prompts(site.root), sounds, uid, gid)
    make_dir(sounds / GUIDANCE, uid, gid)
    (sounds / GUIDANCE).chmod(0o755)   # the callback site writes, Asterisk reads
    moh = site.host(dirs["astdatadir"]) / HOLD_MUSIC_DIR
    make_dir(moh, uid, gid)
    write_sound(moh / "hold", hold_music(), uid, gid)
    log(f"installed {site.name} into {site.host(dirs['astetcdir'])}")
    return changed


def hold_music(seconds_per_note: float = 0.4, rate: int = 8000) -> bytes:
    """A short arpeggio (C5 E5 G5 C6, twice) as an 8 kHz 16-bit mono WAV: the music a
    held or queued customer hears, looped by Asterisk; the same bytes every time."""
    frames = bytearray()
    per_note = int(seconds_per_note * rate)
    for frequency in (523.25, 659.25, 783.99, 1046.5) * 2:
        for i in range(per_note):
            envelope = min(1.0, i / 400, (per_note - i) / 400)   # no clicks between notes
            sample = 0.3 * envelope * math.sin(2 * math.pi * frequency * i / rate)
            frames += struct.pack("<h", int(sample * 32767))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()


def make_dir(path: Path, uid: int, gid: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(0o750)


def write_if_changed(path: Path, data: bytes, uid: int, gid: int, mode: int) -> bool:
    changed = not path.is_file() or path.read_bytes() != data
    if changed:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return changed


def install_configs(site: Site, etc: Path, uid: int, gid: int) -> bool:
    """Mirror deploy/asterisk/SITE/*.conf into ROOT/etc/asterisk-SITE exactly.

    True if anything changed."""
    changed = False
    wanted = {p.name: p for p in site.source.glob("*.conf")}
    for name, src in sorted(wanted.items()):
        if write_if_changed(etc / name, src.read_bytes(), uid, gid, 0o640):
            log(f"  config {name}")
            changed = True
    for stale in etc.glob("*.conf"):
        if stale.name not in wanted:
            stale.unlink()
            log(f"  removed stale config {stale.name}")
            changed = True
    return changed


def ensure_symlink(link: Path, target: str) -> None:
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(target)


def link_data_dir(site: Site, datadir: str, uid: int, gid: int) -> None:
    """Make a per-instance astdatadir that is /usr/share/asterisk plus our prompts.

    Everything is a symlink into the package's data dir except the real
    directories ``sounds/`` and ``sounds/LANG/`` for each of :data:`LANGUAGES` (which
    also hold ``cbgw/``; ``en`` links Asterisk's own English sounds).
    """
    root = site.root
    data = site.host(datadir)
    for entry in sorted((root / SHARE.lstrip("/")).iterdir()):
        if entry.name != "sounds":
            ensure_symlink(data / entry.name, f"{SHARE}/{entry.name}")
    sounds = data / "sounds"
    make_dir(sounds, uid, gid)
    for entry in sorted((root / f"{SHARE}/sounds".lstrip("/")).iterdir()):
        if entry.name not in LANGUAGES:
            ensure_symlink(sounds / entry.name, f"{SHARE}/sounds/{entry.name}")
    for language in LANGUAGES:
        inner = resolve_in_root(root, f"{SHARE}/sounds/{language}")
        lang_dir = sounds / language
        if lang_dir.is_symlink():
            lang_dir.unlink()
        make_dir(lang_dir, uid, gid)
        if site.host(inner).is_dir():
            for entry in sorted(site.host(inner).iterdir()):
                ensure_symlink(lang_dir / entry.name, f"{inner}/{entry.name}")


# --------------------------------------------------------------------------- prompts


def render_prompts(root: Path) -> dict[str, dict[str, Path]]:
    """Every system prompt in every language: ``{language: {name: rendered wav}}``.

    ``python -m ivr_platform prompts`` renders them (ivr_platform/tts.py, cached by a hash
    of the text and voice in ROOT/var/cache/cbgw-prompts, so a second install or the
    other site only copies)."""
    cache = root / "var/cache/cbgw-prompts"
    result = subprocess.run([sys.executable, "-m", "ivr_platform", "prompts", "--cache",
                             str(cache)], cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InstanceError(f"rendering the prompts failed ({sys.executable} -m ivr_platform "
                            f"prompts): {result.stderr.strip()[-500:]}")
    rendered: dict[str, dict[str, str]] = json.loads(result.stdout)
    return {language: {name: Path(path) for name, path in files.items()}
            for language, files in rendered.items()}


def install_prompts(rendered: dict[str, dict[str, Path]], sounds: Path, uid: int,
                    gid: int) -> None:
    """Copy the rendered sounds to ``sounds/LANG/<name>.wav`` (``cbgw/received``,
    ``digits/0``) with their ``.ulaw`` and ``.alaw`` (:func:`write_sound`); drop stale
    files of any of :data:`SOUND_EXTENSIONS` from the directories written to."""
    for language, files in rendered.items():
        written: dict[Path, set[str]] = {}
        for name, path in files.items():
            dest = sounds / language / name
            if dest.parent not in written:
                if dest.parent.is_symlink():   # a link into Asterisk's own sounds
                    dest.parent.unlink()
                make_dir(dest.parent, uid, gid)
            written.setdefault(dest.parent, set()).add(dest.name)
            if write_sound(dest, path.read_bytes(), uid, gid):
                log(f"  prompt {language}/{name}")
        for directory, names in written.items():
            for extension in SOUND_EXTENSIONS:
                for stale in directory.glob(f"*.{extension}"):
                    if stale.name.removesuffix(f".{extension}") not in names:
                        stale.unlink()


def write_sound(stem: Path, wav: bytes, uid: int, gid: int) -> bool:
    """Write ``stem.wav`` and its G.711 copies ``stem.ulaw``, ``stem.alaw``; True if any
    of them changed."""
    changed = write_if_changed(stem.with_name(f"{stem.name}.wav"), wav, uid, gid, 0o640)
    for law in G711_FORMATS:
        changed |= write_if_changed(stem.with_name(f"{stem.name}.{law}"), g711(wav, law),
                                    uid, gid, 0o640)
    return changed


# --------------------------------------------------------------------------- G.711


def ulaw_byte(sample: int) -> int:
    """G.711 μ-law of one 16-bit linear sample (the reference encoder: bias 0x84,
    clipped at 32635, the complemented sign/segment/mantissa byte)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = magnitude.bit_length() - 8
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def alaw_byte(sample: int) -> int:
    """G.711 A-law of one 16-bit linear sample (the reference encoder: 13 bits, even
    bits inverted, 0xD5 / 0x55 by sign)."""
    value = sample >> 3
    mask = 0xD5 if value >= 0 else 0x55
    if value < 0:
        value = -value - 1
    if value > 0xFFF:
        return 0x7F ^ mask
    segment = max(0, value.bit_length() - 5)
    mantissa = (value >> max(1, segment)) & 0x0F
    return ((segment << 4) | mantissa) ^ mask


@functools.cache
def _g711_table(law: str) -> bytes:
    """The G.711 byte of every 16-bit sample, indexed by the sample's unsigned value."""
    encode = {"ulaw": ulaw_byte, "alaw": alaw_byte}[law]
    return bytes(encode(u - 0x10000 if u & 0x8000 else u) for u in range(0x10000))


def g711(wav: bytes, law: str) -> bytes:
    """The raw G.711 (``law`` ``ulaw`` or ``alaw``) of an 8 kHz 16-bit mono WAV: what
    Asterisk's ``format_pcm`` plays from a ``.ulaw`` / ``.alaw`` file."""
    with wave.open(io.BytesIO(wav), "rb") as w:
        shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
        frames = w.readframes(w.getnframes())
    if shape != (1, 2, 8000):
        raise InstanceError(f"a sound to install is not 8 kHz 16-bit mono WAV "
                            f"(channels, bytes a sample, rate: {shape})")
    samples = array.array("H", frames)
    if sys.byteorder == "big":
        samples.byteswap()
    return bytes(map(_g711_table(law).__getitem__, samples))


# --------------------------------------------------------------------------- run state


def running_pid(site: Site) -> int | None:
    """The pid of this site's Asterisk if it is alive, else None."""
    try:
        pid = int(site.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if site.conf_path.encode() not in cmdline:
        return None
    return pid


def ari_info(site: Site, timeout: float = 1.0) -> dict[str, object] | None:
    """GET /ari/asterisk/info, or None when ARI does not answer."""
    user, password = site.ari_credentials
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{site.ari_url}/ari/asterisk/info",
                                 headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body
    except (OSError, urllib.error.URLError, ValueError):
        return None


def version(root: Path) -> str:
    out = subprocess.run(["chroot", str(root), "asterisk", "-V"], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip() or out.stderr.strip()


def log_tail(site: Site, lines: int = 15) -> str:
    path = site.host(site.directories()["astlogdir"]) / "messages.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def start(site: Site) -> None:
    if not site.host(site.conf_path).is_file():
        raise InstanceError(f"site {site.name} is not installed; run: instance.py install "
                            f"{site.name}")
    pid = running_pid(site)
    if pid is None:
        if ari_info(site) is not None:
            raise InstanceError(f"port {site.ari_port} already serves ARI but not from this "
                                f"root's {site.name} instance; stop the other Asterisk")
        subprocess.run(["chroot", str(site.root), "asterisk", "-U", "asterisk", "-G", "asterisk",
                        "-C", site.conf_path], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while (info := ari_info(site, timeout=0.5)) is None:
        if time.monotonic() > deadline:
            raise InstanceError(f"{site.name} Asterisk did not answer ARI on {site.ari_url} "
                                f"within {START_TIMEOUT_S:.0f} s; messages.log:\n"
                                f"{log_tail(site)}")
        time.sleep(0.05)
    system = info.get("system", {})
    ver = system.get("version", "?") if isinstance(system, dict) else "?"
    log(f"{site.name} running pid {running_pid(site)}, ARI {site.ari_url} (Asterisk {ver})")
    print(version(site.root))


def stop(site: Site) -> None:
    pid = running_pid(site)
    if pid is None:
        log(f"{site.name} not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            log(f"{site.name} pid {pid} ignored SIGTERM; killing")
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            break
        time.sleep(0.05)
    log(f"{site.name} stopped")


def status(site: Site) -> int:
    pid = running_pid(site)
    if pid is None:
        print(f"{site.name}: stopped")
        return 3
    ari = "up" if ari_info(site) is not None else "not answering"
    print(f"{site.name}: running pid {pid}, ARI {site.ari_url} {ari}")
    return 0


# --------------------------------------------------------------------------- logs

#: Archives ``rotate-logs`` keeps of each log (.0 to .13: two weeks when rotated daily,
#: as the cbgw-asterisk-logs@ timer does)
DEFAULT_KEEP_LOGS = 14
#: A log's archive as Asterisk's ``rotatestrategy = rotate`` names it (the newest .0; the
#: renaming carries a .gz along): the name, the log, the number, the suffix
ARCHIVE = re.compile(r"(?P<log>.+\.log)\.(?P<n>[0-9]+)(?P<gz>\.gz)?")


def rotate_logs(site: Site, keep: int = DEFAULT_KEEP_LOGS) -> None:
    """``logger rotate`` on the running Asterisk (its logger.conf's ``rotatestrategy =
    rotate``: each log moved to <log>.0, the older archives up by one, the logs reopened),
    then :func:`archive_logs`. A stopped Asterisk writes nothing: its archives are only
    compressed and pruned."""
    if keep < 1:
        raise InstanceError(f"--keep must be at least 1, not {keep}")
    if running_pid(site) is None:
        log(f"{site.name} not running: no log rotated")
    else:
        rotated = subprocess.run(
            ["chroot", str(site.root), "asterisk", "-C", site.conf_path, "-rx", "logger rotate"],
            capture_output=True, text=True, timeout=30, check=False)
        if rotated.returncode != 0:
            raise InstanceError(f"{site.name}: asterisk -rx 'logger rotate' failed "
                                f"({rotated.returncode}): {rotated.stderr.strip()}")
    compressed, removed = archive_logs(site.host(site.directories()["astlogdir"]), keep)
    log(f"{site.name} logs rotated: {compressed} archive(s) compressed, {removed} removed "
        f"(keeping .0 to .{keep - 1})")


def archive_logs(directory: Path, keep: int) -> tuple[int, int]:
    """Compress each archive from .1 on (.0, the one just rotated, stays plain for a
    reader that still follows it) and remove those numbered ``keep`` or more. A
    compressed copy is written beside the archive and renamed over its name only when
    complete, with the archive's owner and mode, so a crash leaves one or the other.
    Returns how many were compressed and how many removed."""
    compressed = removed = 0
    for path in sorted(directory.iterdir()):
        if path.name.endswith(".gz.partial"):   # an interrupted run's: its archive is kept
            path.unlink()
            continue
        found = ARCHIVE.fullmatch(path.name)
        if found is None or not path.is_file():
            continue
        if int(found["n"]) >= keep:
            path.unlink()
            removed += 1
        elif int(found["n"]) >= 1 and not found["gz"]:
            gzip_beside(path)
            compressed += 1
    return compressed, removed


def gzip_beside(path: Path) -> Path:
    """``path`` gzipped to ``path.gz`` (owner and mode kept), then ``path`` removed."""
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.partial")
    status = path.stat()
    with path.open("rb") as source, gzip.open(partial, "wb", compresslevel=6) as sink:
        shutil.copyfileobj(source, sink, 1 << 20)
    os.chown(partial, status.st_uid, status.st_gid)
    partial.chmod(status.st_mode & 0o777)
    partial.replace(target)
    path.unlink()
    return target


# --------------------------------------------------------------------------- cli


def log(message: str) -> None:
    print(f"[instance] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"Asterisk root (default {DEFAULT_ROOT})")
    parser.add_argument("command", choices=["install", "start", "stop", "restart", "status",
                                            "rotate-logs"])
    parser.add_argument("site")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP_LOGS,
                        help="rotate-logs: archives kept of each log, .0 to .KEEP-1 "
                             f"(default {DEFAULT_KEEP_LOGS})")
    args = parser.parse_args(argv)
    try:
        site = load_site(args.site, args.root)
        if args.command == "install":
            install(site)
        elif args.command == "start":
            start(site)
        elif args.command == "stop":
            stop(site)
        elif args.command == "restart":
            stop(site)
            start(site)
        elif args.command == "rotate-logs":
            rotate_logs(site, args.keep)
        else:
            return status(site)
    except InstanceError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
