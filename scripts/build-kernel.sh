#!/usr/bin/env bash
# Build the msb minimal guest kernel (everything built in, no modules).
#
#   scripts/build-kernel.sh [--force] [--clean]
#   scripts/build-kernel.sh --check    exit 0 if built and up to date, else 1 (does nothing)
#
# Source:  Debian's /usr/src/linux-source-*.tar.xz (package linux-source; the
#          newest tarball wins).
# Patches: kernel/patches/*.patch, applied in name order (patch -p1).
# Config:  `make tinyconfig`, then kernel/msb-minimal.config merged with
#          allnoconfig semantics (options not in the fragment stay off).
# Output:  ${MSB_CACHE_DIR:-$HOME/.cache/msb}/kernel/minimal/
#            bzImage   the kernel (compressed, any boot loader)
#            vmlinux   the same kernel uncompressed, with a PVH entry point:
#                      QEMU's -kernel loads it directly, skipping the LZ4
#                      decompression (~70 ms faster to init under TCG)
#            version   `make kernelrelease` (e.g. 6.1.192-msb)
#            config    the final .config
#            patches   names of the kernel/patches applied
#            System.map  symbols, for reading addresses in guest oopses
#            stamp     hash of fragment + patches + source tarball + this script
# The build tree stays in .../kernel/build/ so a changed fragment rebuilds
# incrementally; --clean removes it after a successful build.
#
# Idempotent: if the stamp matches, it prints the path and exits at once.
# `make setup` (scripts/bootstrap.sh) and `make kernel` call this script.
set -euo pipefail

FORCE=0
CLEAN=0
CHECK=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --clean) CLEAN=1 ;;
        --check) CHECK=1 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "build-kernel.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FRAGMENT="$ROOT/kernel/msb-minimal.config"
