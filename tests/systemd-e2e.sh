#!/usr/bin/env bash
# End-to-end test of the Debian package under a real systemd (PID 1 of its own namespaces).
#
#   tests/systemd-e2e.sh [PACKAGE.deb]
#
# Default package: target/debian/vamsa-migrate_<version>_<arch>.deb (packaging/build-deb).
# Runs as root on a Debian 12 machine that has systemd and PostgreSQL's server and client
# packages installed (they are used from the host's /, read-only). Nothing on the host
# changes: systemd boots in new pid/mount/net/uts/ipc/cgroup namespaces on an overlay of /
# whose writable layer is a tmpfs of that mount namespace, with a private /dev, /run and
# /tmp, a read-only /sys and /proc/sys, and the units that would touch the host masked. The
# test drives it from outside with nsenter, prints PASS/FAIL per check, and always cleans up
# (kills the namespace, removes its cgroup and temp folder), also on timeout or Ctrl-C.
#
# E2E_HOLD=N keeps the namespace running after section N (until E2E_TIMEOUT, default 480 s,
# or Ctrl-C) and prints the nsenter command to look inside.
#
# Outputs, in E2E_OUTPUT_DIR (default target/systemd-e2e):
#   systemctl-status.txt  `systemctl status vamsa-migrate` after the hook applied a migration
#   journal.txt           `journalctl -u vamsa-migrate` at the end (before the purge)
#   journal.json          the same as `-o json`
#   journal-boot.txt      the whole journal of the namespace's boot (to debug a failure)
# Exit status: 0 when every check passed, 1 otherwise, 2 when the test could not start.
set -uo pipefail

LIMIT="${E2E_TIMEOUT:-480}"
if [ -z "${VAMSA_E2E_UNDER_TIMEOUT:-}" ]; then
    export VAMSA_E2E_UNDER_TIMEOUT=1
    # Bounded in time: SIGTERM after LIMIT seconds (the trap cleans up), SIGKILL 30 s later.
    exec timeout --kill-after=30 "$LIMIT" "$0" "$@"
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${E2E_OUTPUT_DIR:-$repo/target/systemd-e2e}"
started_at=$(date +%s)

say() { printf '%s\n' "$*"; }
die() {
    say "FAIL: $*"
    exit 2
}

[ "$(id -u)" -eq 0 ] || die "run as root (it boots systemd in namespaces)"
for tool in unshare nsenter timeout ip python3; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
[ -x /lib/systemd/systemd ] || die "systemd is not installed (apt-get install systemd)"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[ -n "$pg_bin" ] && [ -x "$pg_bin/postgres" ] || die "PostgreSQL server is not installed (apt-get install postgresql)"
pg_version="$(basename "$(dirname "$pg_bin")")"
command -v psql >/dev/null || die "psql is missing (apt-get install postgresql-client)"

deb="${1:-}"
if [ -z "$deb" ]; then
    version="$(cd "$repo" && dpkg-parsechangelog -S Version)"
    deb="$repo/target/debian/vamsa-migrate_${version}_$(dpkg --print-architecture).deb"
fi
[ -f "$deb" ] || die "package $deb not found: build it with packaging/build-deb"
deb="$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"

mkdir -p "$out"
rm -f "$out"/systemctl-status.txt "$out"/journal.txt "$out"/journal.json "$out"/journal-boot.txt

# --- State for the cleanup -----------------------------------------------------------
tmp=""
cgroup=""
launcher=""
pid1=""
hold_pid=""

# Kills everything in the test's cgroup (the launcher, and systemd with all it started),
# removes the cgroup and the temp folder. Used by the EXIT trap and by the reaper.
teardown() {
    local cg="$1" dir="$2"
    if [ -n "$cg" ] && [ -d "$cg" ]; then
        for _ in $(seq 1 50); do
            echo 1 >"$cg/cgroup.kill" 2>/dev/null
            find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
            [ -d "$cg" ] || break
            sleep 0.2
        done
        [ -d "$cg" ] && echo "warning: could not remove the cgroup $cg" >&2
    fi
    [ -n "$dir" ] && rm -rf "$dir"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [ -n "$hold_pid" ] && kill "$hold_pid" 2>/dev/null
    if [ -n "$pid1" ] && [ -d "/proc/$pid1" ]; then
        timeout 20 nsenter -t "$pid1" -a -r journalctl -b --no-pager >"$out/journal-boot.txt" 2>&1
    fi
    teardown "$cgroup" "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'say "FAIL: interrupted or timed out (limit ${LIMIT}s)"; exit 1' INT TERM

tmp="$(mktemp -d "${TMPDIR:-/tmp}/vamsa-e2e.XXXXXX")"
mkdir -p "$tmp/root" "$tmp/layers" "$tmp/share"
touch "$tmp/console.log"
cp "$deb" "$tmp/share/vamsa-migrate.deb"

# A cgroup of our own (cgroup v2): the namespace's systemd sees it as the root.
cgroup_root=""
for candidate in /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ "$(stat -f -c %T "$candidate" 2>/dev/null)" = "cgroup2fs" ]; then
        cgroup_root="$candidate"
        break
    fi
done
[ -n "$cgroup_root" ] || die "no cgroup v2 hierarchy mounted"
cgroup="$cgroup_root/vamsa-e2e.$$"
mkdir "$cgroup" || die "cannot create $cgroup"
[ -e "$cgroup/cgroup.kill" ] || die "cgroup.kill is not supported by this kernel (Linux 5.14 or newer needed)"

# The reaper: should this script be killed outright (SIGKILL), it tears the namespace down.
script_pid=$$
setsid bash -c "$(declare -f teardown)"'
    while kill -0 "$0" 2>/dev/null; do sleep 1; done
    teardown "$1" "$2"' "$script_pid" "$cgroup" "$tmp" </dev/null >/dev/null 2>&1 &

