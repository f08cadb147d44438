#!/bin/sh
# tests/vm/rootfs/build.sh: the root file system of the real-systemd suite
# (tests/tests/systemd_vm.rs): Debian trixie minbase with systemd 257 as
# PID 1, packed as an uncompressed initramfs that the test kernel
# (tests/vm/kernel) boots with rdinit=/sbin/init: systemd runs straight from
# the initramfs (tmpfs root, no switch-root, no block device), as a normal
# system. Built into a cache directory keyed by this script's content:
#
#   ${BARKEEP_CACHE:-$HOME/.cache/barkeep}/rootfs/RECIPE/rootfs.cpio
#
# usage: build.sh           build unless the cache has it; print its path
#        build.sh --path    print the cache path (built or not) and exit
# env: MIRROR (default: the Debian archive this machine's apt configuration
#      names)
#
# Needs mmdebstrap and cpio. Runs as root (--mode=root) or unprivileged
# through user namespaces (--mode=unshare; needs uidmap). About 2 minutes
# with downloads; the archive is ~185 MB (podman is half of it).
#
# The guest runs one command: the suite adds /etc/sd-test/cmd in a second
# cpio archive; sd-test.service (After=multi-user.target) prints
# "SDTEST-START uptime=...", runs it with /bin/sh, prints "SDTEST-EXIT=N"
# and powers the guest off.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${BARKEEP_CACHE:-${HOME:-/root}/.cache/barkeep}
recipe=$(sha256sum <"$here/build.sh" | cut -c1-16)
out=$cache/rootfs/$recipe/rootfs.cpio
if [ "${1:-}" = --path ]; then
	echo "$out"
	exit 0
fi
if [ -f "$out" ]; then
	echo "$out"
	exit 0
fi
if [ -z "${MIRROR:-}" ]; then
	MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
	[ -n "$MIRROR" ] || MIRROR=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\).*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
	[ -n "$MIRROR" ] || { echo "build.sh: no Debian archive in the apt configuration: set MIRROR" >&2; exit 2; }
fi
command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
# systemd and what barkeep's .deb and the suite use in the guest; podman
# and crun run a container from the spec `barkeep cdi` writes.
pkgs=systemd,systemd-sysv,udev,dbus,procps,iproute2,podman,crun
if [ "$(id -u)" = 0 ]; then mode=root; else mode=unshare; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/sd-test.service" <<'UNIT'
[Unit]
Description=sd-test: run /etc/sd-test/cmd, print SDTEST-EXIT=, power off
ConditionPathExists=/etc/sd-test/cmd
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
Environment=HOME=/root TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0
WorkingDirectory=/root
LimitNOFILE=1048576
ExecStart=/bin/sh -c 'echo "SDTEST-START uptime=$$(cut -d" " -f1 /proc/uptime)"; /bin/sh /etc/sd-test/cmd; echo "SDTEST-EXIT=$$?"'
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT

# /dev/console (char 5:1) as a second cpio archive in the same stream, so
# that PID 1 has a console before devtmpfs is mounted (no mknod needed).
cat >"$tmp/console" <<'PERL'
#!/usr/bin/perl
sub hdr { my ($ino, $mode, $nlink, $maj, $min, $name) = @_;
  sprintf "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
    $ino, $mode, 0, 0, $nlink, 0, 0, 0, 0, $maj, $min, length $name, 0 }
sub pad { my $s = shift; $s . "\0" x ((4 - length($s) % 4) % 4) }
print pad(hdr(1, 020600, 1, 5, 1, "dev/console\0") . "dev/console\0");
print pad(hdr(0, 0, 1, 0, 0, "TRAILER!!!\0") . "TRAILER!!!\0");
PERL
chmod +x "$tmp/console"

mmdebstrap --mode=$mode --variant=minbase --include="$pkgs" \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--customize-hook='set -e
		r="$1"
		# Smaller and faster to unpack: no hwdb, no iconv modules, UTC only.
		rm -rf "$r"/usr/lib/udev/hwdb.d "$r"/usr/lib/udev/hwdb.bin "$r"/etc/udev/hwdb.bin \
		       "$r"/usr/lib/x86_64-linux-gnu/gconv "$r"/var/cache/* "$r"/var/lib/apt/lists/*
		find "$r"/usr/share/zoneinfo -mindepth 1 -maxdepth 1 ! -name UTC ! -name Etc -exec rm -rf {} +
		# A fixed identity: no first-boot logic.
		echo 5f1c0ffee5f1c0ffee5f1c0ffee5f1c0 > "$r"/etc/machine-id
		echo sdvm > "$r"/etc/hostname
		chroot "$r" passwd -d root >/dev/null
		for u in getty@tty1.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
		         fstrim.timer systemd-pstore.service; do
			ln -sf /dev/null "$r"/etc/systemd/system/$u
		done
		mkdir -p "$r"/etc/systemd/journald.conf.d "$r"/etc/sd-test
		printf "[Journal]\nStorage=volatile\n" > "$r"/etc/systemd/journald.conf.d/volatile.conf
		# podman needs no network plugins (--network=none) and no test tools.
		rm -rf "$r"/usr/lib/cni "$r"/usr/libexec/podman/podman-testing \
		       "$r"/usr/lib/podman/netavark-dhcp-proxy-client
		# podman on a tmpfs root: vfs storage (no overlayfs in the kernel).
		mkdir -p "$r"/etc/containers
		printf "[storage]\ndriver = \"vfs\"\nrunroot = \"/run/containers/storage\"\ngraphroot = \"/var/lib/containers/storage\"\n" > "$r"/etc/containers/storage.conf' \
	--customize-hook="upload $tmp/sd-test.service /etc/systemd/system/sd-test.service" \
	--customize-hook='ln -sf ../sd-test.service "$1"/etc/systemd/system/multi-user.target.wants/sd-test.service' \
	--customize-hook="cd \"\$1\" && { find . -mindepth 1 \\( -path './proc/*' -o -path './sys/*' -o -path './dev/*' -o -path './run/*' -o -path './tmp/*' \\) -prune -o -print | LC_ALL=C sort | cpio --quiet -o -H newc; \"$tmp/console\"; } > '$out.tmp'" \
	--format=null trixie /dev/null "$MIRROR"
mv "$out.tmp" "$out"
echo "$out"
