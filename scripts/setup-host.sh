#!/bin/sh
# Prepare this host for l7probe: Debian packages, kernel headers for BCC, tracefs.
# Idempotent: a second run only checks.  Run as root.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup-host: must run as root (apt-get, mounts)" >&2
    exit 1
fi

# --- packages -----------------------------------------------------------------------------
# What the probe needs, then what the tests and benchmarks use (real servers and clients).
PKGS="python3 python3-venv python3-bpfcc bpfcc-tools libconfig9 golang-go gcc binutils
$(grep -v '^#' tests/support/APT-PACKAGES)"
ARCH=$(dpkg --print-architecture)
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup-host: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    # Debian starts services on install (prometheus would listen on every interface); the
    # tests run their own instances on loopback: no service is started while installing
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    rc=0
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing \
        >/dev/null || rc=$?
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { echo "setup-host: apt-get install failed ($rc)" >&2; exit 1; }
fi

# --- kernel headers for BCC -----------------------------------------------------------------
KREL=$(uname -r)
BUILD=/lib/modules/$KREL/build
if [ ! -d "$BUILD/include" ]; then
    if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
        apt-get install -y -qq "linux-headers-$KREL" >/dev/null
    fi
fi
if [ ! -d "$BUILD/include" ]; then
    # No headers for this kernel (custom build, CONFIG_IKHEADERS off): use the
    # distribution's.  Safe for l7probe: its BPF code reads tracepoint arguments and user
    # memory only, never kernel struct fields by offset.
    dpkg-query -W -f='${Status}' "linux-headers-$ARCH" 2>/dev/null | grep -q "ok installed" ||
        apt-get install -y -qq "linux-headers-$ARCH" >/dev/null
    hdr=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n 1)
    common=$(echo "$hdr" | sed "s/-$ARCH\$/-common/")
    if [ -z "$hdr" ] || [ ! -d "$hdr" ]; then
        echo "setup-host: no kernel headers for $KREL and none installable" >&2
        exit 1
    fi
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$hdr" "$BUILD"
    [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$KREL/source"
    echo "setup-host: no headers match kernel $KREL; linked Debian's $(basename "$hdr")" \
         "(fine for l7probe: it reads no kernel struct offsets)"
fi

# --- tracefs / debugfs --------------------------------------------------------------------
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
if [ ! -d /sys/kernel/debug/tracing ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
fi
[ -d /sys/kernel/tracing/events ] || [ -d /sys/kernel/debug/tracing/events ] || {
    echo "setup-host: cannot mount tracefs" >&2; exit 1; }
exit 0
