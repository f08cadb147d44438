#!/bin/sh
# The guest side of the real-systemd suite (tests/tests/systemd_vm.rs): runs
# as /etc/sd-test/cmd under sd-test.service once multi-user.target is
# reached, with systemd 257 as PID 1. Installs barkeep from the project's
# .deb (/opt/sdsuite/barkeep.deb) with dpkg, configures it and runs the
# checks of one boot:
#
#   checks.sh units   socket activation, READY, exposure, reload, SIGKILL /
#                     restart / watchdog with a mapped ivshmem slice, stop,
#                     a podman container given a slice through CDI
#   checks.sh scale   PID 1's CPU per grant at 0 / 10k / 100k live leases,
#                     audit records in a 50,000-grant storm, 10k and 100k
#                     leases surviving SIGKILL and reclaimed
#
# Output, one line each, parsed by the host:
#   SDTEST <check> PASS|FAIL <detail>
#   SDFIG <name> <value>
#   SDWRITE <BAR offset> <hex>      bytes written to ivshmem BAR2 (= the host's backing file)
exec 2>&1
BOOT=${1:?boot name}
# Sizes of the scale boot (the host may lower them for a quick run).
SMALL=${SMALL:-10000} BIG=${BIG:-100000} STORM=${STORM:-50000}
SHM=0000:00:05.0
TENANT="setpriv --reuid=1000 --regid=1000 --clear-groups"
STATE=/run/sdsuite
mkdir -p $STATE
export BARKEEP_SOCKET=/run/barkeep/barkeep.sock

# (No variables of their own: sh has no locals, and callers use $n.)
pass() { echo "SDTEST $1 PASS $(shift; echo "$*")"; }
fail() { echo "SDTEST $1 FAIL $(shift; echo "$*")"; }
fig() { echo "SDFIG $1 $2"; }
prop() { systemctl show -P "$1" barkeepd.service; }
# Seconds since boot with 10 ms resolution.
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# wait_line FILE REGEX SECONDS: until a line of FILE matches.
wait_line() {
	i=0
	while ! grep -q -- "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt $(($3 * 10)) ] && return 1
		sleep 0.1
	done
}
# The bytes of the volatile journal's files.
journal_bytes() { du -sb /run/log/journal 2>/dev/null | cut -f1; }
journal_tail() { journalctl -u barkeepd --no-pager -n "${1:-30}" -o short-monotonic; }

install_deb() {
	useradd -u 1000 -M -d /tmp tenant 2>/dev/null
	t=$(now)
	if dpkg -i /opt/sdsuite/barkeep.deb >$STATE/dpkg.log 2>&1; then
		pass install "dpkg -i of $(dpkg-query -W -f '${Package} ${Version}' barkeep) in $(since "$t") s"
	else
		fail install "dpkg -i failed: $(tail -5 $STATE/dpkg.log)"
	fi
	fig deb_install_s "$(since "$t")"
	# The package enables both units and starts them; in this guest dpkg
	# runs inside the boot transaction (sd-test.service), where the start
	# may not happen yet: start the socket as the next boot would.
	echo "after dpkg -i: socket $(systemctl is-enabled barkeepd.socket) $(systemctl is-active barkeepd.socket), service $(systemctl is-enabled barkeepd.service) $(systemctl is-active barkeepd.service)"
	systemctl start barkeepd.socket
}

# The configuration for this boot replaces the shipped one (which serves
# nothing); `systemctl restart` applies it.
configure() {
	cat >/etc/barkeep/barkeep.toml
	barkeepd check-config /etc/barkeep/barkeep.toml >$STATE/check-config.log 2>&1 ||
		fail config "check-config: $(cat $STATE/check-config.log)"
}

# pid1_cpu NAME PCT LEASES: PID 1's CPU per grant+release as a share of
# barkeepd's. The issue's target (<= 2 %) is a figure, reported met or
# missed: under TCG on a shared host it moves by a percent or two between
# runs. What fails the check is PID 1 taking part in grants again (one
# store message per grant cost 236-354 % before the stash): over 25 %.
pid1_cpu() {
	if [ -z "$2" ]; then
		fail "$1" "no figure for PID 1's CPU ($3 live leases)"
	elif awk -v p="$2" 'BEGIN { exit !(p <= 25) }'; then
		met=$(awk -v p="$2" 'BEGIN { print (p <= 2) ? "met" : "MISSED" }')
		pass "$1" "PID 1 spent $2 % of barkeepd's CPU per grant+release ($3 live leases; target <= 2 %: $met)"
	else
		fail "$1" "PID 1 spent $2 % of barkeepd's CPU per grant+release ($3 live leases): it takes part in grants again"
	fi
}