# Units that would act on the host (clock, disks, kernel, consoles) or are useless here.
masked="systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service
systemd-timesyncd.service systemd-logind.service getty@.service serial-getty@.service
console-getty.service container-getty@.service e2scrub_reap.service e2scrub_all.timer
fstrim.timer apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer man-db.timer
systemd-pstore.service systemd-modules-load.service systemd-sysctl.service
systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
systemd-random-seed.service systemd-remount-fs.service kmod-static-nodes.service
systemd-tmpfiles-setup-dev.service systemd-hwdb-update.service systemd-firstboot.service
systemd-repart.service systemd-machine-id-commit.service cron.service ssh.service
sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount
sys-fs-fuse-connections.mount dev-hugepages.mount"

# Runs inside the new namespaces as their PID 1, then becomes systemd.
inner='set -eu
T="$1"; R="$T/root"
mount -t tmpfs -o size=4g,mode=0700 tmpfs "$T/layers"
mkdir -p "$T/layers/upper" "$T/layers/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/layers/upper,workdir=$T/layers/work" "$R"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount --rbind /sys "$R/sys"
umount -R "$R/sys/fs/cgroup"
mount -o remount,bind,ro "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
# A private /dev with the usual nodes; the console is a file of the test.
mount -t tmpfs -o mode=0755,nosuid tmpfs "$R/dev"
for n in null zero full random urandom tty; do
    touch "$R/dev/$n"
    mount --bind "/dev/$n" "$R/dev/$n"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
touch "$R/dev/console"
mount --bind "$T/console.log" "$R/dev/console"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
mkdir -p "$R/e2e"
mount --bind "$T/share" "$R/e2e"
for u in $MASKED; do ln -sf /dev/null "$R/etc/systemd/system/$u"; done
# Docker-style images forbid service starts from maintainer scripts; a real machine does not.
rm -f "$R/usr/sbin/policy-rc.d"
rm -f "$R/etc/machine-id"; : > "$R/etc/machine-id"
# What systemd does itself when it is not in a container: shared propagation (needed for
# the credentials of LoadCredential=). The namespace stays private towards the host.
mount --make-rshared "$R"
ip link set lo up
hostname vamsa-e2e
exec chroot "$R" /usr/bin/env -i container=vamsa-e2e PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --log-target=journal --show-status=no
'

(
    echo "$BASHPID" >"$cgroup/cgroup.procs" || exit 1
    exec env MASKED="$masked" unshare --pid --fork --kill-child --mount --propagation private \
        --net --uts --ipc --cgroup bash -c "$inner" e2e-init "$tmp"
) </dev/null >"$tmp/launcher.log" 2>&1 &
launcher=$!
disown "$launcher" # its death by cgroup.kill is expected: no "Killed" job report

# PID 1 of the namespace: the launcher's child, once it is systemd.
for _ in $(seq 1 100); do
    pid1="$(pgrep -P "$launcher" | head -n 1)"
    [ -n "$pid1" ] && [ "$(cat "/proc/$pid1/comm" 2>/dev/null)" = "systemd" ] && break
    pid1=""
    [ -d "/proc/$launcher" ] || break
    sleep 0.1
done
[ -n "$pid1" ] || die "systemd did not start in the namespace: $(cat "$tmp/launcher.log")"

