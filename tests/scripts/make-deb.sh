#!/bin/sh
# Build a Debian package from release binaries: sentry_<version>_<arch>.deb.
# Usage: make deb   (runs: sh tests/scripts/make-deb.sh RELEASE_DIR OUT_DIR)
# Layout follows Debian (/usr/sbin, /lib/systemd/system, /usr/share/man,
# /etc/sentry as conffiles). postinst creates the `sentry` user and the state
# and log directories; the units are enabled but not started (start them with
# systemctl enable --now sentry-enforcer sentry-sensor).
set -eu
REL=${1:?release dir}
OUT=${2:-.}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
ARCH=$(dpkg --print-architecture)
ROOT=$(mktemp -d)
chmod 0755 "$ROOT"
trap 'rm -rf "$ROOT"' EXIT

install -d "$ROOT/DEBIAN" "$ROOT/usr/sbin" "$ROOT/lib/systemd/system" \
    "$ROOT/usr/share/man/man8" "$ROOT/usr/share/man/man5" "$ROOT/etc/sentry" \
    "$ROOT/usr/share/doc/sentry"
for b in sentry-sensor sentry-enforcer sentryctl; do
    install -m 0755 "$REL/$b" "$ROOT/usr/sbin/$b"
done
for u in sentry-enforcer/dist/sentry-enforcer.service sentry-sensor/dist/sentry-sensor.service; do
    sed 's|/usr/local/sbin|/usr/sbin|g' "$u" >"$ROOT/lib/systemd/system/$(basename "$u")"
done
for m in sentry-sensor/man/sentry-sensor.8 sentry-enforcer/man/sentry-enforcer.8 sentry-enforcer/man/sentryctl.8; do
    gzip -9n <"$m" >"$ROOT/usr/share/man/man8/$(basename "$m").gz"
done
gzip -9n <policy/man/sentry.conf.5 >"$ROOT/usr/share/man/man5/sentry.conf.5.gz"
install -m 0644 policy/dist/sentry.conf policy/dist/sentry.ignore "$ROOT/etc/sentry/"
install -d "$ROOT/etc/logrotate.d"
install -m 0644 sentry-enforcer/dist/sentry.logrotate "$ROOT/etc/logrotate.d/sentry"
install -m 0644 LICENSE "$ROOT/usr/share/doc/sentry/copyright"

cat >"$ROOT/DEBIAN/control" <<CTRL
Package: sentry
Version: $VERSION
Architecture: $ARCH
Maintainer: sentry maintainers <maintainers@example.invalid>
Depends: libc6, nftables, util-linux
Conflicts: portsentry
Section: net
Priority: optional
Description: privilege-separated port scan detector (PortSentry successor)
 sentry-sensor (unprivileged, seccomp-confined) detects port scans in all of
 PortSentry's modes; sentry-enforcer (a small root core) re-checks and blocks
 the scanner in an nftables set, hosts.deny or with PortSentry's commands.
 Reads portsentry.conf unchanged.
CTRL
printf '/etc/sentry/sentry.conf\n/etc/sentry/sentry.ignore\n/etc/logrotate.d/sentry\n' >"$ROOT/DEBIAN/conffiles"
cat >"$ROOT/DEBIAN/postinst" <<'POST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    getent passwd sentry >/dev/null || useradd --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sentry
    install -d -m 0700 /var/lib/sentry
    install -d -m 0750 /var/log/sentry
    [ -e /etc/hosts.deny ] || install -m 0644 /dev/null /etc/hosts.deny
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable sentry-enforcer.service sentry-sensor.service >/dev/null
        echo "sentry: start with: systemctl start sentry-enforcer sentry-sensor"
    fi
fi
POST
cat >"$ROOT/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl disable --now sentry-sensor.service sentry-enforcer.service >/dev/null 2>&1 || true
fi
PRERM
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm"
deb="$OUT/sentry_${VERSION}_${ARCH}.deb"
fakeroot dpkg-deb --build --root-owner-group "$ROOT" "$deb" >/dev/null 2>&1 || \
    dpkg-deb --build --root-owner-group "$ROOT" "$deb"
echo "built $deb"