# A holder: bk-sdcheck hold as the tenant, commands through a FIFO on fd 3
# (kept open, so that it keeps its leases), answers in $STATE/NAME.log.
SEQ=0
start_holder() {
	name=$1; shift
	mkfifo $STATE/$name.in
	$TENANT bk-sdcheck hold "$@" <$STATE/$name.in >$STATE/$name.log 2>&1 &
	exec 3>$STATE/$name.in
}
# ask CMD: one command to the holder on fd 3; its answer goes to $ANSWER
# (not a command substitution: the sequence number must stay in this shell).
ask() {
	echo "$1" >&3
	if wait_line $STATE/$HOLDER.log " #$SEQ\$" 60; then
		ANSWER=$(grep -- " #$SEQ\$" $STATE/$HOLDER.log | sed 's/ #[0-9]*$//')
	else
		ANSWER="NO-ANSWER to $1"
	fi
	SEQ=$((SEQ + 1))
}
# write K: the holder writes pattern K through its mapping and announces it.
write_pattern() {
	ask "write $1"
	case $ANSWER in SDWRITE*) echo "$ANSWER"; return 0 ;; esac
	echo "write $1: $ANSWER"
	return 1
}

# restarted OLDPID EXPECT TIMEOUT: barkeepd came back and EXPECT leases are
# active again; prints bk-sdcheck's lines (RECLAIMED..., SDFIG reclaim_s).
restarted() { bk-sdcheck reclaimed "$1" "$2" "$3" 2>&1; }