# Runs a command inside, with a clean environment and a time limit.
inside() {
    timeout 120 nsenter -t "$pid1" -a -r -w \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
        VAMSA_HOOK_TRIGGER_TIMEOUT=90s "$@"
}
# The same with stdin closed (most commands).
in_() { inside "$@" </dev/null; }
sql() { in_ runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -d "${DB:-postgres}" -c "$1"; }

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    say "PASS: $*"
}
fail() {
    failed=$((failed + 1))
    say "FAIL: $*"
}
check() {
    # check DESCRIPTION COMMAND...: PASS when the command succeeds.
    local what="$1"
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
show() { in_ systemctl show -P "$2" "$1"; }
details() {
    # Prints a captured output indented, for a FAIL's context.
    sed 's/^/    | /' <<<"$1" | head -n "${2:-40}"
}

section() {
    # section N TITLE: holds here when E2E_HOLD asks for it, then announces the section.
    if [ -n "${E2E_HOLD:-}" ] && [ "$1" -gt "$E2E_HOLD" ]; then
        say "systemd-e2e: holding after section $E2E_HOLD; look inside with:"
        say "  nsenter -t $pid1 -a -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb bash"
        sleep infinity &
        hold_pid=$!
        wait "$hold_pid"
    fi
    say "--- $1. $2"
}

say "systemd-e2e: $deb"
say "systemd-e2e: PostgreSQL $pg_version, namespace PID 1 is host pid $pid1"

section 1 "Boot"
state=""
for _ in $(seq 1 120); do
    state="$(in_ systemctl is-system-running 2>/dev/null)"
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
if [ "$state" = "running" ] || [ "$state" = "degraded" ]; then
    pass "systemd booted in the namespaces ($state)"
    [ "$state" = "degraded" ] && details "$(in_ systemctl --failed --no-legend)"
else
    fail "systemd did not reach running (state: ${state:-none})"
    details "$(tail -n 30 "$tmp/console.log"; in_ systemctl --failed --no-legend 2>&1)"
    exit 1
fi

section 2 "Install"
install_out="$(in_ dpkg -i /e2e/vamsa-migrate.deb 2>&1)"
if [ $? -eq 0 ]; then pass "dpkg -i installs the package"; else
    fail "dpkg -i installs the package"
    details "$install_out"
    exit 1
fi
check "postinst created the system user and group vamsa-migrate" \
    in_ sh -c 'getent passwd vamsa-migrate | grep -q ":/var/lib/vamsa-migrate:" && getent group vamsa-migrate >/dev/null'
perms="$(in_ stat -c '%U:%G %a' /var/lib/vamsa-migrate/backups /etc/vamsa-migrate/config.toml /run/vamsa-migrate | tr '\n' ' ')"
if [ "$perms" = "vamsa-migrate:vamsa-migrate 700 root:vamsa-migrate 640 vamsa-migrate:vamsa-migrate 750 " ]; then
    pass "backups 0700, config.toml 0640 root:vamsa-migrate, /run/vamsa-migrate 0750 ($perms)"
else
    fail "ownership and modes of backups, config.toml, /run/vamsa-migrate: $perms"
fi
enabled="$(in_ systemctl is-enabled vamsa-migrate.socket vamsa-migrate.service | tr '\n' ' ')"
active="$(in_ systemctl is-active vamsa-migrate.socket vamsa-migrate.service | tr '\n' ' ')"
if [ "$enabled" = "enabled enabled " ] && [ "$active" = "active inactive " ]; then
    pass "socket and service enabled; socket listening, service not started before database_url is set"
else
    fail "after install: enabled: $enabled; active: $active"
fi
timer="$(in_ systemctl is-enabled vamsa-migrate-verify.timer) $(in_ systemctl is-active vamsa-migrate-verify.timer)"
[ "$timer" = "disabled inactive" ] && pass "the verify timer is installed, neither enabled nor started" ||
    fail "the verify timer after install: $timer"
sock="$(in_ stat -c '%U:%G %a %F' /run/vamsa-migrate/trigger.sock)"
[ "$sock" = "root:vamsa-migrate 660 socket" ] && pass "trigger socket is 0660 root:vamsa-migrate" ||
    fail "trigger socket: $sock"

# Started before it is configured: the optional credential does not stop the unit (no
# 243/CREDENTIALS); the daemon itself refuses, naming database_url.
in_ systemctl start vamsa-migrate >/dev/null 2>&1
unconfigured="$(show vamsa-migrate.service ExecMainStatus)"
if [ "$unconfigured" != "243" ] && [ "$unconfigured" != "0" ] &&
    in_ journalctl -u vamsa-migrate --no-pager -o cat | grep -q "database_url is not set"; then
    pass "unconfigured start: the unit runs without a credential file; the daemon exits $unconfigured: database_url is not set"
else
    fail "unconfigured start: exit status $unconfigured"
    details "$(in_ journalctl -u vamsa-migrate --no-pager -n 10)"
fi
in_ systemctl stop vamsa-migrate.service 2>/dev/null
in_ systemctl reset-failed vamsa-migrate.service 2>/dev/null

# Every key of the packaged config, uncommented with its documented default, is accepted.
all_keys="$(in_ sh -ec 'sed -E "s/^# ([a-z_]+ = )/\1/" /etc/vamsa-migrate/config.toml > /tmp/all-keys.toml
grep -cE "^[a-z_]+ = " /tmp/all-keys.toml')"
keys_out="$(in_ vamsa-migrate backups --config /tmp/all-keys.toml 2>&1)"
if [ $? -eq 0 ] && [ "${all_keys:-0}" -ge 20 ]; then
    pass "all $all_keys keys of the packaged config.toml, uncommented, are valid"
else
    fail "packaged config.toml with every key uncommented ($all_keys keys)"
    details "$keys_out"
fi

verify_out="$(in_ systemd-analyze verify /lib/systemd/system/vamsa-migrate.service /lib/systemd/system/vamsa-migrate.socket \
    /lib/systemd/system/vamsa-migrate-verify.service /lib/systemd/system/vamsa-migrate-verify.timer 2>&1)"
if [ $? -eq 0 ] && [ -z "$verify_out" ]; then
    pass "systemd-analyze verify: clean (no output)"
else
    fail "systemd-analyze verify"
    details "$verify_out"
fi
security_out="$(in_ systemd-analyze security --no-pager vamsa-migrate.service 2>&1)"
exposure="$(sed -n 's/.*Overall exposure level for vamsa-migrate.service: \([0-9.]*\).*/\1/p' <<<"$security_out")"
if [ -n "$exposure" ] && python3 -c "import sys; sys.exit(0 if float('$exposure') <= 2.0 else 1)"; then
    pass "systemd-analyze security: overall exposure $exposure <= 2.0"
else
    fail "systemd-analyze security: overall exposure '${exposure}' (must be <= 2.0)"
    details "$security_out" 60
fi

section 3 "Database, migrations checkout with the hook, configuration"
in_ systemctl start "postgresql@$pg_version-main" >/dev/null 2>&1 ||
    in_ pg_createcluster --start "$pg_version" main >/dev/null 2>&1
for _ in $(seq 1 60); do
    in_ runuser -u postgres -- pg_isready -q -h 127.0.0.1 && break
    sleep 0.5
done
db_password="e2e-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# As the README's "Configure" step 1: CREATEDB lets rehearse = "auto" rehearse each release.
if sql "CREATE ROLE vamsa LOGIN CREATEDB PASSWORD '$db_password'" && sql "CREATE DATABASE vamsa OWNER vamsa"; then
    pass "PostgreSQL $pg_version running inside; role and database vamsa created"
else
    fail "PostgreSQL role and database"
    exit 1
fi

# An "upstream" repository and the deployed checkout (/srv/vamsa) with the hook installed.
setup_out="$(in_ sh -ec '
git config --global user.email e2e@example.invalid
git config --global user.name "vamsa e2e"
git config --global init.defaultBranch main
git config --global pull.ff only
mkdir -p /srv/upstream/drizzle
cp -r /usr/share/vamsa-migrate/demo-migrations/. /srv/upstream/drizzle/
cd /srv/upstream && git init -q && git add -A && git commit -qm "bundled migrations"
git clone -q /srv/upstream /srv/vamsa
ln -s /usr/share/vamsa-migrate/hooks/post-merge /srv/vamsa/.git/hooks/post-merge
' 2>&1)" && pass "checkout /srv/vamsa (git clone) with the packaged post-merge hook linked in" ||
    { fail "checkout set-up"; details "$setup_out"; }

# The password as a systemd credential (the unit's optional LoadCredential=); none in the config.
inside sh -ec "install -d -m 0700 /etc/credstore; umask 077
printf '%s\n' '$db_password' > /etc/credstore/vamsa-migrate.database_password" </dev/null
inside sh -ec 'cat >> /etc/vamsa-migrate/config.toml' <<'EOF'

# --- systemd-e2e ---
database_url = "postgres://vamsa@127.0.0.1:5432/vamsa"
migrations_dir = "/srv/vamsa/drizzle"
EOF
in_ systemctl daemon-reload
config_check="$(in_ env VAMSA_MIGRATE_DATABASE_PASSWORD_FILE=/etc/credstore/vamsa-migrate.database_password vamsa-migrate status 2>&1)"
[ $? -eq 3 ] && pass "the packaged config plus database_url and migrations_dir is valid (status: 5 pending)" ||
    { fail "config check with vamsa-migrate status"; details "$config_check"; }

tracking_rows() { DB=vamsa sql "SELECT count(*) FROM drizzle.__drizzle_migrations" 2>/dev/null || echo none; }

section 4 "Start: migrations applied before the unit is active"
start_out="$(in_ systemctl start vamsa-migrate 2>&1)"
start_status=$?
rows="$(tracking_rows)"
if [ $start_status -eq 0 ] && [ "$rows" = "5" ] && [ "$(in_ systemctl is-active vamsa-migrate)" = "active" ]; then
    pass "systemctl start returned with the 5 bundled migrations already applied (tracking rows: $rows; password from the credential store)"
else
    fail "systemctl start vamsa-migrate (exit $start_status, tracking rows: $rows)"
    details "$start_out$(in_ journalctl -u vamsa-migrate --no-pager -n 30)"
fi
if in_ journalctl -u vamsa-migrate --no-pager -o cat REHEARSAL=passed | grep -q "Rehearsal passed"; then
    pass "the start-up release was rehearsed on a scratch copy first (journal: REHEARSAL=passed)"
else
    fail "no REHEARSAL=passed in the journal of the start-up run"
    details "$(in_ journalctl -u vamsa-migrate --no-pager -n 30)"
fi
status_text="$(show vamsa-migrate.service StatusText)"
[ "$status_text" = "Up to date: 5 migrations applied" ] && pass "STATUS= is \"$status_text\"" ||
    fail "STATUS= is \"$status_text\""
main_pid="$(show vamsa-migrate.service MainPID)"
user="$(in_ ps -o user= -p "$main_pid" | tr -d ' ')"
[ "$user" = "vamsa-migrate" ] && pass "the daemon runs as user vamsa-migrate" || fail "the daemon runs as '$user'"
if in_ journalctl -u vamsa-migrate --no-pager -o cat | grep -q "trigger socket from systemd"; then
    pass "the daemon took the trigger socket from vamsa-migrate.socket (Sockets=)"
else
    fail "the daemon did not get the socket from systemd"
fi

section 5 "The app unit (with the packaged drop-in) starts only after the migrations"
in_ systemctl stop vamsa-migrate 2>/dev/null # (warns that the socket can still activate it)
sql "DROP DATABASE vamsa WITH (FORCE)" && sql "CREATE DATABASE vamsa OWNER vamsa"
inside sh -ec 'cat > /etc/systemd/system/vamsa-app.service' <<EOF
[Unit]
Description=Stand-in for the Vamsa application (systemd-e2e)
[Service]
Type=oneshot
RemainAfterExit=yes
Environment=PGPASSWORD=$db_password
ExecStart=/bin/sh -c 'psql -X -At -h 127.0.0.1 -U vamsa -d vamsa -f /etc/vamsa-app.sql > /run/vamsa-app.out'
EOF
inside sh -ec 'cat > /etc/vamsa-app.sql' <<'EOF'
SELECT count(*) FROM drizzle.__drizzle_migrations;
SELECT to_regclass('public.media_tags');
EOF
in_ mkdir -p /etc/systemd/system/vamsa-app.service.d
in_ cp /usr/share/vamsa-migrate/systemd/vamsa-app-dropin.conf /etc/systemd/system/vamsa-app.service.d/vamsa-migrate.conf
in_ systemctl daemon-reload
app_out="$(in_ systemctl start vamsa-app 2>&1)"
app_seen="$(in_ cat /run/vamsa-app.out 2>/dev/null | tr '\n' ' ')"
migrate_ready="$(show vamsa-migrate.service ActiveEnterTimestampMonotonic)"
app_started="$(show vamsa-app.service ExecMainStartTimestampMonotonic)"
if [ "$app_seen" = "5 media_tags " ] && [ "${migrate_ready:-0}" -gt 0 ] && [ "${app_started:-0}" -gt "$migrate_ready" ]; then
    pass "starting the app started vamsa-migrate first; the app saw 5 migrations and media_tags"
else
    fail "app ordering: app saw '$app_seen'; vamsa-migrate active at $migrate_ready, app started at $app_started"
    details "$app_out"
fi

section 6 "The post-merge hook after git pull"
# A new migration, made with `vamsa-migrate new` upstream.
in_ sh -ec '
cd /srv/upstream
vamsa-migrate new add_person_middle_name --migrations-dir drizzle >/dev/null
f=$(ls drizzle/0005_*.sql)
printf "%s\n" "ALTER TABLE \"persons\" ADD COLUMN \"middle_name\" text;" > "$f"
git add -A && git commit -qm "0005: middle name"
' || fail "creating migration 0005 upstream"
pull_out="$(in_ sh -c 'cd /srv/vamsa && git pull 2>&1')"
rows="$(tracking_rows)"
if grep -q "Applied: 0005_add_person_middle_name.sql" <<<"$pull_out" &&
    grep -q "the database is up to date" <<<"$pull_out" && [ "$rows" = "6" ]; then
    pass "git pull ran the hook, which applied 0005_add_person_middle_name.sql (tracking rows: $rows)"
else
    fail "git pull with the hook (tracking rows: $rows)"
    details "$pull_out"
fi
hook_out="$(in_ sh -c 'cd /srv/vamsa && .git/hooks/post-merge 2>&1')"
hook_status=$?
[ $hook_status -eq 0 ] && pass "the hook exits 0 when the database is up to date" ||
    { fail "the hook exits $hook_status on an up-to-date database"; details "$hook_out"; }
in_ systemctl status vamsa-migrate --no-pager -l --lines=20 >"$out/systemctl-status.txt" 2>&1

# A broken migration: the hook fails loudly with the error.
in_ sh -ec '
cd /srv/upstream
vamsa-migrate new broken --migrations-dir drizzle >/dev/null
f=$(ls drizzle/0006_*.sql)
printf "%s\n" "ALTER TABLE \"no_such_table\" ADD COLUMN \"x\" integer;" > "$f"
git add -A && git commit -qm "0006: broken"
' || fail "creating migration 0006 upstream"
pull_out="$(in_ sh -c 'cd /srv/vamsa && git pull 2>&1')"
hook_out="$(in_ sh -c 'cd /srv/vamsa && .git/hooks/post-merge 2>&1')"
hook_status=$?
# The packaged role has CREATEDB, so the release is rehearsed first and fails there: exit 5.
if [ $hook_status -eq 5 ] && grep -q "DATABASE NOT MIGRATED: the release failed in its rehearsal" <<<"$hook_out" &&
    grep -q 'relation "no_such_table" does not exist (SQLSTATE 42P01)' <<<"$hook_out" &&
    grep -q "DATABASE NOT MIGRATED: the release failed in its rehearsal" <<<"$pull_out"; then
    pass "a broken migration: caught in rehearsal, the hook exits 5 with the banner and the error (42P01), also under git pull"
else
    fail "broken migration: hook exit $hook_status"
    details "$hook_out"
fi
[ "$(tracking_rows)" = "6" ] && pass "nothing of the broken migration was recorded" || fail "tracking rows after the failure: $(tracking_rows)"

section 7 "The journal"
in_ journalctl -u vamsa-migrate -o json --no-pager >"$tmp/journal.json" 2>/dev/null
journal_check="$(python3 - "$tmp/journal.json" <<'EOF'
import json, sys
entries = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if line:
        entries.append(json.loads(line))
def has(pred):
    return any(pred(e) for e in entries)
ok = True
def report(cond, text):
    global ok
    print(("ok   " if cond else "MISSING ") + text)
    ok = ok and cond
report(has(lambda e: e.get("MESSAGE") == "Applied: 0000_create_persons.sql"
           and e.get("MIGRATION") == "0000_create_persons.sql" and "DURATION_MS" in e),
       "Applied: 0000_create_persons.sql with MIGRATION and DURATION_MS")
report(has(lambda e: e.get("MESSAGE") == "Applied: 0005_add_person_middle_name.sql"
           and e.get("MIGRATION") == "0005_add_person_middle_name.sql"),
       "Applied: 0005_add_person_middle_name.sql with MIGRATION")
report(has(lambda e: e.get("SQLSTATE") == "42P01" and e.get("PRIORITY") == "3"
           and e.get("MIGRATION") == "0006_broken.sql" and e.get("HINT")),
       "the failure of 0006_broken.sql with SQLSTATE=42P01, PRIORITY=3, HINT")
report(all(e.get("SYSLOG_IDENTIFIER") == "vamsa-migrate" for e in entries
           if e.get("_COMM") == "vamsa-migrate" and "MIGRATION" in e),
       "SYSLOG_IDENTIFIER=vamsa-migrate")
sys.exit(0 if ok else 1)
EOF
)"
if [ $? -eq 0 ]; then
    pass "journal (-o json): Applied entries with MIGRATION, the failure with SQLSTATE=42P01 and PRIORITY=3"
