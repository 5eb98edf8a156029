#!/usr/bin/env bash
# A VM-disk workflow with qemu-img: import a qcow2 image into a lunfs disk, snapshot it
# before an "upgrade", change the disk, and compare the snapshot with the original image,
# all with ordinary tools on the mounted files. Needs a mounted pool (examples/quickstart.sh
# mounts one on /mnt/lunfs).
#
#   MNT=/mnt/lunfs examples/vm-disk.sh
set -euo pipefail
MNT=${MNT:-/mnt/lunfs}
command -v qemu-img >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null; }
mountpoint -q "$MNT" || { echo "mount a pool on $MNT first (examples/quickstart.sh)"; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
vm=vm-$(date +%H%M%S)

echo "== a source VM image: qcow2, 2 GiB virtual, with some data written through qemu-io"
qemu-img create -q -f qcow2 "$work/source.qcow2" 2G
qemu-io -c "write -P 0x5a 0 64M" -c "write -P 0xa5 1G 32M" "$work/source.qcow2" >/dev/null

echo "== import it: mkdir $MNT/$vm; qemu-img convert -O raw ... $MNT/$vm/disk.img"
mkdir "$MNT/$vm"
qemu-img convert -p -O raw "$work/source.qcow2" "$MNT/$vm/disk.img"
qemu-img compare -q "$work/source.qcow2" "$MNT/$vm/disk.img" && echo "imported image matches the source"
du -h --apparent-size "$MNT/$vm/disk.img"; du -h "$MNT/$vm/disk.img"

echo "== snapshot before the upgrade: mkdir $MNT/$vm/pre-upgrade"
mkdir "$MNT/$vm/pre-upgrade"

echo "== the 'upgrade' writes to the live disk (as a VM with cache=none would, O_DIRECT)"
qemu-io -f raw -t none -c "write -P 0x11 0 16M" "$MNT/$vm/disk.img" >/dev/null

echo "== the snapshot still equals the source; the live disk does not"
qemu-img compare -q "$work/source.qcow2" "$MNT/$vm/pre-upgrade/disk.img" && echo "pre-upgrade == source"
qemu-img compare -q "$work/source.qcow2" "$MNT/$vm/disk.img" || echo "live disk differs from source (as it should)"
getfattr -d -m 'user.lunfs.(unique|shared|allocated)' "$MNT/$vm" "$MNT/$vm/pre-upgrade"

echo "== roll back: copy the snapshot's image over the live disk"
cp --sparse=always "$MNT/$vm/pre-upgrade/disk.img" "$MNT/$vm/disk.img"
qemu-img compare -q "$work/source.qcow2" "$MNT/$vm/disk.img" && echo "rolled back: live == source"
echo "(disk $MNT/$vm is left in place; rm -r $MNT/$vm removes it and its snapshot)"
