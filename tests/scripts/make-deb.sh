#!/bin/sh
# Build a Debian package from release binaries: sentry_<version>_<arch>.deb.
# Usage: make deb   (runs: sh tests/scripts/make-deb.sh RELEASE_DIR OUT_DIR)
# Layout follows Debian (/usr/sbin, /lib/systemd/system, /usr/share/man,
# the default policy in /usr/share/sentry). postinst creates the `sentry` user,
# the state and log directories and /etc/sentry (or links it to an existing
# PortSentry configuration), enables both units also without a running systemd
# (image builds), and starts them (restarts them on upgrade) when systemd runs.
set -eu
REL=${1:?release dir}
OUT=${2:-.}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
ARCH=$(dpkg --print-architecture)
ROOT=$(mktemp -d)
chmod 0755 "$ROOT"
trap 'rm -rf "$ROOT"' EXIT

install -d "$ROOT/DEBIAN" "$ROOT/usr/sbin" "$ROOT/lib/systemd/system" \
    "$ROOT/usr/share/man/man8" "$ROOT/usr/share/man/man5" \
    "$ROOT/usr/share/doc/sentry"
for b in sentry-sensor sentry-enforcer sentry-worker sentryctl; do
    install -m 0755 "$REL/$b" "$ROOT/usr/sbin/$b"
    # As dh_strip does: no symbols or build notes in the shipped binaries.
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$ROOT/usr/sbin/$b"
done
for u in sentry-enforcer/dist/sentry-enforcer.service sentry-sensor/dist/sentry-sensor.service; do
    sed 's|/usr/local/sbin|/usr/sbin|g' "$u" >"$ROOT/lib/systemd/system/$(basename "$u")"
done
for m in sentry-sensor/man/sentry-sensor.8 sentry-enforcer/man/sentry-enforcer.8 sentry-client/man/sentryctl.8; do
    gzip -9n <"$m" >"$ROOT/usr/share/man/man8/$(basename "$m").gz"
done
gzip -9n <policy/man/sentry.conf.5 >"$ROOT/usr/share/man/man5/sentry.conf.5.gz"
install -d "$ROOT/usr/share/sentry"
install -m 0644 policy/dist/sentry.conf policy/dist/sentry.ignore "$ROOT/usr/share/sentry/"
# The worker's state and log directories: its own before the enforcer unit starts (the
# unit has no CAP_CHOWN and no StateDirectory=); postinst applies it at once.
install -d "$ROOT/usr/lib/tmpfiles.d"
install -m 0644 sentry-enforcer/dist/sentry.tmpfiles "$ROOT/usr/lib/tmpfiles.d/sentry.conf"
install -d "$ROOT/etc/logrotate.d"
install -m 0644 sentry-enforcer/dist/sentry.logrotate "$ROOT/etc/logrotate.d/sentry"
# Machine-readable copyright (DEP-5); the licence texts are in common-licenses
# (Apache-2.0) or quoted (MIT).
{
    printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
    printf 'Upstream-Name: sentry\n\nFiles: *\nCopyright: 2026 The sentry developers\n'
    printf 'License: MIT or Apache-2.0\n\nLicense: Apache-2.0\n'
    printf ' On Debian systems the full text of the Apache License, Version 2.0 is in\n'
    printf ' /usr/share/common-licenses/Apache-2.0.\n\nLicense: MIT\n'
    sed -n '/^Permission is hereby granted/,/SOFTWARE\.$/p' LICENSE | sed 's/^$/./; s/^/ /'
} >"$ROOT/usr/share/doc/sentry/copyright"
chmod 0644 "$ROOT/usr/share/doc/sentry/copyright"
# A native package's changelog (Debian policy 12.7): this version, from git when
# there is one.
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
printf 'sentry (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- sentry maintainers <maintainers@example.invalid>  %s\n' \
    "$VERSION" "$rev" "$when" | gzip -9n >"$ROOT/usr/share/doc/sentry/changelog.gz"
chmod 0644 "$ROOT/usr/share/doc/sentry/changelog.gz"