else
    fail "journal fields"
fi
details "$journal_check"

section 8 "A failing start-up migration keeps the app down"
in_ systemctl stop vamsa-migrate.socket vamsa-migrate.service
in_ rm -f /run/vamsa-app.out
gate_out="$(in_ systemctl start vamsa-app 2>&1)"
gate_status=$?
if [ $gate_status -ne 0 ] && [ "$(in_ systemctl is-active vamsa-app)" != "active" ] &&
    ! in_ test -e /run/vamsa-app.out; then
    pass "with a failing start-up migration, vamsa-migrate fails and the app does not start"
else
    fail "app started although the start-up migration failed (exit $gate_status)"
    details "$gate_out"
fi
in_ systemctl stop vamsa-migrate.socket vamsa-migrate.service
in_ systemctl reset-failed vamsa-migrate.service vamsa-app.service 2>/dev/null

# The service and its socket are down: the hook says how to start it.
hook_out="$(in_ sh -c 'cd /srv/vamsa && .git/hooks/post-merge 2>&1')"
hook_status=$?
if [ $hook_status -eq 69 ] && grep -q "the vamsa-migrate service is not running" <<<"$hook_out" &&
    grep -q "systemctl start vamsa-migrate" <<<"$hook_out"; then
    pass "daemon not running: the hook exits 69 and says to run systemctl start vamsa-migrate"
