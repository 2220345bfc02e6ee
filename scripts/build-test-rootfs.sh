#!/usr/bin/env bash
# Build the small root filesystems the test-suite and benchmarks boot, from Debian packages
# only (no registry needed). Idempotent: an existing, complete tree is kept.
#   busybox: /bin/busybox (Debian's busybox-static) + one symlink per applet, ~2 MB.
set -euo pipefail
CACHE="${MSB_CACHE_DIR:-$HOME/.cache/msb}"
DEST="$CACHE/rootfs-dirs/busybox"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if [[ -f "$DEST/.complete" ]]; then
  exit 0
fi
# ldd says "not a dynamic executable" for a static binary (the guest has no libc of its own).
if ! "$BUSYBOX" --list >/dev/null 2>&1 || [[ "$(ldd "$BUSYBOX" 2>&1 || true)" != *"not a dynamic"* ]]; then
  echo "a static busybox is required at $BUSYBOX: apt-get install busybox-static" >&2
  exit 1
fi
mkdir -p "$CACHE/rootfs-dirs"
tmp="$(mktemp -d "$CACHE/rootfs-dirs/.busybox.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,dev,proc,sys,run,var/tmp,home}
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
chmod 700 "$tmp/root"
install -m 0755 "$BUSYBOX" "$tmp/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
  [[ "$applet" == "bin/busybox" ]] && continue
  mkdir -p "$tmp/$(dirname "$applet")"
  ln -sf /bin/busybox "$tmp/$applet"
done
cat > "$tmp/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$tmp/etc/group" <<'GR'
root:x:0:
nogroup:x:65534:
GR
echo "msb-busybox" > "$tmp/etc/os-release-msb"
touch "$tmp/.complete"
rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
echo "built $DEST"
