#!/bin/sh
# (From the spike in /work/shared/guide/real-bluez/.) Build a tiny initramfs (busybox-static + virtio/9p/overlay modules) that mounts the
# host's root filesystem (shared read-only by qemu over virtio-9p, tag "hostroot")
# under a tmpfs overlay and switch_roots into it, running the command given in the
# kernel command line as guest_init=PATH.
set -eu
KROOT=${1:?root of the unpacked kernel package (or /)}
KV=${2:?kernel version}
OUT=${3:?output file}
D=$(mktemp -d)
mkdir -p $D/bin $D/lib/modules $D/proc $D/sys $D/dev $D/lower $D/upper $D/newroot
cp /bin/busybox $D/bin/busybox
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         netfs fscache 9pnet 9pnet_virtio 9p overlay; do
  f=$(modinfo -b "$KROOT" -k "$KV" -n $m)
  case "$f" in
    *.ko) cp "$f" $D/lib/modules/$m.ko ;;
    *.ko.xz) xz -dc "$f" > $D/lib/modules/$m.ko ;;
    *.ko.zst) zstd -qdc "$f" > $D/lib/modules/$m.ko ;;
    *) echo "module $m: $f (builtin?)" ;;
  esac
done
cat > $D/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         netfs fscache 9pnet 9pnet_virtio 9p overlay; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
GI=/bin/sh
for a in $(cat /proc/cmdline); do case $a in guest_init=*) GI=${a#guest_init=};; esac; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || { echo "9p mount failed"; exec sh; }
mount -t tmpfs -o size=768m tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || { echo "overlay failed"; exec sh; }
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot $GI
INIT
chmod +x $D/init
(cd $D && find . | cpio -o -H newc --quiet) > "$OUT"
rm -rf $D
ls -l "$OUT"