else
    fail "daemon not running: hook exit $hook_status"
    details "$hook_out"
fi

# Revert the broken migration upstream and pull (the hook reports the daemon down again).
in_ sh -ec 'cd /srv/upstream && git revert --no-edit HEAD >/dev/null && cd /srv/vamsa && git pull -q >/dev/null 2>&1' ||
    fail "reverting 0006"

section 9 "Socket activation"
in_ systemctl start vamsa-migrate.socket
before="$(in_ systemctl is-active vamsa-migrate.service)"
trigger_out="$(in_ vamsa-migrate trigger --timeout 60s 2>&1)"
trigger_status=$?
after="$(in_ systemctl is-active vamsa-migrate.service)"
if [ "$before" != "active" ] && [ $trigger_status -eq 0 ] && [ "$after" = "active" ]; then
    pass "socket activation: the first trigger started the stopped service and got exit 0"
else
    fail "socket activation: service $before -> $after, trigger exit $trigger_status"
    details "$trigger_out"
fi

section 10 "Who may trigger"
in_ useradd --create-home --shell /bin/sh deploy
in_ usermod -a -G vamsa-migrate deploy
in_ useradd --create-home --shell /bin/sh outsider
in_ sh -c ': > /tmp/empty.toml; chmod 0644 /tmp/empty.toml'
member_out="$(in_ runuser -u deploy -- vamsa-migrate trigger --timeout 60s 2>&1)"
[ $? -eq 0 ] && pass "a member of group vamsa-migrate may trigger (allowed_groups in the packaged config)" ||
    { fail "group member trigger"; details "$member_out"; }
