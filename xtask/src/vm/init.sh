#!/bin/busybox sh
# Stage 1 of the `cargo xtask vm-test` guest (the initramfs's /init; busybox only):
# load the virtio and 9p modules, mount the host's filesystem read-only over 9p,
# then hand over to stage 2 (guest.sh on the host filesystem) with switch_root.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "vm-init: insmod $m failed"
done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot; then
    echo "vm-init: cannot mount the host's filesystem over 9p"
    echo o > /proc/sysrq-trigger
    sleep 10
fi
stage2=$(sed -n 's/.*hoptrace.stage2=\([^ ]*\).*/\1/p' /proc/cmdline)
umount /proc /sys /dev 2>/dev/null
exec switch_root /newroot /bin/sh "$stage2"
