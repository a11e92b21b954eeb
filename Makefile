# sentry — build, install, run and test.
#
#   make run      set up and run on this machine (Debian): apt packages, release
#                 build, install, start the pair, print `sentryctl status`
#   make stop     stop the pair and remove its nftables table
#   make install  binaries, units, man pages, the `sentry` user, /etc/sentry
#   make test     build the binaries, then run every test (root tests included)
#   make deb      a Debian package (sentry_<version>_<arch>.deb) from the release build
#   make uninstall
#
# Migration: if /etc/portsentry/portsentry.conf exists and /etc/sentry/sentry.conf
# does not, install links /etc/sentry/sentry.conf to it, so the PortSentry
# configuration and ignore file are used unchanged, lets the enforcer unit write
# /var/lib/portsentry (a drop-in) where PortSentry keeps its files, and gives that
# directory to the enforcer's worker (/etc/tmpfiles.d/sentry-portsentry.conf).

PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
CONFDIR    ?= /etc/sentry
PORTSENTRY ?= /etc/portsentry/portsentry.conf
CARGO      ?= cargo
SENSOR_USER = sentry
BINS        = sentry-sensor sentry-enforcer sentry-worker sentryctl sentry-share
WORKER_USER = sentry-worker
SHARE_USER  = sentry-share
RELEASE     = target/release
# Packages the product needs at run time (nft for inspection, setpriv is in
# util-linux) and to build (a C linker).
APT_PKGS    = nftables iproute2 util-linux build-essential
# ...and what the test suite drives: real scanners, firewalls, the units' checker,
# strace for the unit sandbox test, route(8) for Debian's KILL_ROUTE, the sentry user;
# debootstrap + systemd-nspawn for the real-systemd package test (its Debian 12 root
# file system is cached in /var/cache/sentry-tests), lintian for the package, and
# logwatch + fail2ban for the log-consumer checks; scapy (system python3) crafts
# fragments and IPv6 header chains for input_path.rs; masscan is sentry-bench's 1M
# packets/s scanner (issue #13's figures: a scanner with its own TCP stack, far faster
# than nmap).
APT_TEST_PKGS = $(APT_PKGS) nmap hping3 iptables tcpdump systemd strace net-tools \
                procps passwd dpkg-dev python3-scapy masscan \
                debootstrap systemd-container lintian logwatch fail2ban logrotate