PATCHES=("$ROOT"/kernel/patches/*.patch)
[[ -e "${PATCHES[0]}" ]] || PATCHES=()
CACHE="${MSB_CACHE_DIR:-$HOME/.cache/msb}"
OUT="$CACHE/kernel/minimal"
BUILD="$CACHE/kernel/build"
JOBS="$(nproc)"

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: error: %s\n' "$*" >&2; exit 1; }

[[ -f "$FRAGMENT" ]] || die "missing $FRAGMENT"

# one build at a time per cache (two makes in one tree would corrupt it); --check only reads
# the installed stamp, which is replaced atomically, so it does not wait for a build
if [[ $CHECK -eq 0 ]]; then
    mkdir -p "$CACHE/kernel"
    exec 9>"$CACHE/kernel/.build.lock"
    flock -n 9 || { log "waiting for another build of the kernel in $CACHE/kernel to finish"; flock 9; }
fi

# --- build dependencies --------------------------------------------------------
need_pkgs=()
for pair in gcc:build-essential make:build-essential strip:binutils bc:bc flex:flex \
            bison:bison lz4:lz4 xz:xz-utils perl:perl patch:patch; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
for pair in /usr/include/libelf.h:libelf-dev /usr/include/openssl/ssl.h:libssl-dev; do
    [[ -e "${pair%%:*}" ]] || need_pkgs+=("${pair#*:}")
done
compgen -G '/usr/src/linux-source-*.tar.xz' >/dev/null || need_pkgs+=(linux-source)
if ((${#need_pkgs[@]})) && [[ $CHECK -eq 1 ]]; then
    exit 1
elif ((${#need_pkgs[@]})); then
    mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
    log "installing build dependencies: ${need_pkgs[*]}"
    if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${need_pkgs[@]}" >&2 || die "apt-get install ${need_pkgs[*]} failed"
fi

TARBALL="$(compgen -G '/usr/src/linux-source-*.tar.xz' | sort -V | tail -n1 || true)"
[[ -f "$TARBALL" ]] || die "no /usr/src/linux-source-*.tar.xz (apt-get install linux-source)"
SRCNAME="$(basename "$TARBALL" .tar.xz)"          # linux-source-6.1

# --- idempotency -----------------------------------------------------------------
# Debian's package version says which patch level the tarball holds.
SRCPKG_VER="$(dpkg-query -W -f='${Version}' "$SRCNAME" 2>/dev/null || stat -c %Y "$TARBALL")"
PATCH_HASH="$( { echo "${PATCHES[@]##*/}"; cat /dev/null "${PATCHES[@]}"; } | sha256sum | cut -c1-16)"
STAMP="$( { cat "$FRAGMENT"; echo "$SRCNAME $SRCPKG_VER $PATCH_HASH"; cat "$0"; } | sha256sum | cut -d' ' -f1)"
if [[ $FORCE -eq 0 && -f "$OUT/bzImage" && -f "$OUT/vmlinux" && -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$STAMP" ]]; then
    [[ $CHECK -eq 0 ]] || exit 0
    log "up to date: $OUT/bzImage ($(cat "$OUT/version"))"
    echo "$OUT/bzImage"
    exit 0
fi
[[ $CHECK -eq 0 ]] || exit 1

# --- source tree -------------------------------------------------------------------
mkdir -p "$BUILD"
SRC="$BUILD/$SRCNAME"
OBJ="$BUILD/obj"
MARKER=".msb-src-$SRCPKG_VER-$PATCH_HASH"
if [[ ! -f "$SRC/$MARKER" ]]; then
    log "unpacking $TARBALL ($SRCPKG_VER)"
    rm -rf "$SRC" "$OBJ" "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    tar -xf "$TARBALL" -C "$SRC.tmp"
    for p in "${PATCHES[@]}"; do
        log "applying ${p#$ROOT/}"
        patch -d "$SRC.tmp/$SRCNAME" -p1 --forward --quiet <"$p" || die "patch ${p#$ROOT/} does not apply"
    done
    mv "$SRC.tmp/$SRCNAME" "$SRC"
    rmdir "$SRC.tmp"
    touch "$SRC/$MARKER"
fi
mkdir -p "$OBJ"

# --- configure ---------------------------------------------------------------------
# ARCH=x86_64 matters: with the default ARCH=x86, allnoconfig/tinyconfig
# produce a 32-bit configuration.
KMAKE=(make -C "$SRC" O="$OBJ" ARCH=x86_64 -j"$JOBS"
       KBUILD_BUILD_USER=msb KBUILD_BUILD_HOST=msb
       KBUILD_BUILD_TIMESTAMP="$SRCPKG_VER")
log "configuring: tinyconfig + $(basename "$FRAGMENT")"
"${KMAKE[@]}" -s tinyconfig >/dev/null
( cd "$SRC" && ARCH=x86_64 scripts/kconfig/merge_config.sh -n -O "$OBJ" \
      "$OBJ/.config" "$FRAGMENT" >"$OBJ/merge.log" 2>&1 ) \
    || { cat "$OBJ/merge.log" >&2; die "merge_config.sh failed"; }

# Every line of the fragment must survive Kconfig's dependency resolution;
# an option whose dependencies are missing is silently dropped otherwise.
bad=0
while IFS= read -r line; do
    if [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        sym="${BASH_REMATCH[1]}"
        if grep -q "^$sym=" "$OBJ/.config"; then
            log "fragment wants $sym off, got: $(grep "^$sym=" "$OBJ/.config")"; bad=1
        fi
    elif [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)= ]]; then
        sym="${BASH_REMATCH[1]}"
        if ! grep -qxF -- "$line" "$OBJ/.config"; then
            log "fragment wants $line, got: $(grep "^$sym=" "$OBJ/.config" || echo 'unset (unmet dependency?)')"; bad=1
        fi
    fi
done <"$FRAGMENT"
[[ $bad -eq 0 ]] || die "kernel/msb-minimal.config does not apply cleanly (see above)"

# --- build -------------------------------------------------------------------------
log "building vmlinux + bzImage with -j$JOBS (about 5 minutes on 2 cores, longer on a busy machine)"
start=$(date +%s)
# a line every 30 s while make runs in the foreground (Ctrl-C stops it): a silent
# five-minute wait looks like a hang
( while sleep 30; do
      log "still building: $(( $(date +%s) - start )) s, $(grep -c '^  CC ' "$OBJ/build.log") of ~1160 files compiled"
  done ) &
TICKER=$!
trap 'kill "$TICKER" 2>/dev/null || true' EXIT
"${KMAKE[@]}" vmlinux bzImage >"$OBJ/build.log" 2>&1 \
    || { tail -n 40 "$OBJ/build.log" >&2; die "kernel build failed (full log: $OBJ/build.log)"; }
kill "$TICKER" 2>/dev/null || true
RELEASE="$("${KMAKE[@]}" -s kernelrelease)"
log "built $RELEASE in $(( $(date +%s) - start )) s"

# --- install atomically ----------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
TMP="$(mktemp -d "$(dirname "$OUT")/.minimal.XXXXXX")"
cp "$OBJ/arch/x86/boot/bzImage" "$TMP/bzImage"
# symbols are not needed to boot; the PVH note (.notes) is an allocated section and stays
strip --strip-all -o "$TMP/vmlinux" "$OBJ/vmlinux"
cp "$OBJ/System.map" "$TMP/System.map"
cp "$OBJ/.config" "$TMP/config"
echo "$RELEASE" >"$TMP/version"
# which patches are in (engine/vm/kernel/minimal.py enables lapic_timer_khz= from this)
for p in "${PATCHES[@]}"; do basename "$p"; done >"$TMP/patches"
echo "$STAMP" >"$TMP/stamp"
chmod 0755 "$TMP"
if [[ -e "$OUT" ]]; then
    OLD="$(mktemp -d "$(dirname "$OUT")/.minimal.old.XXXXXX")"
    mv "$OUT" "$OLD/minimal"
    mv "$TMP" "$OUT"
    rm -rf "$OLD"
else
    mv "$TMP" "$OUT"
fi
if [[ $CLEAN -eq 1 ]]; then rm -rf "$BUILD"; fi
log "installed $OUT/bzImage ($(stat -c %s "$OUT/bzImage") bytes) and vmlinux ($(stat -c %s "$OUT/vmlinux") bytes)"
echo "$OUT/bzImage"
