#!/usr/bin/env bash
# The lunfs quick start, on a fresh Debian 12 machine as root: installs what is missing,
# builds and installs lunfs (scripts/install: /usr/local/bin/lunfs), creates and mounts a
# default pool (8 sparse drives of 16 GiB, RAID 5), creates a disk, puts ext4 on it through a
# loop device, writes files, takes a snapshot, and shows `lunfs status`. The pool stays
# mounted for you to explore; `examples/quickstart.sh stop` unmounts it.
#
#   POOL=/var/tmp/lunfs-pool MNT=/mnt/lunfs examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
POOL=${POOL:-/var/tmp/lunfs-pool}
MNT=${MNT:-/mnt/lunfs}
VMFS=${VMFS:-/mnt/lunfs-vm}
export PATH=/usr/local/bin:$PATH

if [ "${1:-}" = stop ]; then
    lunfs unmount "$MNT" && echo "unmounted $MNT; the pool stays in $POOL"
    exit 0
fi

missing=()
for p in libfuse3-dev liburing-dev fuse3 e2fsprogs attr util-linux; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
modprobe loop 2>/dev/null || true
# FUSE over io_uring for the mount below, where the kernel has it (docs/MOUNT.md).
echo 1 > /sys/module/fuse/parameters/enable_uring 2>/dev/null || true

scripts/install

mkdir -p "$MNT" "$VMFS"
if mountpoint -q "$MNT"; then
    echo "== $MNT is already mounted; using it"
else
    # --create: the first run makes the pool; later runs find it and only mount it.
    echo "== mounting $POOL on $MNT"
    lunfs mount "$POOL" "$MNT" --create
fi
df -h "$MNT"

disk=demo-$(date +%H%M%S)
echo "== a 4 GiB thin disk: mkdir $MNT/$disk; truncate -s 4G $MNT/$disk/disk.img"
mkdir "$MNT/$disk"
truncate -s 4G "$MNT/$disk/disk.img"

echo "== ext4 on it through a loop device"
loop=$(losetup --find --show "$MNT/$disk/disk.img")
mkfs.ext4 -q "$loop"
mount "$loop" "$VMFS"
cp -r /etc/apt "$VMFS/" 2>/dev/null || true
dd if=/dev/urandom of="$VMFS/random.bin" bs=1M count=64 status=none
sha256sum "$VMFS/random.bin" | tee "$VMFS/random.sha256"
umount "$VMFS"
losetup -d "$loop"

echo "== a snapshot: mkdir $MNT/$disk/first"
mkdir "$MNT/$disk/first"
echo "== e2fsck of the snapshot's image"
e2fsck -fn "$MNT/$disk/first/disk.img" | tail -1

echo "== the disk's attributes"
getfattr -d -m user.lunfs "$MNT/$disk"
echo "== lunfs status $POOL"
lunfs status "$POOL"
echo
echo "The pool is mounted on $MNT. Unmount with: lunfs unmount $MNT  (or examples/quickstart.sh stop)"