units() {
	install_deb
	# The device: udev gives `barkeep` its VFIO nodes (docs/install.md), then
	# vfio-pci is bound by hand (it is built in, so nothing probes again).
	echo vfio-pci >/sys/bus/pci/devices/$SHM/driver_override
	echo $SHM >/sys/bus/pci/drivers_probe
	udevadm settle
	configure <<-EOF
		socket = "/run/barkeep/barkeep.sock"
		socket_mode = "0666"
		reclaim_grace = "60s"
		[[device]]
		name = "shm0"
		pci = "$SHM"
		vfio = "cdev"
		bind = false
		[[device]]
		name = "sim0"
		sim = { bars = [ { index = 2, size = "1M" } ] }
		[[grant]]
		device = "shm0"
		bar = 2
		access = "rw"
		uids = [1000]
		[admin]
		uids = [0]
	EOF

	# Socket activation: with only the socket listening, a client's
	# connection starts the service.
	systemctl stop barkeepd.service
	before=$(systemctl is-active barkeepd.service)
	sock=$(systemctl is-active barkeepd.socket)
	t=$(now)
	out=$($TENANT barkeep devices 2>&1)
	rc=$?
	after=$(systemctl is-active barkeepd.service)
	if [ "$before" != active ] && [ "$sock" = active ] && [ $rc = 0 ] && [ "$after" = active ]; then
		pass socket-activation "service $before -> $after on a tenant's first connection ($(since "$t") s), socket $sock"
	else
		fail socket-activation "service before=$before after=$after socket=$sock; barkeep devices rc=$rc: $out"
	fi
	case $out in *shm0*) ;; *) fail socket-activation "barkeep devices does not list shm0: $out" ;; esac

	# READY: Type=notify, so `active` means READY=1 came.
	st=$(prop ExecMainStartTimestampMonotonic)
	ready=$(prop ActiveEnterTimestampMonotonic)
	text=$(prop StatusText)
	fig ready_s "$(awk -v a="$st" -v b="$ready" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')"
	if [ "$(prop Type)" = notify ] && [ "$ready" -gt 0 ] && [ -n "$text" ]; then
		pass ready "Type=notify active $(awk -v a="$st" -v b="$ready" 'BEGIN { printf "%.3f", (b - a) / 1e6 }') s after exec; status: $text"
	else
		fail ready "Type=$(prop Type) ActiveEnterTimestampMonotonic=$ready StatusText=$text"
	fi

	# Exposure.
	line=$(systemd-analyze security barkeepd.service 2>&1 | grep 'Overall exposure level')
	level=$(echo "$line" | sed -n 's/.*barkeepd\.service: *\([0-9.]*\).*/\1/p')
	fig exposure "${level:-none}"
	if [ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'; then
		pass security "$line"
	else
		fail security "systemd-analyze security: ${line:-no exposure line}"
	fi

	# Reload with a policy change: the tenant is refused sim0 until a grant
	# for it is added and `systemctl reload` applied it, in the same process.
	pid=$(prop MainPID)
	out1=$($TENANT barkeep acquire --no-map --json sim0 2 0 0x1000 2>&1)
	rc1=$?
	cat >>/etc/barkeep/barkeep.toml <<-EOF
		[[grant]]
		device = "sim0"
		bar = 2
		access = "rw"
		uids = [1000]
	EOF
	systemctl reload barkeepd.service
	rrc=$?
	out2=$($TENANT barkeep acquire --no-map --json sim0 2 0 0x1000 2>&1)
	rc2=$?
	if [ $rc1 != 0 ] && [ $rrc = 0 ] && [ $rc2 = 0 ] && [ "$(prop MainPID)" = "$pid" ]; then
		pass reload "refused before (rc $rc1), granted after systemctl reload (same pid $pid)"
	else
		fail reload "before rc=$rc1 ($out1); reload rc=$rrc; after rc=$rc2 ($out2); pid $pid -> $(prop MainPID)"
	fi

	# A mapped slice of the real VFIO device through SIGKILL and restart.
	HOLDER=vfio
	start_holder vfio shm0 2 0x40000 1 1 --map
	if ! wait_line $STATE/vfio.log '^HELD 1\|^bk-sdcheck:' 60 || ! grep -q '^HELD 1' $STATE/vfio.log; then
		fail kill-restart "the holder got no slice: $(cat $STATE/vfio.log)"
		return
	fi
	ok=1
	write_pattern 1 || ok=0
	pid=$(prop MainPID)
	n0=$(prop NRestarts)
	systemctl kill -s KILL barkeepd.service
	# No daemon, or a new one that has not seen the holder yet: the buffer
	# lives in the fd store.
	write_pattern 2 || ok=0
	r=$(restarted "$pid" 1 60)
	echo "$r" | grep -v '^SDFIG'
	ask status
	s=$ANSWER
	write_pattern 3 || ok=0
	if [ $ok = 1 ] && echo "$r" | grep -q '^RECLAIMED' && echo "$s" | grep -q 'revoked=0 listed=1'; then
		pass kill-restart "SIGKILL: restarts $n0 -> $(prop NRestarts), pid $pid -> $(prop MainPID), mapping kept, $(echo "$r" | grep '^RECLAIMED'); $s"
	else
		fail kill-restart "restart: $r; holder: $s; $(journal_tail 15)"
	fi
	echo "$r" | sed -n 's/^SDFIG reclaim_s /SDFIG vfio_kill_reclaim_s /p'

	pid=$(prop MainPID)
	systemctl restart barkeepd.service
	rrc=$?
	r=$(restarted "$pid" 1 60)
	echo "$r" | grep -v '^SDFIG'
	echo "$r" | sed -n 's/^SDFIG reclaim_s /SDFIG vfio_restart_reclaim_s /p'
	ask status
	s=$ANSWER
	if write_pattern 4 && [ $rrc = 0 ] && echo "$r" | grep -q '^RECLAIMED' && echo "$s" | grep -q 'revoked=0 listed=1'; then
		pass restart "systemctl restart: pid $pid -> $(prop MainPID), mapping kept; $s"
	else
		fail restart "systemctl restart rc=$rrc; $r; holder: $s; $(journal_tail 15)"
	fi

	# Watchdog: a stopped daemon stops pinging; systemd kills and restarts it.
	mkdir -p /etc/systemd/system/barkeepd.service.d
	printf '[Service]\nWatchdogSec=4s\n' >/etc/systemd/system/barkeepd.service.d/sdsuite-watchdog.conf
	systemctl daemon-reload
	pid=$(prop MainPID)
	systemctl restart barkeepd.service
	r=$(restarted "$pid" 1 60)
	pid=$(prop MainPID)
	n0=$(prop NRestarts)
	t=$(now)
	kill -STOP "$pid"
	r=$(restarted "$pid" 1 90)
	echo "$r" | grep -v '^SDFIG'
	echo "$r" | sed -n 's/^SDFIG reclaim_s /SDFIG vfio_watchdog_reclaim_s /p'
	wd=$(journalctl -u barkeepd --no-pager -o cat | grep -ci 'watchdog timeout')
	if echo "$r" | grep -q '^RECLAIMED' && [ "$wd" -gt 0 ] && write_pattern 5; then
		pass watchdog "SIGSTOP: watchdog timeout logged, restarts $n0 -> $(prop NRestarts), back with the lease in $(since "$t") s"
	else
		fail watchdog "$r; watchdog lines: $wd; $(journal_tail 15)"
	fi
	fig watchdog_restart_s "$(since "$t")"
	rm /etc/systemd/system/barkeepd.service.d/sdsuite-watchdog.conf
	systemctl daemon-reload

	# Stop: the store is closed, the device fds with it, and the buffer dies.
	ask probe
	s0=$ANSWER
	systemctl stop barkeepd.service
	sleep 1
	ask probe
	s1=$ANSWER
	if [ "$s0" != "${s0#PROBE reads}" ] && [ "$s1" = "PROBE SIGBUS" ]; then
		pass stop-revokes "before stop: $s0; after systemctl stop: $s1"
	else
		fail stop-revokes "before stop: $s0; after systemctl stop: $s1"
	fi
	echo quit >&3
	exec 3>&-
	container
}

