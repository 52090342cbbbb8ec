#!/bin/sh
# The arm64 device's base root tree: Debian trixie for arm64, bootstrapped in one stage through binfmt
# (qemu-user-static), then Docker, adbd and qemu-user (x86_64 containers run there emulated) installed inside it. Usage: arm64-rootfs.sh DIR
# Run by tests/testbed/arm64.py (ensure_image), which names DIR after a hash of this file: change the recipe
# here and a new tree is built. Each stage leaves a marker in DIR, so an interrupted build resumes.
# About 21 min on 2 cores (most of it debootstrap; the initramfs is built twice under emulation).
set -eu
dir=$1
mirror=${ANDROCOND_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ ! -e "$dir/.stage-debootstrap" ]; then
    rm -rf "$dir"
    debootstrap --arch arm64 --variant=minbase \
        --include=systemd-sysv,udev,dbus,linux-image-arm64,initramfs-tools,zstd,openssh-server,criu,python3,busybox-static,iproute2,procps,kmod,ca-certificates \
        trixie "$dir" "$mirror"
    touch "$dir/.stage-debootstrap"
fi

if [ ! -e "$dir/.stage-packages" ]; then
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    # Nothing may start inside the chroot while packages are installed.
    printf '#!/bin/sh\nexit 101\n' > "$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    mount -t proc proc "$dir/proc"
    trap 'umount "$dir/proc"' EXIT
    chroot "$dir" apt-get update
    DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y --no-install-recommends \
        docker.io docker-cli adbd qemu-user qemu-user-binfmt
    chroot "$dir" apt-get clean
    umount "$dir/proc"
    trap - EXIT
    rm -f "$dir/usr/sbin/policy-rc.d" "$dir/etc/resolv.conf"
    touch "$dir/.stage-packages"
fi
