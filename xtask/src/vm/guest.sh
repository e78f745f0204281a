#!/bin/sh
# Stage 2 of the `cargo xtask vm-test` guest, run as PID 1 from the host's filesystem
# (mounted read-only over 9p by init.sh): mount what the lab and the agent need, load
# the kernel's modules from the unpacked package, run each listed test binary as root,
# write each result to the writable results share, power off.
# vm.env (next to this file, written by xtask) sets BUSYBOX, PRELOAD (module files in
# load order), PROJECT_ROOT, RESULTS, TESTS, TEST_TIMEOUT and the tests' environment.
here=$(dirname "$0")
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Sets PATH to the host's (the same python3, node... as the host suite uses).
. "$here/vm.env"
log() { echo "vm-guest: $*"; }
off() { sync; echo o > /proc/sysrq-trigger; sleep 30; }

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /root stays the host's, read-only: pyenv's Python and its packages may live there.
# /tmp and /run get the guest's own tmpfs; the host's stay reachable under /dev/shm/host,
# so a project that lives there (a CI clone in /tmp) is bound back at its own path.
for d in /tmp /run; do
    mkdir -p "/dev/shm/host$d" && mount -o bind "$d" "/dev/shm/host$d"
    mount -t tmpfs -o mode=0755 tmpfs "$d" || { log "tmpfs on $d failed"; off; }
done
chmod 1777 /tmp
case "$PROJECT_ROOT" in
/tmp/* | /run/*)
    mkdir -p "$PROJECT_ROOT" && mount -o bind "/dev/shm/host$PROJECT_ROOT" "$PROJECT_ROOT" ||
        { log "cannot keep $PROJECT_ROOT visible"; off; }
    ;;
esac
mount -t cgroup2 cgroup2 /sys/fs/cgroup || { log "cannot mount cgroup2"; off; }
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$RESULTS" || { log "cannot mount the results share"; off; }

# The lab's modules (veth, bridge, sock_diag...) from the unpacked package, in the
# order xtask computed from its modules.dep (the host has no /lib/modules/<release>
# to bind them to, so no modprobe).
rel=$(uname -r)
for m in $PRELOAD; do "$BUSYBOX" insmod "$m" || log "insmod $m failed"; done
ip link set lo up
hostname hoptrace-vm

log "kernel $rel up; running tests"
echo "$rel" > "$RESULTS/kernel"
while read -r name bin filter; do
    [ -n "$name" ] || continue
    log "=== $name: $bin $filter"
    start=$(date +%s)
    if [ "$filter" = "-" ]; then filter=""; fi
    # shellcheck disable=SC2086
    ( cd /tmp && timeout -k 10 "$TEST_TIMEOUT" "$bin" --test-threads=1 $filter; echo $? > "$RESULTS/$name.rc" ) 2>&1 | tee "$RESULTS/$name.log"
    end=$(date +%s)
    echo $((end - start)) > "$RESULTS/$name.secs"
    log "=== $name: exit $(cat "$RESULTS/$name.rc") in $((end - start)) s"
done < "$TESTS"
echo done > "$RESULTS/finished"
log "all tests ran; powering off"
off