outsider_out="$(in_ runuser -u outsider -- vamsa-migrate trigger --config /tmp/empty.toml --timeout 60s 2>&1)"
outsider_status=$?
if [ $outsider_status -eq 77 ] && grep -qi "permission denied" <<<"$outsider_out"; then
    pass "a user outside the group is refused by the socket (permission denied; trigger exit 77)"
else
    fail "user outside the group: exit $outsider_status"
    details "$outsider_out"
fi
outsider_cfg="$(in_ runuser -u outsider -- vamsa-migrate trigger 2>&1)"
outsider_cfg_status=$?
# The config (0640 root:vamsa-migrate) is unreadable to them; trigger falls back to the
# default socket path and is refused there.
if [ $outsider_cfg_status -eq 77 ] && in_ runuser -u outsider -- test ! -r /etc/vamsa-migrate/config.toml; then
    pass "a user outside the group cannot read the config, and trigger without it is refused too (exit 77)"
else
    fail "outsider without config: exit $outsider_cfg_status"
    details "$outsider_cfg"
fi

section 11 "Reload and restart"
pid_before="$(show vamsa-migrate.service MainPID)"
inside sh -ec 'sed -i "s/^# settle = \"500ms\"/settle = \"1s\"/" /etc/vamsa-migrate/config.toml' </dev/null
reload_since="$(in_ date '+%Y-%m-%d %H:%M:%S')"
sleep 1
in_ systemctl reload vamsa-migrate
reload_status=$?
reloaded=""
for _ in $(seq 1 40); do
    if in_ journalctl -u vamsa-migrate --since "$reload_since" --no-pager -o cat | grep -q "configuration reloaded"; then
        reloaded=yes
        break
    fi
    sleep 0.25
done
if [ $reload_status -eq 0 ] && [ -n "$reloaded" ] && [ "$(show vamsa-migrate.service MainPID)" = "$pid_before" ]; then
    pass "systemctl reload after a config change: \"configuration reloaded\", same PID"
else
    fail "systemctl reload (exit $reload_status, logged: ${reloaded:-no})"
fi
inside sh -ec 'echo "settel = \"1s\"" >> /etc/vamsa-migrate/config.toml' </dev/null
reload_since="$(in_ date '+%Y-%m-%d %H:%M:%S')"
sleep 1
in_ systemctl reload vamsa-migrate
kept=""
for _ in $(seq 1 40); do
    if in_ journalctl -u vamsa-migrate --since "$reload_since" --no-pager -o cat | grep -q "reload failed, keeping the previous one"; then
        kept=yes
        break
    fi
    sleep 0.25
done
if [ -n "$kept" ] && [ "$(in_ systemctl is-active vamsa-migrate)" = "active" ]; then
    pass "reload with an unknown key keeps the previous config and the service running"
else
    fail "reload with a bad config"
fi
inside sh -ec 'sed -i "/^settel = /d" /etc/vamsa-migrate/config.toml' </dev/null
in_ systemctl start vamsa-app
app_start_before="$(show vamsa-app.service ExecMainStartTimestampMonotonic)"
restart_out="$(in_ systemctl restart vamsa-migrate 2>&1)"
restart_status=$?
pid_after="$(show vamsa-migrate.service MainPID)"
# systemctl waits for vamsa-migrate's job only; the app's propagated restart may still run.
app_start_after=""
for _ in $(seq 1 60); do
    app_start_after="$(show vamsa-app.service ExecMainStartTimestampMonotonic)"
    [ "$app_start_after" != "$app_start_before" ] && [ "$(in_ systemctl is-active vamsa-app)" = "active" ] && break
    sleep 0.25
done
if [ $restart_status -eq 0 ] && [ "$pid_after" != "$pid_before" ] && [ "$(in_ systemctl is-active vamsa-migrate)" = "active" ]; then
    pass "systemctl restart: new PID, active"
else
    fail "systemctl restart (exit $restart_status)"
    details "$restart_out"
fi
if [ "$(in_ systemctl is-active vamsa-app)" = "active" ] && [ "$app_start_after" != "$app_start_before" ]; then
    pass "restarting vamsa-migrate restarted the app after it (Requires=)"
else
    fail "the app was not restarted with vamsa-migrate (start timestamp $app_start_before -> $app_start_after, $(in_ systemctl is-active vamsa-app))"
fi

section 12 "A release that fails in rehearsal leaves the app running on the old schema"
# The role has CREATEDB (section 3), so rehearse = "auto" (the packaged default) rehearses.
# Data the release cannot take: two persons with the same names. The release: 0006 adds a
# column (it would commit on its own), 0007 a UNIQUE over the names (fails on that data).
DB=vamsa sql "INSERT INTO persons (given_name, family_name) VALUES ('Ada', 'Lovelace'), ('Ada', 'Lovelace')" ||
    fail "inserting the duplicate persons"