# ...of which these are daemons: when test-deps installs one on a host running systemd,
# it is stopped and disabled again (the tests only run fail2ban-regex).
APT_TEST_DAEMONS = fail2ban
# The fleet tests' CrowdSec Local API (crowdsec 1.4.6) and promtool (prometheus). Not
# installed: their maintainer scripts would start services, register the local agent
# and try hub updates (no network here). `apt-get download` + `dpkg -x` unpacks the
# packages under TEST_CACHE instead, so no script runs, nothing is started and nothing
# keeps running; the tests start a LAPI of their own (tests/src/fleet.rs).
APT_TEST_UNPACK = crowdsec prometheus
TEST_CACHE      = /var/cache/sentry-tests
NEW_DAEMONS := $(shell for p in $(APT_TEST_DAEMONS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)
PID1       := $(shell cat /proc/1/comm 2>/dev/null)

.PHONY: all build deps test-deps install install-bin install-units install-man install-conf \
        run stop status test uninstall deb

all: build

build:
	$(CARGO) build --release -p sentry-sensor -p sentry-enforcer -p sentry-worker -p sentryctl -p sentry-share --bins

# Install missing Debian packages (and tell how to get cargo if there is none).
define apt_install
	@missing=""; for p in $(1); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" -ne 0 ]; then echo "missing packages (run as root to install):$$missing"; \
	    else echo "installing:$$missing"; apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi; fi
	@command -v $(CARGO) >/dev/null 2>&1 || { \
	    echo "cargo not found: install Rust with https://rustup.rs (or apt-get install cargo)"; exit 1; }
endef

deps:
	$(call apt_install,$(APT_PKGS))

test-deps:
	$(call apt_install,$(APT_TEST_PKGS))
	@for p in $(APT_TEST_UNPACK); do \
	    [ -d $(TEST_CACHE)/$$p/usr/bin ] && continue; \
	    if [ "$$(id -u)" -ne 0 ]; then echo "missing $(TEST_CACHE)/$$p (run as root to unpack it)"; continue; fi; \
	    echo "unpacking $$p into $(TEST_CACHE)/$$p"; \
	    tmp=$$(mktemp -d) && chmod 755 $$tmp && (cd $$tmp && apt-get update -qq && apt-get download -qq $$p) && \
	    mkdir -p $(TEST_CACHE)/$$p.new && dpkg -x $$tmp/$${p}_*.deb $(TEST_CACHE)/$$p.new && \
	    rm -rf $(TEST_CACHE)/$$p && mv $(TEST_CACHE)/$$p.new $(TEST_CACHE)/$$p; rc=$$?; \
	    rm -rf $$tmp; [ $$rc -eq 0 ] || exit 1; done
	@for p in $(NEW_DAEMONS); do \
	    if [ -d /run/systemd/system ] && dpkg -s $$p >/dev/null 2>&1; then \
	        echo "test-deps: $$p was installed for its tools only: systemctl disable --now $$p"; \
	        systemctl disable --now $$p.service >/dev/null 2>&1 || true; fi; done

install: build install-bin install-units install-man install-conf
	@echo "installed. Start with: make run   (or systemctl enable --now sentry-enforcer sentry-sensor)"

install-bin:
	install -d $(DESTDIR)$(SBINDIR)
	for b in $(BINS); do install -m 0755 $(RELEASE)/$$b $(DESTDIR)$(SBINDIR)/$$b; done

install-units:
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/sbin|$(SBINDIR)|g' sentry-enforcer/dist/sentry-enforcer.service \
	    > $(DESTDIR)$(UNITDIR)/sentry-enforcer.service
	sed 's|/usr/local/sbin|$(SBINDIR)|g' sentry-sensor/dist/sentry-sensor.service \
	    > $(DESTDIR)$(UNITDIR)/sentry-sensor.service
	sed 's|/usr/local/sbin|$(SBINDIR)|g' sentry-share/dist/sentry-share.service \
	    > $(DESTDIR)$(UNITDIR)/sentry-share.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sentry-*.service
	@# The worker's state and log directories, its own before the enforcer unit starts
	@# (the unit has no CAP_CHOWN and no StateDirectory=; see the snippet).
	install -d $(DESTDIR)$(TMPFILESDIR)
	install -m 0644 sentry-enforcer/dist/sentry.tmpfiles $(DESTDIR)$(TMPFILESDIR)/sentry.conf

install-man:
	install -d $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5
	install -m 0644 sentry-sensor/man/sentry-sensor.8 sentry-enforcer/man/sentry-enforcer.8 \
	    sentry-client/man/sentryctl.8 sentry-share/man/sentry-share.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 policy/man/sentry.conf.5 $(DESTDIR)$(MANDIR)/man5/

# The user, the directories, and the policy (never overwriting an existing one).
install-conf:
	getent passwd $(SENSOR_USER) >/dev/null || useradd --system --user-group \
	    --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $(SENSOR_USER)
	getent passwd $(SHARE_USER) >/dev/null || useradd --system --user-group \
	    --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $(SHARE_USER)
	getent passwd $(WORKER_USER) >/dev/null || useradd --system --user-group \
	    --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $(WORKER_USER)
	install -d -m 0755 $(DESTDIR)$(CONFDIR)
	install -d -m 0700 $(DESTDIR)/var/lib/sentry
	install -d -m 0750 $(DESTDIR)/var/log/sentry
	@if [ -e $(DESTDIR)$(CONFDIR)/sentry.conf ]; then \
	    echo "keeping existing $(CONFDIR)/sentry.conf"; \
	elif [ -f $(PORTSENTRY) ]; then \
	    echo "migration: $(CONFDIR)/sentry.conf -> $(PORTSENTRY) (used unchanged)"; \
	    ln -s $(PORTSENTRY) $(DESTDIR)$(CONFDIR)/sentry.conf; \
	    install -d $(DESTDIR)/var/lib/portsentry $(DESTDIR)/etc/systemd/system/sentry-enforcer.service.d; \
	    printf '[Service]\n# PortSentry configuration in use: its files live here.\nReadWritePaths=-/var/lib/portsentry\n' \
	        > $(DESTDIR)/etc/systemd/system/sentry-enforcer.service.d/portsentry.conf; \
	    install -d $(DESTDIR)/etc/tmpfiles.d; \
	    printf '# sentry: the PortSentry configuration in use keeps its files here; the\n# enforcer worker writes them (the unit gives it no CAP_CHOWN).\nd /var/lib/portsentry 0755 sentry-worker sentry-worker -\nZ /var/lib/portsentry - sentry-worker sentry-worker -\n' \
	        > $(DESTDIR)/etc/tmpfiles.d/sentry-portsentry.conf; \
	    echo "note: stop PortSentry itself (systemctl disable --now portsentry) before starting sentry"; \
	else \
	    install -m 0644 policy/dist/sentry.conf $(DESTDIR)$(CONFDIR)/sentry.conf; \
	fi
	@# The fleet bridge's configuration (sentry-share is not enabled by install).
	@[ -e $(DESTDIR)$(CONFDIR)/share.conf ] || \
	    install -m 0644 sentry-share/dist/share.conf $(DESTDIR)$(CONFDIR)/share.conf
	@[ -e $(DESTDIR)$(CONFDIR)/sentry.ignore ] || \
	    install -m 0644 policy/dist/sentry.ignore $(DESTDIR)$(CONFDIR)/sentry.ignore
	@# The enforcer runs with UMask=0077: give hosts.deny its usual mode up front.
	@[ -e $(DESTDIR)/etc/hosts.deny ] || install -m 0644 /dev/null $(DESTDIR)/etc/hosts.deny
	@# The worker owns its state and audit log now, not at the next boot (and takes over
	@# what an older, root-only version left): the enforcer only checks them. Without
	@# systemd-tmpfiles (no systemd) `make run`'s script, tests/scripts/sentry-pair.sh,
	@# does the same before each start.
	@if [ -z "$(DESTDIR)" ] && command -v systemd-tmpfiles >/dev/null && \
	    [ -e $(TMPFILESDIR)/sentry.conf ]; then \
	    echo "systemd-tmpfiles --create $(TMPFILESDIR)/sentry.conf"; \
	    systemd-tmpfiles --create $(TMPFILESDIR)/sentry.conf; \
	    if [ -e /etc/tmpfiles.d/sentry-portsentry.conf ]; then \
	        systemd-tmpfiles --create /etc/tmpfiles.d/sentry-portsentry.conf; fi; fi
	install -d $(DESTDIR)/etc/logrotate.d
	install -m 0644 sentry-enforcer/dist/sentry.logrotate $(DESTDIR)/etc/logrotate.d/sentry
	@# fail2ban's [portsentry] jail (Debian) reads PortSentry's history file: point it
	@# at this configuration's HISTORY_FILE (only where fail2ban is; never overwritten).
	@f=$(DESTDIR)/etc/fail2ban/jail.d/sentry.conf; \
	if [ -d $(DESTDIR)/etc/fail2ban/jail.d ] && [ ! -e $$f ]; then \
	    hist=$$(sed -n 's/^[[:space:]]*HISTORY_FILE[[:space:]]*=[[:space:]]*"\{0,1\}\([^"#[:space:]]*\).*/\1/p' \
	        $(DESTDIR)$(CONFDIR)/sentry.conf | tail -n 1); \
	    if [ -n "$$hist" ]; then \
	        sed "s|^logpath = .*|logpath = $$hist|" sentry-enforcer/dist/fail2ban-sentry.conf > $$f && \
	        chmod 0644 $$f && echo "fail2ban: $$f sets the [portsentry] jail's logpath to $$hist"; fi; fi

# Set up and run, on a fresh Debian machine, with or without systemd as PID 1.
run: deps install
ifeq ($(PID1),systemd)
	systemctl daemon-reload
	systemctl enable --now sentry-enforcer.service sentry-sensor.service
	@i=0; until $(SBINDIR)/sentryctl status >/dev/null 2>&1 || [ $$i -ge 100 ]; do i=$$((i+1)); sleep 0.1; done
	$(SBINDIR)/sentryctl status
	@echo "logs: journalctl -u sentry-enforcer -u sentry-sensor; audit: /var/log/sentry/audit.jsonl"
else
	SBIN=$(SBINDIR) CONF=$(CONFDIR)/sentry.conf sh tests/scripts/sentry-pair.sh start
endif

status:
	$(SBINDIR)/sentryctl status

# Stop the pair and remove its nftables table (the blocks are kept in
# /var/lib/sentry and re-applied at the next start).
stop:
ifeq ($(PID1),systemd)
	-systemctl stop sentry-sensor.service sentry-enforcer.service
else
	SBIN=$(SBINDIR) sh tests/scripts/sentry-pair.sh stop
endif
	@table=$$(sed -n 's/^NFT_TABLE[ ]*=[ ]*"\([A-Za-z0-9_]*\)".*/\1/p' $(CONFDIR)/sentry.conf 2>/dev/null); \
	table=$${table:-sentry}; \
	for fam in inet ip ip6; do \
	    if nft list table $$fam $$table >/dev/null 2>&1; then \
	        nft delete table $$fam $$table && echo "removed nftables table $$fam $$table"; fi; done

# The single test command: binaries first (the e2e suite runs the real ones).
test: test-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

deb: build
	sh tests/scripts/make-deb.sh $(RELEASE) .

uninstall: stop
	-systemctl disable sentry-enforcer.service sentry-sensor.service 2>/dev/null
	for b in $(BINS); do rm -f $(DESTDIR)$(SBINDIR)/$$b; done
	-systemctl disable --now sentry-share.service 2>/dev/null
	rm -f $(DESTDIR)$(UNITDIR)/sentry-enforcer.service $(DESTDIR)$(UNITDIR)/sentry-sensor.service \
	    $(DESTDIR)$(UNITDIR)/sentry-share.service $(DESTDIR)$(TMPFILESDIR)/sentry.conf
	rm -f $(DESTDIR)$(MANDIR)/man8/sentry-sensor.8 $(DESTDIR)$(MANDIR)/man8/sentry-enforcer.8 \
	    $(DESTDIR)$(MANDIR)/man8/sentryctl.8 $(DESTDIR)$(MANDIR)/man8/sentry-share.8 \
	    $(DESTDIR)$(MANDIR)/man5/sentry.conf.5
	rm -f $(DESTDIR)/etc/logrotate.d/sentry
	@echo "kept /etc/sentry, /var/lib/sentry, /var/lib/sentry-share, /var/log/sentry and the sentry and sentry-share users"
