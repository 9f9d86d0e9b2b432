# loopbpf's unit under a real systemd, PID 1 of this guest: installs the .deb,
# starts loopbpf.service, checks its sandbox from outside, watches a Node
# process of another user, scrapes /metrics, reloads a good and a bad config,
# stops it, prints `systemd-analyze security`, then the end marker, and powers
# off. Run by loopbpf-vm-check.service; xtask puts TIME_SCALE, EXPECT_PROBES
# and END_MARKER above these lines.
set -u
status=0
say() { echo "loopbpf-vm-systemd: $*"; }
fail() { say "FAIL: $*"; status=1; }
ok() { say "ok: $*"; }
# wait_for SECONDS CMD...: CMD every second until it succeeds, for SECONDS
# stretched by TIME_SCALE (emulation).
wait_for() {
    local left=$(($1 * TIME_SCALE))
    shift
    until "$@" >/dev/null 2>&1; do
        left=$((left - 1))
        [ "$left" -gt 0 ] || return 1
        sleep 1
    done
}
expect() { # NAME GOT WANT
    if [ "$2" = "$3" ]; then ok "$1 = $2"; else fail "$1 is '$2', want '$3'"; fi
}
journal() { journalctl -u loopbpf.service -o cat --no-pager; }
in_journal() { journal | grep -q -- "$1"; }
finish() {
    if [ "$status" != 0 ]; then
        journal | tail -n 60 | sed 's/^/loopbpf-vm-systemd: journal: /'
    fi
    echo "$END_MARKER $status"
    systemctl poweroff --force --force
    exit "$status"
}

say "boot: $(systemctl is-system-running --wait); $(systemd-analyze time | head -n 1)"
systemctl --failed --no-legend --plain | sed 's/^/loopbpf-vm-systemd: failed unit: /'
systemd-analyze blame --no-pager | head -n 8 | sed "s/^/loopbpf-vm-systemd: blame: /"
say "kernel $(uname -r), systemd $(systemctl --version | head -n 1 | cut -d' ' -f2)"

# Debian's kernels default to perf_event_paranoid=3, where the unit (no
# CAP_SYS_ADMIN) cannot open its cpu-clock events: the operator's step the
# README names, as a sysctl.d file would do it at boot.
say "perf_event_paranoid was $(sysctl -n kernel.perf_event_paranoid), set to 2"
sysctl -q -w kernel.perf_event_paranoid=2

# The package as an operator installs it: its postinst registers the unit and
# does not start it.
if dpkg -i /root/loopbpf.deb >/tmp/dpkg.out 2>&1; then
    sed 's/^/loopbpf-vm-systemd: dpkg: /' /tmp/dpkg.out
else
    cat /tmp/dpkg.out
    fail "dpkg -i loopbpf.deb"
    finish
fi
if systemctl is-active -q loopbpf.service; then fail "the .deb started the service"; fi
systemctl enable --now loopbpf.service || fail "systemctl enable --now loopbpf"
wait_for 30 in_journal "ready: " || { fail "no ready line in the journal"; finish; }
ready=$(journal | grep -m1 "ready: ")
say "journal: $ready"
case "$ready" in
*"$EXPECT_PROBES syscall probes"*) ok "$EXPECT_PROBES syscall probes" ;;
*) fail "want $EXPECT_PROBES syscall probes" ;;
esac

# The sandbox, as the kernel applies it to the running daemon.
pid=$(systemctl show -p MainPID --value loopbpf.service)
[ "${pid:-0}" -gt 0 ] || { fail "no main pid"; finish; }
cg=/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
expect "cgroup" "$cg" /sys/fs/cgroup/system.slice/loopbpf.service
expect "memory.max" "$(cat "$cg/memory.max")" 1073741824
expect "pids.max" "$(cat "$cg/pids.max")" 64
# CAP_SYS_PTRACE (19), CAP_SYSLOG (34), CAP_PERFMON (38), CAP_BPF (39).
caps=000000c400080000
for f in CapBnd CapPrm CapEff; do
    expect "$f" "$(awk -v f="$f:" '$1 == f {print $2}' "/proc/$pid/status")" "$caps"
done
expect "NoNewPrivs" "$(awk '$1 == "NoNewPrivs:" {print $2}' "/proc/$pid/status")" 1
expect "Seccomp (filter)" "$(awk '$1 == "Seccomp:" {print $2}' "/proc/$pid/status")" 2
expect "open files limit" "$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")" 16384
expect "umask" "$(awk '$1 == "Umask:" {print $2}' "/proc/$pid/status")" 0077
# In the daemon's mount namespace (as root with every capability: only the
# read-only mounts can refuse): all but the state directory is read-only.
in_ns() { nsenter -t "$pid" -m -- "$@"; }
# read_only WHAT CMD...: CMD, a write, must fail with EROFS there.
read_only() {
    local what=$1 err
    shift
    if err=$(in_ns "$@" 2>&1); then
        fail "$what is writable for the daemon"
    elif [ "${err#*Read-only file system}" != "$err" ]; then
        ok "$what read-only"
    else fail "$what: want EROFS, got: $err"; fi
}
for d in /usr /etc /var /root /home; do
    read_only "$d" touch "$d/.vm-check"