# The schema as pg_dump prints it, without the random key of its \restrict lines (PostgreSQL
# 15.14 and later), into FILE inside.
schema() {
    in_ sh -ec "runuser -u postgres -- pg_dump --schema-only -d vamsa | sed '/^\\\\\(un\)\{0,1\}restrict /d' > $1"
}
schema /tmp/schema-before.sql
rows_before="$(tracking_rows)"
app_start_before="$(show vamsa-app.service ExecMainStartTimestampMonotonic)"
in_ sh -ec '
cd /srv/upstream
vamsa-migrate new add_person_title --migrations-dir drizzle >/dev/null
printf "%s\n" "ALTER TABLE \"persons\" ADD COLUMN \"title\" text;" > "$(ls drizzle/0006_*.sql)"
git add -A && git commit -qm "0006: title"
vamsa-migrate new unique_person_names --migrations-dir drizzle >/dev/null
printf "%s\n" "ALTER TABLE \"persons\" ADD CONSTRAINT \"persons_names_key\" UNIQUE (\"given_name\", \"family_name\");" > "$(ls drizzle/0007_*.sql)"
git add -A && git commit -qm "0007: unique names"
' || fail "creating migrations 0006 and 0007 upstream"
pull_out="$(in_ sh -c 'cd /srv/vamsa && git pull 2>&1')"
# The deploy hook's path: a trigger (the hook runs `vamsa-migrate trigger`; git pull ignores its
# status, so the trigger is run again for its exit status).
trigger_out="$(in_ vamsa-migrate trigger --timeout 60s 2>&1)"
trigger_status=$?
if [ $trigger_status -eq 5 ] && grep -q "caught in rehearsal: production was not changed" <<<"$trigger_out" &&
    grep -q "0007_unique_person_names.sql" <<<"$trigger_out" && grep -q "SQLSTATE 23505" <<<"$trigger_out" &&
    grep -q "caught in rehearsal: production was not changed" <<<"$pull_out"; then
    pass "the release fails in rehearsal: trigger exits 5 with \"caught in rehearsal: production was not changed\" (0007, 23505), also under git pull"
else
    fail "rehearsal failure through the trigger: exit $trigger_status"
    details "$trigger_out
--- git pull:
$pull_out"
fi
rows_after="$(tracking_rows)"
leftovers="$(sql "SELECT count(*) FROM pg_database WHERE datname LIKE 'vamsa_rehearsal_%'")"
schema /tmp/schema-after.sql
schema_diff="$(in_ diff /tmp/schema-before.sql /tmp/schema-after.sql 2>&1)"
schema_same=$?
if [ "$rows_after" = "$rows_before" ] && [ $schema_same -eq 0 ] && [ "$leftovers" = "0" ]; then
    pass "production unchanged: $rows_after tracking rows, the same schema (pg_dump --schema-only; not even 0006's column); no scratch database left"
else
    fail "production after the rehearsal failure: tracking rows $rows_before -> $rows_after, scratch databases left: $leftovers"
    details "$schema_diff"
fi
app_start_after="$(show vamsa-app.service ExecMainStartTimestampMonotonic)"
states="$(in_ systemctl is-active vamsa-app vamsa-migrate | tr '\n' ' ')"
status_text="$(show vamsa-migrate.service StatusText)"
if [ "$states" = "active active " ] && [ "$app_start_after" = "$app_start_before" ] &&
    [[ "$status_text" == "Rehearsal failed, database not changed: "* ]]; then
    pass "the app unit is still active, not restarted; vamsa-migrate active with STATUS=\"$status_text\""
else
    fail "after the rehearsal failure: app and vamsa-migrate $states, app started $app_start_before -> $app_start_after, STATUS=\"$status_text\""
fi
rehearsal_journal="$(in_ journalctl --no-pager -o cat REHEARSAL=failed MIGRATION=0007_unique_person_names.sql SQLSTATE=23505)"
if [ -n "$rehearsal_journal" ]; then
    pass "journal: REHEARSAL=failed with MIGRATION=0007_unique_person_names.sql, SQLSTATE=23505"
else
    fail "no journal entry with REHEARSAL=failed for 0007"
    details "$(in_ journalctl -u vamsa-migrate --no-pager -n 20)"
fi
# Revert 0007 upstream: the pull's hook rehearses 0006 alone, which passes, and applies it.
in_ sh -ec 'cd /srv/upstream && git revert --no-edit HEAD >/dev/null' || fail "reverting 0007"
pull_out="$(in_ sh -c 'cd /srv/vamsa && git pull 2>&1')"
if grep -q "Applied: 0006_add_person_title.sql" <<<"$pull_out" && [ "$(tracking_rows)" = "$((rows_before + 1))" ]; then
    pass "after reverting 0007, git pull's hook rehearsed and applied 0006 (tracking rows: $(tracking_rows))"
else
    fail "pull after reverting 0007 (tracking rows: $(tracking_rows))"
    details "$pull_out"
fi

section 13 "The verify timer's service: ok, then a hand change fails it with the drift in the journal"
security_out="$(in_ systemd-analyze security --no-pager vamsa-migrate-verify.service 2>&1)"
exposure="$(sed -n 's/.*Overall exposure level for vamsa-migrate-verify.service: \([0-9.]*\).*/\1/p' <<<"$security_out")"
if [ -n "$exposure" ] && python3 -c "import sys; sys.exit(0 if float('$exposure') <= 2.0 else 1)"; then
    pass "systemd-analyze security vamsa-migrate-verify.service: overall exposure $exposure <= 2.0"
else
    fail "systemd-analyze security vamsa-migrate-verify.service: overall exposure '${exposure}' (must be <= 2.0)"
    details "$security_out" 60