cat >"$ROOT/DEBIAN/control" <<CTRL
Package: sentry
Version: $VERSION
Architecture: $ARCH
Maintainer: sentry maintainers <maintainers@example.invalid>
Depends: libc6, nftables, passwd
Conflicts: portsentry
Section: net
Priority: optional
Description: privilege-separated port scan detector (PortSentry successor)
 sentry-sensor (unprivileged, seccomp-confined) detects port scans in all of
 PortSentry's modes; sentry-worker (unprivileged) re-checks and decides, and
 sentry-enforcer (a small root parent) blocks the scanner in an nftables set,
 hosts.deny or with PortSentry's commands.
 Reads portsentry.conf unchanged.
CTRL
printf '/etc/logrotate.d/sentry\n' >"$ROOT/DEBIAN/conffiles"

# Maintainer scripts: dh_installsystemd's semantics, written out (this package is
# built without debhelper). deb-systemd-helper (init-system-helpers, on every
# Debian system) creates the [Install] symlinks without a running systemd, so an
# image build (debootstrap, a container, a cloud image) boots protected; its
# state file remembers the admin's `systemctl disable` across upgrades.
cat >"$ROOT/DEBIAN/postinst" <<'POST'
#!/bin/sh
set -e
UNITS="sentry-enforcer.service sentry-sensor.service"

# The policy is the admin's file, never a dpkg conffile: on a host migrating from
# PortSentry /etc/sentry/sentry.conf must become a link to portsentry.conf (as
# `make install` does), which dpkg would undo or prompt about on every upgrade.
# The defaults are shipped in /usr/share/sentry and copied only when absent.
install_policy() {
    install -d -m 0755 /etc/sentry
    if [ -e /etc/sentry/sentry.conf ] || [ -L /etc/sentry/sentry.conf ]; then
        :
    elif [ -f /etc/portsentry/portsentry.conf ]; then
        echo "sentry: migration: /etc/sentry/sentry.conf -> /etc/portsentry/portsentry.conf (used unchanged)"
        ln -s /etc/portsentry/portsentry.conf /etc/sentry/sentry.conf
        install -d /var/lib/portsentry /etc/systemd/system/sentry-enforcer.service.d
        printf '[Service]\n# PortSentry configuration in use: its files live here.\nReadWritePaths=-/var/lib/portsentry\n' \
            >/etc/systemd/system/sentry-enforcer.service.d/portsentry.conf
        # ...and its files are the worker's (the unit gives it no CAP_CHOWN).
        install -d /etc/tmpfiles.d
        printf '# sentry: the PortSentry configuration in use keeps its files here; the\n# enforcer worker writes them (the unit gives it no CAP_CHOWN).\nd /var/lib/portsentry 0755 sentry-worker sentry-worker -\nZ /var/lib/portsentry - sentry-worker sentry-worker -\n' \
            >/etc/tmpfiles.d/sentry-portsentry.conf
        echo "sentry: stop PortSentry itself (systemctl disable --now portsentry)"
    else
        install -m 0644 /usr/share/sentry/sentry.conf /etc/sentry/sentry.conf
    fi
    if [ ! -e /etc/sentry/sentry.ignore ]; then
        install -m 0644 /usr/share/sentry/sentry.ignore /etc/sentry/sentry.ignore
    fi
}

