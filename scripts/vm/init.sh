#!/bin/busybox sh
# PID 1 of the volagent VM-lane guest. test/helpers/vm.ts packs this file as
# /init into a busybox-static initramfs (with the kernel modules listed in
# /etc/volagent-modules) and boots it with qemu. Editing this file changes the
# initramfs cache key, so the next run rebuilds it.
#
# Layout: host `/` (9p tag hostroot, read-only) + tmpfs upper = overlay at
# /newroot, then chroot there and run /vmjob/run.sh, which the host writes into
# the per-VM read-write share (9p tag vmjob). The host reads the job's exit
# status from /vmjob/status; no status file means the guest failed.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "volagent-vm: $*" >/dev/console; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
fail() {
  say "init-failed: $*"
  sync
  poweroff -f
  sleep 5
}

say "init $(uptime_s)"

# One module file per line, in load order; a leading '?' marks an optional
# module whose failure to load is not reported (e.g. crc32c-intel without SSE4.2).
while read -r m; do
  [ -n "$m" ] || continue
  case "$m" in
    \?*) insmod "/lib/modules/${m#?}" 2>/dev/null ;;
    *) insmod "/lib/modules/$m" || say "insmod $m failed" ;;
  esac
done </etc/volagent-modules

say "modules $(uptime_s)"

MSIZE=262144
mkdir -p /host /job /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=$MSIZE hostroot /host ||
  fail "mount 9p hostroot"
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=$MSIZE vmjob /job ||
  fail "mount 9p vmjob"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "mount tmpfs /rw"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot ||
  fail "mount overlay"

R=/newroot
mkdir -p $R/proc $R/sys $R/dev $R/tmp $R/run $R/vmjob
mount -t proc proc $R/proc || fail "mount proc"
mount -t sysfs sysfs $R/sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "mount devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
[ -e $R/dev/fd ] || ln -s /proc/self/fd $R/dev/fd
[ -e $R/dev/stdin ] || ln -s /proc/self/fd/0 $R/dev/stdin
[ -e $R/dev/stdout ] || ln -s /proc/self/fd/1 $R/dev/stdout
[ -e $R/dev/stderr ] || ln -s /proc/self/fd/2 $R/dev/stderr
# /tmp is not a fresh tmpfs: the repo (a CI clone) may live there. The
# overlay already makes it writable, with the writes kept in the tmpfs upper.
mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "mount /run"
mount --bind /job $R/vmjob || fail "bind /vmjob"

hostname volagent-vm
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

[ -f $R/vmjob/run.sh ] || fail "no /vmjob/run.sh"

# volagent.init=systemd: the host root's systemd becomes PID 1 and runs the
# job as a oneshot service in its own target (sysinit and basic only: no host
# service starts), then powers off. The host passes fstab=no and
# systemd.gpt_auto=no so nothing on the test disks is mounted.
if grep -q 'volagent.init=systemd' /proc/cmdline; then
  U=$R/etc/systemd/system
  mkdir -p $U
  cat >$U/volagent-vmjob.service <<'UNIT'
[Unit]
Description=volagent VM-lane job
After=basic.target
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/bin/sh /vmjob/run.sh
StandardOutput=journal+console
UNIT
  cat >$U/volagent-vmjob.target <<'UNIT'
[Unit]
Description=volagent VM-lane job target
Requires=basic.target volagent-vmjob.service
After=basic.target volagent-vmjob.service
AllowIsolate=yes
UNIT
  # Debian's tmpfiles.d/tmp.conf empties /tmp at boot ('D'); the repo (a CI
  # clone) may live there. Keep the directory, not empty it.
  mkdir -p $R/etc/tmpfiles.d
  echo 'd /tmp 1777 root root -' >$R/etc/tmpfiles.d/tmp.conf
  # The host root may be a container's (/.dockerenv): systemd would think it
  # runs in one and ignore the kernel command line (systemd.unit=).
  rm -f $R/.dockerenv $R/run/.containerenv
  say "systemd $(uptime_s)"
  exec switch_root $R /lib/systemd/systemd
fi

say "chroot $(uptime_s)"
chroot $R /bin/sh /vmjob/run.sh </dev/null
say "job-exited $? $(uptime_s)"

sync
poweroff -f
sleep 5
