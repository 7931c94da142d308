#!/usr/bin/env bash
# Provision the Asterisk 22 root used by both sites.
#
# Debian bookworm ships no asterisk package, so unless the host's apt has one
# (Ubuntu, Debian sid) we build a minimal Debian sid root with debootstrap and
# run Asterisk inside it with chroot. Idempotent: a finished root carries a
# marker file and is reused; a half-built one is removed and rebuilt.
#
# Usage: deploy/asterisk/provision-root.sh [ROOT]
#   ROOT defaults to $CBGW_ASTERISK_ROOT or /var/cache/cbgw/asterisk-sid.
set -euo pipefail

ROOT="${1:-${CBGW_ASTERISK_ROOT:-/var/cache/cbgw/asterisk-sid}}"
MIRROR="${CBGW_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
MARKER="$ROOT/.cbgw-provisioned"
PACKAGES="asterisk,asterisk-modules,asterisk-core-sounds-en-wav"

log() { printf '[provision-root] %s\n' "$*" >&2; }

provisioned() { [ -f "$MARKER" ] && [ -x "$ROOT/usr/sbin/asterisk" ]; }
reuse() {
    log "reusing $ROOT ($(chroot "$ROOT" asterisk -V 2>/dev/null || echo 'version unknown'))"
    exit 0
}

provisioned && reuse

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (debootstrap and chroot need it)"; exit 2
fi

# One build at a time: test runs and benches started together each find the root missing
# and would otherwise debootstrap into the same $ROOT.partial and move it over each
# other. The first takes the lock and builds; the others wait for it (up to 15 min), then
# find the marker and reuse the root.
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
if ! flock -w 900 9; then
    log "another provisioning of $ROOT has held $ROOT.lock for 15 minutes; giving up"; exit 1
fi
provisioned && reuse

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

if [ -e "$ROOT" ]; then
    log "removing incomplete root $ROOT"
    rm -rf "$ROOT"
fi
tmp="$ROOT.partial"
# a build killed part-way may leave debootstrap's mounts (/proc, /sys) in it: rm -rf
# would then walk into them and fail
awk -v p="$tmp/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
rm -rf "$tmp"

log "debootstrap sid into $tmp (about 45 s)"
debootstrap --variant=minbase --include="$PACKAGES" sid "$tmp" "$MIRROR" >"$tmp.log" 2>&1 || {
    log "debootstrap failed; last lines of $tmp.log:"; tail -20 "$tmp.log" >&2; exit 1; }
chroot "$tmp" apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/*
rm -f "$tmp.log"
mv "$tmp" "$ROOT"
chroot "$ROOT" asterisk -V > "$MARKER"
log "ready: $(cat "$MARKER")"