case "$1" in
configure|abort-upgrade|abort-deconfigure|abort-remove)
    getent passwd sentry >/dev/null || useradd --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sentry
    # The enforcer's unprivileged worker (the root parent starts it as this user).
    getent passwd sentry-worker >/dev/null || useradd --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sentry-worker
    install -d -m 0700 /var/lib/sentry
    install -d -m 0750 /var/log/sentry
    [ -e /etc/hosts.deny ] || install -m 0644 /dev/null /etc/hosts.deny
    install_policy
    # The worker owns its state and audit log before the enforcer starts (which only
    # checks them), and takes over what an older, root-only version left
    # (tmpfiles.d/sentry.conf; at boot too).
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create sentry.conf
        if [ -e /etc/tmpfiles.d/sentry-portsentry.conf ]; then
            systemd-tmpfiles --create sentry-portsentry.conf
        fi
    else
        # No systemd-tmpfiles: the snippet's d and Z lines by hand (directories and
        # regular files with one link, never through a symbolic link), while the
        # directory is still root's.
        for d in /var/lib/sentry /var/log/sentry; do
            if [ "$(stat -c %u "$d")" = 0 ]; then
                find "$d" -mindepth 1 \( -type d -o -type f -links 1 \) \
                    -exec chown -h sentry-worker:sentry-worker {} +
                chown sentry-worker:sentry-worker "$d"
            fi
        done
    fi
    for u in $UNITS; do
        if command -v deb-systemd-helper >/dev/null; then
            # Only removes a mask deb-systemd-helper itself set on package removal.
            deb-systemd-helper unmask "$u" >/dev/null || true
            # was-enabled is true for a unit never installed before, so a first
            # install enables it; an upgrade keeps what the admin chose.
            if deb-systemd-helper --quiet was-enabled "$u"; then
                deb-systemd-helper enable "$u" >/dev/null || true
            else
                deb-systemd-helper update-state "$u" >/dev/null || true
            fi
        elif [ -z "$2" ]; then
            # No init-system-helpers: what `systemctl enable` would create.
            install -d /etc/systemd/system/multi-user.target.wants
            ln -sf "/lib/systemd/system/$u" "/etc/systemd/system/multi-user.target.wants/$u"
        fi
    done
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            # Upgrade: the new binaries take over. The sensor queues block requests
            # while the enforcer restarts; only units that were running restart.
            action=try-restart
        else
            action=start
        fi
        # deb-systemd-invoke (init-system-helpers, a dependency of systemd)
        # honours policy-rc.d, so image builds that forbid starts are obeyed.
        # One unit at a time, the enforcer first: the sensor keeps detecting and
        # queues its requests while the enforcer restarts, then restarts itself.
        for u in $UNITS; do
            deb-systemd-invoke $action "$u" >/dev/null || true
        done
    fi
    ;;
esac
exit 0
POST
cat >"$ROOT/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
# Upgrades keep the daemons running until postinst restarts them with the new
# binaries; only a removal stops them. The nftables table stays, so blocks hold.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop sentry-sensor.service sentry-enforcer.service >/dev/null || true
fi
exit 0
PRERM
cat >"$ROOT/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
UNITS="sentry-enforcer.service sentry-sensor.service"
case "$1" in
remove)
    # Disabled (symlinks removed); deb-systemd-helper's state remembers whether the
    # units were enabled, so a reinstall restores the admin's choice.
    for u in $UNITS; do
        if command -v deb-systemd-helper >/dev/null; then
            deb-systemd-helper mask "$u" >/dev/null || true
        else
            rm -f "/etc/systemd/system/multi-user.target.wants/$u"
        fi
    done
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    ;;
purge)
    for u in $UNITS; do
        if command -v deb-systemd-helper >/dev/null; then
            deb-systemd-helper purge "$u" >/dev/null || true
            deb-systemd-helper unmask "$u" >/dev/null || true
        fi
        rm -f "/etc/systemd/system/multi-user.target.wants/$u"
    done
    # The policy (copied or linked by postinst, never a conffile), the migration
    # drop-in, state (blocks, journal, history), the audit log and the user.
    rm -f /etc/sentry/sentry.conf /etc/sentry/sentry.ignore
    rmdir /etc/sentry 2>/dev/null || true
    rm -f /etc/systemd/system/sentry-enforcer.service.d/portsentry.conf
    rmdir /etc/systemd/system/sentry-enforcer.service.d 2>/dev/null || true
    rm -f /etc/tmpfiles.d/sentry-portsentry.conf
    rm -rf /var/lib/sentry /var/log/sentry
    if getent passwd sentry >/dev/null; then
        userdel sentry >/dev/null 2>&1 || true
    fi
    if getent group sentry >/dev/null; then
        groupdel sentry >/dev/null 2>&1 || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    ;;
esac
exit 0
POSTRM
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"
(cd "$ROOT" && find usr lib etc -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) >"$ROOT/DEBIAN/md5sums"
deb="$OUT/sentry_${VERSION}_${ARCH}.deb"
fakeroot dpkg-deb --build --root-owner-group "$ROOT" "$deb" >/dev/null 2>&1 || \
    dpkg-deb --build --root-owner-group "$ROOT" "$deb"
echo "built $deb"
