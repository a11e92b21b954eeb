#!/bin/sh
# Start, stop or inspect the installed sentry pair on a machine WITHOUT systemd as
# PID 1 (containers, minimal VMs). With systemd, use the units instead (make run
# does). Privilege separation matches the units:
#   enforcer: the root parent, capability bounding set CAP_NET_ADMIN
#             (+CAP_NET_RAW with SENTRY_NET_RAW=1, for a legacy iptables KILL_ROUTE)
#             +CAP_SYS_PTRACE (the sensor's executable check) +CAP_SETUID+CAP_SETGID
#             (it starts and restarts its worker as `sentry-worker`, and signals it from
#             a child with the worker's uid: no CAP_KILL), no CAP_CHOWN (it creates and
#             chowns none of the worker's files: this script makes them the worker's
#             first, as tmpfiles.d does under systemd), member of the sensor's group (to
#             hand it enforcer.sock), no_new_privs; its worker runs as `sentry-worker`
#             with no capability.
#   sensor:   user `sentry`, no capabilities at all (the enforcer hands it the
#             NFLOG socket it reads), no_new_privs.
# Logs: /var/log/sentry-pair/{enforcer,sensor}.log (root's: the shell appends to them as
# root, so they are never in /var/log/sentry, which the worker owns and where it could put
# a symbolic link in their place); audit: AUDIT_LOG (sentry.conf).
set -eu

SBIN=${SBIN:-/usr/local/sbin}
CONF=${CONF:-/etc/sentry/sentry.conf}
RUN=${RUN:-/run/sentry}
STATE=${STATE:-/var/lib/sentry}
LOGDIR=${LOGDIR:-/var/log/sentry}
PAIRLOG=${PAIRLOG:-/var/log/sentry-pair}
MODES=${MODES:--atcp -audp}
USER_=${SENSOR_USER:-sentry}

die() { echo "sentry-pair: $*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The worker's directory $1 (mode $2), made or made the worker's: what the shipped
# tmpfiles.d snippet does at boot under systemd. What an older, root-only enforcer left
# in it becomes the worker's too (the snippet's Z line): directories and regular files
# with one link, never through a symbolic link, and only while the directory is still
# root's (once it is the worker's, what is in it is the worker's doing).
worker_dir() {
    [ -L "$1" ] && die "$1 is a symbolic link"
    if [ -d "$1" ] && [ "$(stat -c %u "$1")" = 0 ]; then
        find "$1" -mindepth 1 \( -type d -o -type f -links 1 \) \
            -exec chown -h sentry-worker:sentry-worker {} +
    fi
    install -d -m "$2" -o sentry-worker -g sentry-worker "$1"
}

wait_status() {
    i=0
    while [ $i -lt 100 ]; do
        if "$SBIN/sentryctl" --runtime-dir "$RUN" status >/dev/null 2>&1; then return 0; fi
        i=$((i + 1)); sleep 0.1
    done
    return 1
}

start() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    id "$USER_" >/dev/null 2>&1 || die "user $USER_ missing (make install creates it)"
    id sentry-worker >/dev/null 2>&1 || die "user sentry-worker missing (make install creates it)"
    install -d -m 0755 -o root -g root "$RUN"
    # The worker writes the state and the audit log (AUDIT_LOG is in $LOGDIR as shipped):
    # they must be its own before the enforcer starts, which only checks them. The
    # installed tmpfiles.d snippet when systemd-tmpfiles is there (it names the default
    # directories), else the same by hand. Another directory the configuration names
    # (HISTORY_FILE, BLOCKED_FILE, AUDIT_LOG elsewhere) is for the admin: check-config
    # below prints the command that makes a missing one, and the enforcer refuses to
    # start, naming each path, until it is the worker's.
    if [ "$STATE" = /var/lib/sentry ] && [ "$LOGDIR" = /var/log/sentry ] &&
        command -v systemd-tmpfiles >/dev/null 2>&1 &&
        systemd-tmpfiles --create sentry.conf 2>/dev/null; then
        :
    else
        worker_dir "$STATE" 0700
        worker_dir "$LOGDIR" 0750
    fi
    # Root appends to these: a real directory of root's alone, never a link.
    [ -L "$PAIRLOG" ] && die "$PAIRLOG is a symbolic link"
    install -d -m 0750 -o root -g root "$PAIRLOG"
    "$SBIN/sentryctl" check-config "$CONF" || die "configuration $CONF is invalid"
    gid=$(id -g "$USER_")
    if alive "$RUN/enforcer.pid"; then
        echo "enforcer already running (pid $(cat "$RUN/enforcer.pid"))"
    else
        bound=-all,+net_admin,+sys_ptrace,+setuid,+setgid
        [ "${SENTRY_NET_RAW:-0}" = 1 ] && bound="$bound,+net_raw"
        setsid setpriv --bounding-set "$bound" \
            --groups "$gid" --no-new-privs \
            "$SBIN/sentry-enforcer" --config "$CONF" --runtime-dir "$RUN" --state-dir "$STATE" \
            --sensor-user "$USER_" --log-stderr </dev/null >>"$PAIRLOG/enforcer.log" 2>&1 &
        echo $! >"$RUN/enforcer.pid"
        wait_status || die "enforcer did not come up; see $PAIRLOG/enforcer.log"
    fi
    if alive "$RUN/sensor.pid"; then
        echo "sensor already running (pid $(cat "$RUN/sensor.pid"))"
    else
        # shellcheck disable=SC2086 # MODES is a list of flags
        setsid setpriv --reuid "$USER_" --regid "$USER_" --clear-groups \
            --securebits +noroot,+noroot_locked --bounding-set -all --inh-caps -all \
            --no-new-privs \
            "$SBIN/sentry-sensor" --config "$CONF" --runtime-dir "$RUN" --log-stderr $MODES \
            </dev/null >>"$PAIRLOG/sensor.log" 2>&1 &
        echo $! >"$RUN/sensor.pid"
    fi
    # Wait (bounded) until the enforcer reports the sensor connected.
    i=0
    while [ $i -lt 100 ]; do
        if "$SBIN/sentryctl" --runtime-dir "$RUN" --json status 2>/dev/null | grep -Eq '"sensor": ?[{]'; then
            break
        fi
        alive "$RUN/sensor.pid" || die "sensor exited; see $PAIRLOG/sensor.log"
        i=$((i + 1)); sleep 0.1
    done
    "$SBIN/sentryctl" --runtime-dir "$RUN" status
    echo
    echo "sentry is running. Logs: $PAIRLOG/enforcer.log $PAIRLOG/sensor.log"
    echo "Check it any time with: sentryctl status | sentryctl blocked"
}

stop_one() {
    pidfile=$RUN/$1.pid
    if alive "$pidfile"; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stopped $1 (pid $pid)"
    fi
    rm -f "$pidfile"
}

stop() {
    stop_one sensor
    stop_one enforcer
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) exec "$SBIN/sentryctl" --runtime-dir "$RUN" status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