# A container from the spec `barkeep cdi` writes: podman (vfs storage, no
# network) runs an image imported from a tarball (busybox, barkeep,
# bk-inherit); inside, `barkeep exec` acquires the spec's slice of the
# ivshmem BAR and bk-inherit writes through it. The host finds the bytes.
container() {
	t=$(now)
	if ! podman import /opt/sdsuite/image.tar localhost/bk-worker:1 >$STATE/podman.log 2>&1; then
		fail container "podman import: $(tail -5 $STATE/podman.log)"
		return
	fi
	mkdir -p /etc/cdi
	if ! barkeep cdi --device worker --slice shm0:2:0x80000:0x1000 --output /etc/cdi/barkeep-worker.yaml >$STATE/cdi.log 2>&1; then
		fail container "barkeep cdi: $(cat $STATE/cdi.log)"
		return
	fi
	hex=c0ffee0123456789abcdef5a5a0ff1ce
	out=$(podman run --rm --network=none --device barkeep.io/slice=worker --user 1000:1000 \
		localhost/bk-worker:1 barkeep exec -- bk-inherit write 0 0x20 $hex 2>&1)
	rc=$?
	fig container_run_s "$(since "$t")"
	if [ $rc = 0 ]; then
		echo "SDWRITE 0x80020 $hex"
		# bk-inherit also writes 1 at offset 0 of each slice (its check that
		# read-only slices refuse writes; this one is read-write).
		echo "SDWRITE 0x80000 01"
		pass container "podman run --device barkeep.io/slice=worker: barkeep exec + bk-inherit wrote through shm0 BAR2 0x80000+0x1000 ($(since "$t") s with the import)"
	else
		fail container "podman run rc=$rc: $out"
	fi
}

# cpu LABEL: 2000 acquire+release round trips on sim0 and the CPU that PID 1,
# barkeepd and journald spent on them.
cpu() {
	bk-sdcheck storm sim0 2 0x3ff00000 2000 1 "$1" 2>&1
}

# hold_scale NAME START COUNT SESSIONS: leases held by a tenant (stdin kept
# open by tail, so it holds them until killed).
hold_scale() {
	# Its stdout is not ours: the caller reads ours to its end (a command
	# substitution), which would never come while the holder runs.
	(tail -f /dev/null | $TENANT bk-sdcheck hold sim0 2 "$2" "$3" "$4" >$STATE/$1.log 2>&1) >/dev/null 2>&1 &
	wait_line $STATE/$1.log '^HELD\|^bk-sdcheck:' 3600
	cat $STATE/$1.log
}