done
read_only /proc/sys sh -c 'echo 2 > /proc/sys/kernel/perf_event_paranoid'
# tracefs, mounted by systemd (sys-kernel-tracing.mount): the daemon reads
# its events' ids there, and must not be able to write.
if [ -w /sys/kernel/tracing/tracing_on ]; then
    read_only /sys/kernel/tracing sh -c 'echo 1 > /sys/kernel/tracing/tracing_on'
else fail "tracefs is not mounted at /sys/kernel/tracing"; fi
if in_ns touch /var/lib/loopbpf/.vm-check && in_ns rm /var/lib/loopbpf/.vm-check; then
    ok "/var/lib/loopbpf writable"
else fail "/var/lib/loopbpf is not writable for the daemon"; fi
expect "bytes of /proc/kcore the daemon can read" "$(in_ns head -c 16 /proc/kcore | wc -c)" 0
expect "state directory mode" "$(stat -c %a /var/lib/loopbpf)" 700

# A Node process of user nobody (discovered through CAP_SYS_PTRACE), with
# its perf map for JavaScript names.
setpriv --reuid=65534 --regid=65534 --clear-groups /usr/local/bin/node \
    --perf-basic-prof-only-functions --interpreted-frames-native-stack \
    /usr/local/share/loopbpf-vm/target.js >/tmp/target.out 2>&1 &
node=$!
say "node pid $node"
episode_of_node() { grep -q "\"pid\":$node[,}]" /var/lib/loopbpf/index.jsonl; }
if wait_for 30 episode_of_node; then
    ok "episode of pid $node in index.jsonl"
    # Let a few more blocks be stored, so one has a well-sampled stack.
    sleep $((3 * TIME_SCALE / 4 + 3))
else
    fail "no episode of pid $node in index.jsonl"
    sed 's/^/loopbpf-vm-systemd: node: /' /tmp/target.out
fi
folded=$(ls /var/lib/loopbpf/episodes/"$node"-*.folded 2>/dev/null | head -n 1)
if [ -z "$folded" ]; then
    fail "no .folded file of pid $node in /var/lib/loopbpf/episodes"
else
    expect "episode file mode" "$(stat -c %a "$folded")" 600
fi
if grep -q 'vmSystemdBlock.*;entry_SYSCALL_64' /var/lib/loopbpf/episodes/"$node"-*.folded 2>/dev/null; then
    # JavaScript names from the perf map of another user, kernel names from
    # kallsyms (CAP_SYSLOG, not hidden by the unit).
    ok "vmSystemdBlock with named kernel frames (entry_SYSCALL_64) under it"
else
    # Under emulation node's symbol table takes the symbolizer long; it is
    # given the time as long as it computes (the journal says when not).
    fail "no stack with vmSystemdBlock and entry_SYSCALL_64 under it"
    journal | grep -i "symboliz" | head -n 5 | sed 's/^/loopbpf-vm-systemd: journal: /'
    head -n 5 /var/lib/loopbpf/episodes/"$node"-*.folded 2>/dev/null | cut -c1-300 | sed 's/^/loopbpf-vm-systemd: folded: /'
fi

scrape() { curl -sf --max-time $((5 * TIME_SCALE)) http://127.0.0.1:9569/metrics; }
episodes=$(scrape | awk '/^loopbpf_loop_episodes_total\{/ {n += $NF} END {print n + 0}')
if [ "$episodes" -ge 1 ]; then ok "/metrics: $episodes episodes"; else fail "/metrics: no loopbpf_loop_episodes_total > 0"; fi
say "symbolizer: $(scrape | awk '/^loopbpf_symbolizer_events_total\{/ {printf "%s %s ", $1, $2}')"

# SIGHUP (ExecReload) with a good config, then a bad one: the daemon keeps
# the running configuration and keeps serving.
conf=/etc/loopbpf/loopbpf.toml
cp "$conf" /root/loopbpf.toml.orig
sed -i 's/^threshold = .*/threshold = "2s"/' "$conf"
systemctl reload loopbpf.service || fail "systemctl reload"
if wait_for 10 in_journal "threshold 2000 ms"; then ok "reloaded with threshold 2s"; else fail "no reload logged"; fi
sed -i 's/^threshold = .*/threshold = "soon"/' "$conf"
systemctl reload loopbpf.service || fail "systemctl reload (bad config)"
if wait_for 10 in_journal "reload failed"; then ok "bad config refused: $(journal | grep -m1 'reload failed')"; else fail "bad config not refused in the journal"; fi
if systemctl is-active -q loopbpf.service && scrape >/dev/null; then
    ok "still active and serving after the bad reload"
else fail "not active or not serving after the bad reload"; fi
cp /root/loopbpf.toml.orig "$conf"

kill "$node" 2>/dev/null
systemctl stop loopbpf.service
expect "stop result" "$(systemctl show -p Result --value loopbpf.service)" success
expect "exit status" "$(systemctl show -p ExecMainStatus --value loopbpf.service)" 0
if in_journal "stopped"; then ok "stopped cleanly"; else fail "no 'stopped' in the journal"; fi

systemd-analyze security --no-pager loopbpf.service | sed 's/^/loopbpf-vm-security: /'
finish
