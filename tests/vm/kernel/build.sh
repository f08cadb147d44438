#!/bin/sh
# tests/vm/kernel/build.sh: the test kernel of both QEMU suites (tests/vm,
# busybox; tests/tests/systemd_vm.rs, systemd), built from Debian's
# linux-source-7.3 (pinned version and sha256), vfio-dmabuf-mmap.patch and
# `config` (this directory), into a cache directory keyed by this recipe:
#
#   ${BARKEEP_CACHE:-$HOME/.cache/barkeep}/kernel/RECIPE/bzImage
#
# where RECIPE is the first 16 hex digits of the sha256 of config, patch and
# source version. A change to any of them gives a new directory.
#
# usage: build.sh            build unless the cache has it; print its path
#        build.sh --path     print the cache path (built or not) and exit
#        build.sh --seed DIR copy DIR/bzImage into the cache if DIR/config and
#                            DIR/vfio-dmabuf-mmap.patch equal this recipe's
#                            (a prebuilt kernel of the same recipe); exit 1
#                            if they differ or DIR has no bzImage
#        build.sh --deb FILE build from a downloaded
#                            linux-source-7.3_7.3.4-1~bpo13+1_all.deb (offline)
# env: MIRROR (default: the Debian archive this machine's apt configuration
#      names), WORK (default CACHE/kernel/build: download + 1.5 GB tree)
#
# Needs gcc make flex bison bc libelf-dev libssl-dev, and for the download
# debian-archive-keyring with the trixie keys. ~5-7 minutes on 2 cores.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
VER=7.3.4-1~bpo13+1
SHA=703e369ddd4cce971452f5a593ee55df3a5c10c83caf0fa0df039633ed181ee3
cache=${BARKEEP_CACHE:-${HOME:-/root}/.cache/barkeep}
recipe=$( { sha256sum < "$here/config"; sha256sum < "$here/vfio-dmabuf-mmap.patch"; echo "linux-source-7.3 $VER $SHA"; } | sha256sum | cut -c1-16)
out=$cache/kernel/$recipe
bz=$out/bzImage

case ${1:-} in
--path)
	echo "$bz"
	exit 0
	;;
--seed)
	dir=${2:?--seed DIR}
	if cmp -s "$dir/config" "$here/config" && cmp -s "$dir/vfio-dmabuf-mmap.patch" "$here/vfio-dmabuf-mmap.patch" && [ -f "$dir/bzImage" ]; then
		mkdir -p "$out"
		cp "$dir/bzImage" "$bz.tmp" && mv "$bz.tmp" "$bz"
		echo "$bz"
		exit 0
	fi
	echo "build.sh: $dir does not hold this recipe's kernel (config or patch differ, or no bzImage)" >&2
	exit 1
	;;
esac

if [ -f "$bz" ]; then
	echo "$bz"
	exit 0
fi

WORK=${WORK:-$cache/kernel/build}
mkdir -p "$WORK" "$out"
deb=
[ "${1:-}" = --deb ] && deb=${2:?--deb FILE}
if [ -z "$deb" ]; then
	deb=$WORK/linux-source-7.3_${VER}_all.deb
	if [ ! -f "$deb" ]; then
		if [ -z "${MIRROR:-}" ]; then
			MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
			[ -n "$MIRROR" ] || MIRROR=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\).*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
			[ -n "$MIRROR" ] || { echo "build.sh: no Debian archive in the apt configuration: set MIRROR" >&2; exit 2; }
		fi
		# A private apt configuration: the system's sources stay untouched.
		apt=$WORK/apt
		mkdir -p "$apt/lists/partial" "$apt/archives/partial"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie-backports main" >"$apt/sources.list"
		o="-o Dir::Etc::sourcelist=$apt/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$apt/lists -o Dir::Cache::archives=$apt/archives -o APT::Sandbox::User=root"
		# shellcheck disable=SC2086
		apt-get $o update
		# shellcheck disable=SC2086
		(cd "$WORK" && apt-get $o download "linux-source-7.3=$VER")
	fi
fi
echo "$SHA  $deb" | sha256sum -c -

src=$WORK/linux-source-7.3
rm -rf "$src" "$WORK/deb"
dpkg-deb -x "$deb" "$WORK/deb"
tar -C "$WORK" -xf "$WORK/deb/usr/src/linux-source-7.3.tar.xz"
rm -rf "$WORK/deb"
cd "$src"
patch -p1 <"$here/vfio-dmabuf-mmap.patch"
cp "$here/config" .config
make olddefconfig >/dev/null
if ! cmp -s .config "$here/config"; then
	echo "build.sh: warning: make olddefconfig changed the configuration (another compiler?):" >&2
	diff "$here/config" .config >&2 || true
fi
make -j"$(nproc)" bzImage
cp arch/x86/boot/bzImage "$bz.tmp"
mv "$bz.tmp" "$bz"
rm -rf "$src"
echo "$bz"
