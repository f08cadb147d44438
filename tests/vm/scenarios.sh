#!/bin/sh
# Scenarios of the real-kernel suite, run by /init as root (see README.md).
echo "BKTEST scenarios INFO boot=$1 (no scenarios yet)"
