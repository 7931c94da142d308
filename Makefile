# Two commands for a newcomer: `make demo` and `make test`. Both install what
# they need, idempotently: Debian packages (SIPp, Kamailio, debootstrap, sox, ffmpeg,
# espeak-ng, Open JTalk with its dictionary and voice, libfaketime for the end-to-end
# tests' fixed clocks, chromium for the web pages' browser tests, prometheus for
# promtool, which checks and tests the alert rules), the Python virtualenv, and the
# Asterisk 22 root for both sites.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
APT_STAMP  := /var/cache/cbgw/.apt-installed
APT_PKGS   := sip-tester debootstrap sox ffmpeg espeak-ng iproute2 tshark kamailio libfaketime \
              chromium open-jtalk open-jtalk-mecab-naist-jdic hts-voice-nitech-jp-atr503-m001 \
              prometheus
# Open JTalk's voice is in Debian's contrib component: this sources entry enables
# contrib (bookworm, the same mirror and key as the machine's main entry).
CONTRIB_SOURCES := /etc/apt/sources.list.d/cbgw-contrib.sources
ASTERISK_ROOT ?= /var/cache/cbgw/asterisk-sid
PYTEST_ARGS ?=

.PHONY: all deps system-deps venv asterisk test unit integration e2e faults lint demo bench clean

all: test

deps: system-deps venv asterisk

system-deps: $(APT_STAMP)
# Re-checked whenever this Makefile changes (a package added to APT_PKGS).
$(APT_STAMP): Makefile
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  test -f $(CONTRIB_SOURCES) || printf '%s\n' 'Types: deb' \
	    'URIs: http://deb.debian.org/debian' 'Suites: bookworm' 'Components: contrib' \
	    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > $(CONTRIB_SOURCES); \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# the packages' own services (stock configs) stay off: deploy/kamailio/instance.py runs
	@# our Kamailio; prometheus is here for promtool only
	@for unit in kamailio prometheus prometheus-node-exporter; do \
	  if command -v systemctl >/dev/null && systemctl is-enabled $$unit >/dev/null 2>&1; then \
	    systemctl disable --now $$unit >/dev/null 2>&1 || true; fi; done
	@mkdir -p $(dir $@) && touch $@

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

asterisk: system-deps
	@deploy/asterisk/provision-root.sh $(ASTERISK_ROOT)

lint: venv
	$(VENV)/bin/ruff check shared edge_server callback_server routing_rates advisors ivr_platform billing web deploy tests bench demo
	$(VENV)/bin/mypy shared edge_server callback_server routing_rates advisors ivr_platform billing web demo

unit: venv
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

integration: venv
	$(VENV)/bin/pytest -q tests/integration $(PYTEST_ARGS)

e2e: deps
	$(VENV)/bin/pytest -q tests/e2e $(PYTEST_ARGS)

# Everything, the 300-request fault run included (about 52 minutes on 2 cores), then
# the 15 slowest tests' times (where a run's time goes, when CI's limit comes near).
test: deps lint
	$(VENV)/bin/pytest -q tests --durations=15 $(PYTEST_ARGS)

# The 300-request fault-injection run alone, with its progress: about 6 minutes.
faults: deps
	$(VENV)/bin/pytest -q -s tests/faults/test_fault_run.py $(PYTEST_ARGS)

demo: deps
	$(PY) -m demo

bench: deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