# kill_reclaim LABEL EXPECT TARGET: SIGKILL, then the time from READY until
# EXPECT leases (those held) are active again, three times; the median is
# the figure. Fails unless TARGET leases were held.
kill_reclaim() {
	times=
	for i in 1 2 3; do
		pid=$(prop MainPID)
		systemctl kill -s KILL barkeepd.service
		r=$(restarted "$pid" "$2" 300)
		echo "$r" | grep -v '^SDFIG'
		s=$(echo "$r" | sed -n 's/^SDFIG reclaim_s //p')
		if [ -z "$s" ]; then
			fail "$1" "SIGKILL $i with $2 leases: $r; $(journal_tail 20)"
			systemctl reset-failed barkeepd.socket barkeepd.service
			systemctl start barkeepd.socket barkeepd.service
			return
		fi
		fig "$(echo "$1" | tr - _)_s_$i" "$s"
		times="$times $s"
		sleep 2
	done
	med=$(echo $times | tr ' ' '\n' | sort -n | sed -n 2p)
	fig "$(echo "$1" | tr - _)_s_median" "$med"
	if [ "$2" -ge "$3" ]; then
		pass "$1" "$2 leases survived 3 SIGKILLs, reclaimed in$times s after READY (median $med)"
	else
		fail "$1" "only $2 of $3 leases were held; those survived 3 SIGKILLs, reclaimed in$times s after READY (median $med)"
	fi
}