fi
# journal_has UNIT REGEX: whether the unit's journal has a line matching REGEX, waiting up to
# 10 s for journald to take in the unit's last output (read from its stream asynchronously).
journal_has() {
    for _ in $(seq 1 40); do
        in_ journalctl -u "$1" --no-pager -o cat | grep -q -- "$2" && return 0
        sleep 0.25
    done
    return 1
}
history_rows() { DB=vamsa sql "SELECT count(*) FROM vamsa_migrate.runs" 2>/dev/null || echo none; }
runs_before="$(history_rows)"
verify_out="$(in_ systemctl start vamsa-migrate-verify.service 2>&1)"
verify_status=$?
if [ $verify_status -eq 0 ] && [ "$(show vamsa-migrate-verify.service Result)" = "success" ] &&
    journal_has vamsa-migrate-verify "^Verified: all checks passed.$" &&
    [ "$(history_rows)" = "$runs_before" ]; then
    pass "systemctl start vamsa-migrate-verify: all checks passed (as user vamsa-migrate, sandboxed); no history row written"
else
    fail "verify on a migrated database: exit $verify_status, Result=$(show vamsa-migrate-verify.service Result)"
    details "$verify_out
$(in_ journalctl -u vamsa-migrate-verify --no-pager -n 20)"
fi
DB=vamsa sql 'ALTER TABLE "persons" ADD COLUMN "birth_place" text' || fail "the hand ALTER TABLE"
in_ systemctl start vamsa-migrate-verify.service >/dev/null 2>&1
verify_status=$?
result="$(show vamsa-migrate-verify.service Result) $(show vamsa-migrate-verify.service ExecMainStatus)"
if [ $verify_status -ne 0 ] && in_ systemctl is-failed --quiet vamsa-migrate-verify.service &&
    [ "$result" = "exit-code 4" ] &&
    journal_has vamsa-migrate-verify "^schema: FAILED: the schema was changed outside migrations since the last run" &&
    journal_has vamsa-migrate-verify "^  + column public.persons.birth_place text$"; then
    pass "after a hand ALTER TABLE the verify service fails (Result=exit-code, status 4) with the drift line in its journal"
else
    fail "verify after a hand ALTER TABLE: systemctl exit $verify_status, Result/status $result"
    details "$(in_ journalctl -u vamsa-migrate-verify --no-pager -o cat -n 20)"
fi
# Undo the hand change, so that the later sections start from the recorded schema.
DB=vamsa sql 'ALTER TABLE "persons" DROP COLUMN "birth_place"' || fail "undoing the hand ALTER TABLE"
in_ systemctl reset-failed vamsa-migrate-verify.service 2>/dev/null

section 14 "Package upgrade (reinstall) restarts the service; the socket keeps working"
pid_before="$(show vamsa-migrate.service MainPID)"
upgrade_out="$(in_ dpkg -i /e2e/vamsa-migrate.deb 2>&1)"
upgrade_status=$?
pid_after="$(show vamsa-migrate.service MainPID)"
states="$(in_ systemctl is-active vamsa-migrate.socket vamsa-migrate.service | tr '\n' ' ')"
trigger_out="$(in_ vamsa-migrate trigger --timeout 60s 2>&1)"
trigger_status=$?
if [ $upgrade_status -eq 0 ] && [ "$states" = "active active " ] && [ "$pid_after" != "$pid_before" ] &&
    [ $trigger_status -eq 0 ] && in_ test -S /run/vamsa-migrate/trigger.sock; then
    pass "upgrade (dpkg -i again): service restarted, socket active, trigger works"
else
    fail "upgrade: dpkg exit $upgrade_status, states $states, pid $pid_before -> $pid_after, trigger exit $trigger_status"
    details "$upgrade_out
$trigger_out"
fi

section 15 "Clean stop"
in_ systemctl stop vamsa-app
stop_out="$(in_ systemctl stop vamsa-migrate 2>&1)"
stop_status=$?
result="$(show vamsa-migrate.service Result)"
code="$(show vamsa-migrate.service ExecMainStatus)"
if [ $stop_status -eq 0 ] && [ "$result" = "success" ] && [ "$code" = "0" ]; then
    pass "systemctl stop is clean (Result=success, exit status 0)"
else
    fail "systemctl stop: exit $stop_status, Result=$result, status $code"
    details "$stop_out"
fi

section 16 "The packaged demo uses the packaged migrations"
demo_out="$(in_ sh -c 'cd / && vamsa-migrate demo 2>&1')"
if [ $? -eq 0 ] && grep -q "migrations: /usr/share/vamsa-migrate/demo-migrations" <<<"$demo_out" &&
    grep -q "Migration complete." <<<"$demo_out"; then
    pass "vamsa-migrate demo runs from /usr/share/vamsa-migrate/demo-migrations"
else
    fail "vamsa-migrate demo"
    details "$demo_out"
fi

in_ journalctl -u vamsa-migrate --no-pager >"$out/journal.txt" 2>&1
in_ journalctl -u vamsa-migrate -o json --no-pager >"$out/journal.json" 2>&1

section 17 "Purge"
purge_out="$(in_ dpkg --purge vamsa-migrate 2>&1)"
purge_status=$?
leftovers=""
in_ getent passwd vamsa-migrate >/dev/null && leftovers+=" user"
in_ getent group vamsa-migrate >/dev/null && leftovers+=" group"
for p in /etc/vamsa-migrate /var/lib/vamsa-migrate /run/vamsa-migrate /etc/credstore/vamsa-migrate.database_password \
    /lib/systemd/system/vamsa-migrate.service /lib/systemd/system/vamsa-migrate-verify.timer /usr/bin/vamsa-migrate; do
    in_ test -e "$p" && leftovers+=" $p"
done
[ "$(in_ systemctl is-active vamsa-migrate.socket)" = "active" ] && leftovers+=" active-socket"
if [ $purge_status -eq 0 ] && [ -z "$leftovers" ]; then
    pass "dpkg --purge removes the user, group, config, credential, state and units"
else
    fail "dpkg --purge (exit $purge_status); left:$leftovers"
    details "$purge_out"
fi

say "systemd-e2e: status and journal saved in $out (systemctl-status.txt, journal.txt)"
say "systemd-e2e: took $(($(date +%s) - started_at)) s"
say "systemd-e2e: $passed passed, $failed failed"
[ $failed -eq 0 ]
