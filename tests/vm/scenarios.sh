#!/bin/sh
# Scenarios of the real-kernel suite, run by /init as root after the devices
# are bound (see README.md). The scenarios themselves live in bk-vmcheck
# (tests/src/bin/bk-vmcheck.rs): it starts barkeepd, drives the `barkeep` CLI
# as the unprivileged users tenant (1000) and tenant2 (1001), and prints one
# `BKTEST <scenario> PASS|FAIL <detail>` line per scenario.
#
# Boots: `main` (scenarios 1-6 and 8-11), `nommap` (scenarios 7 and 12, booted
# with vfio_pci_core.dmabuf_mmap=0; 12 also hides REVOKE and MEMATTR by config).
exec /usr/bin/bk-vmcheck run "$1"