scale() {
	install_deb
	configure <<-EOF
		socket = "/run/barkeep/barkeep.sock"
		socket_mode = "0666"
		reclaim_grace = "300s"
		[[device]]
		name = "sim0"
		sim = { bars = [ { index = 2, size = "1G" } ] }
		[[grant]]
		device = "sim0"
		bar = 2
		access = "rw"
		uids = [0, 1000]
		[admin]
		uids = [0]
		[limits]
		leases = 262144
		leases_per_session = 131072
		leases_per_uid = 262144
	EOF
	systemctl restart barkeepd.service
	systemctl is-active barkeepd.service >/dev/null || fail scale-start "$(journal_tail 20)"

	# PID 1's CPU per grant+release, no leases held.
	r=$(cpu cpu0)
	echo "$r"
	pct=$(echo "$r" | sed -n 's/^SDFIG cpu0_pid1_pct_of_barkeepd //p')
	pid1_cpu pid1-cpu-0 "$pct" 0

	# Audit: every grant of a $STORM-grant storm is in the journal. journald
	# drops a service's messages beyond RateLimitBurst= per
	# RateLimitIntervalSec= (10,000 per 30 s by default, multiplied by up to
	# ~5 for the free space of the journal's file system) unless the unit
	# says otherwise (LogRateLimitIntervalSec=, LogRateLimitBurst=). Under
	# TCG a storm runs about a hundred times slower than on a real host
	# (tens of grants per second, against thousands), far below the
	# default, so the guest's default is lowered a hundredfold (100 per
	# 30 s): the storm then exceeds it as a real host's storm exceeds the
	# real default, and only the unit's own settings (or fewer lines per
	# grant) keep every record.
	#
	# What is counted is what the rate limit lets through, so the journal
	# must have room for it: the guest's journal is volatile, and its
	# default size, 10 % of /run (about 40 MB in this 2 GB guest), holds
	# about 36,000 records (~1.1 KB each) and rotates older ones out (CI
	# once counted 16,342 of 50,000 for that reason alone). Retention is
	# the operator's choice (docs/operators.md); here /run and the
	# journal's limit are raised for the storm.
	mkdir -p /etc/systemd/journald.conf.d
	mount -o remount,size=1400M /run
	printf '[Journal]\nRateLimitIntervalSec=30s\nRateLimitBurst=100\nRuntimeMaxUse=1G\nRuntimeKeepFree=64M\n' >/etc/systemd/journald.conf.d/sdsuite-ratelimit.conf
	systemctl restart systemd-journald.service
	fig journald_burst_per_30s 100
	journalctl --sync
	jb=$(journal_bytes)
	b=$(journalctl -u barkeepd -o json --no-pager | bk-sdcheck audit | sed -n 's/^SDFIG audit_grant //p')
	t=$(now)
	r=$(bk-sdcheck storm sim0 2 0x3fe00000 "$STORM" 2 storm 2>&1)
	echo "$r"
	fig storm_s "$(since "$t")"
	sleep 2
	journalctl --sync
	a=$(journalctl -u barkeepd -o json --no-pager | bk-sdcheck audit)
	echo "$a"
	g=$(echo "$r" | sed -n 's/^SDFIG storm_grants //p')
	ag=$(echo "$a" | sed -n 's/^SDFIG audit_grant //p')
	rec=$((${ag:-0} - ${b:-0}))
	fig storm_audit_grant_records "$rec"
	fig storm_audit_lost $((${g:-0} - rec))
	# The journal's own bytes per record (grant and release lines), for
	# sizing its retention, and whether journald said it dropped any.
	ja=$(journal_bytes)
	if [ -n "$g" ] && [ "$g" -gt 0 ] && [ -n "$jb" ] && [ -n "$ja" ]; then
		fig journal_bytes_per_grant_release $(((ja - jb) / g))
	fi
	fig journald_suppressed_lines "$(journalctl -b -o cat --no-pager | grep -c 'Suppressed [0-9]* messages from barkeepd')"
	if [ -n "$g" ] && [ "$g" -ge "$STORM" ] && [ "$rec" -ge "$g" ]; then
		pass audit-storm "$g grants, $rec grant records in journalctl -u barkeepd (storm at $(echo "$r" | sed -n 's/^SDFIG storm_rt_per_s //p') grants/s, journald default lowered to 100 lines per 30 s)"
	else
		fail audit-storm "${g:-?} grants, $rec grant records in journalctl -u barkeepd ($((${g:-0} - rec)) lost; storm at $(echo "$r" | sed -n 's/^SDFIG storm_rt_per_s //p') grants/s, journald default lowered to 100 lines per 30 s); $(echo "$r" | grep -v SDFIG | tail -3)"
	fi
	rm /etc/systemd/journald.conf.d/sdsuite-ratelimit.conf
	systemctl restart systemd-journald.service

	# $SMALL (10,000) live leases.
	h=$(hold_scale hsmall 0 "$SMALL" 4)
	echo "$h"
	n=$(echo "$h" | sed -n 's/^HELD //p')
	fig held_first "${n:-0}"
	if [ "${n:-0}" -ge "$SMALL" ]; then
		pass "hold-$SMALL" "$SMALL leases held ($(echo "$h" | sed -n 's/^SDFIG hold_acquire_s //p') s to acquire)"
	else
		fail "hold-$SMALL" "held ${n:-0} of $SMALL: $(echo "$h" | grep -v '^SDFIG')"
	fi
	r=$(cpu "cpu$SMALL")
	echo "$r"
	pct=$(echo "$r" | sed -n "s/^SDFIG cpu${SMALL}_pid1_pct_of_barkeepd //p")
	pid1_cpu "pid1-cpu-$SMALL" "$pct" "${n:-0}"
	kill_reclaim "reclaim-$SMALL" "${n:-0}" "$SMALL"

	# $BIG (100,000) live leases: $BIG - $SMALL more, from BAR offset 256 MiB.
	h=$(hold_scale hbig 0x10000000 $((BIG - SMALL)) 8)
	echo "$h"
	m=$(echo "$h" | sed -n 's/^HELD //p')
	total=$((${n:-0} + ${m:-0}))
	fig held_total "$total"
	if [ "$total" -ge "$BIG" ]; then
		pass "hold-$BIG" "$BIG leases held (the last $((BIG - SMALL)) in $(echo "$h" | sed -n 's/^SDFIG hold_acquire_s //p') s)"
	else
		fail "hold-$BIG" "held $total of $BIG: $(echo "$h" | grep -v '^SDFIG')"
	fi
	r=$(cpu "cpu$BIG")
	echo "$r"
	pct=$(echo "$r" | sed -n "s/^SDFIG cpu${BIG}_pid1_pct_of_barkeepd //p")
	pid1_cpu "pid1-cpu-$BIG" "$pct" "$total"
	kill_reclaim "reclaim-$BIG" "$total" "$BIG"
}

case $BOOT in
units) units ;;
scale) scale ;;
*) fail harness "unknown boot $BOOT" ;;
esac
echo "SDDONE $BOOT"
