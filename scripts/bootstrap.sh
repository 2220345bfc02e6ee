#!/usr/bin/env bash
# Idempotent setup for a fresh Debian/Ubuntu host: system packages, .venv, the guest agent,
# the guest kernel and the test root filesystems. Quick when everything is already there.
# Used by `make setup` (and so by `make run`, `make test`, .ci/run). Every program the code runs
# is installed here or comes with Debian: tests/unit/test_bootstrap.py checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="${MSB_CACHE_DIR:-$HOME/.cache/msb}"
mkdir -p "$CACHE"
say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# --- 1. system packages ------------------------------------------------------------------
# binary -> Debian package that provides it
declare -A NEED=(
  [qemu-system-x86_64]=qemu-system-x86
  [mkfs.ext4]=e2fsprogs
  [debugfs]=e2fsprogs
  [gcc]=gcc
  [make]=make
  [tmux]=tmux
  [docker-registry]=docker-registry   # tests: a real local OCI registry
  [skopeo]=skopeo                     # tests and bench: the reference registry client
  [htpasswd]=apache2-utils            # tests: the registry's htpasswd file
  [mmdebstrap]=mmdebstrap             # `msb image build`: offline base images
  [zstd]=zstd
  [slirp4netns]=slirp4netns         # gVisor backend: user-mode network of a sandbox's netns
  [unshare]=util-linux                # gVisor backend: network namespaces, runsc's wrapper
  [nsenter]=util-linux
  [ip]=iproute2
  [depmod]=kmod                       # the guest kernel's module dependencies (initramfs)
  [pgrep]=procps                      # tests: no process left behind
)
missing=()
for bin in "${!NEED[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [[ -x "/sbin/$bin" || -x "/usr/sbin/$bin" ]] || missing+=("${NEED[$bin]}")
done
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
dpkg -s libc6-dev >/dev/null 2>&1 || missing+=(libc6-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  pkgs="$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
  say "installing system packages: $pkgs"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi

# --- 1b. the unprivileged user QEMU drops to after opening its files (engine/vm/confine.py) --
if ! id msb-vmm >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin msb-vmm
  else
    say "note: no user msb-vmm (QEMU will run as yourself); as root: useradd --system --no-create-home --shell /usr/sbin/nologin msb-vmm"
  fi
fi

# --- 2. Python environment ---------------------------------------------------------------
stamp_src="$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -x .venv/bin/python || "$(cat .venv/.msb-stamp 2>/dev/null)" != "$stamp_src" ]]; then
  say "creating .venv and installing msb (editable) with its dev tools"
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  echo "$stamp_src" > .venv/.msb-stamp
fi

# --- 3. guest agent (static C binary) and the host network filter (LD_PRELOAD shim) -------
make -s -C engine/guest/agent OUT="$CACHE/agent"
make -s -C engine/vm/netfilter OUT="$CACHE/netfilter"

# --- 3b. gVisor's runsc (Debian's package from sid, checked by apt, unpacked into the cache) --
if ! command -v runsc >/dev/null 2>&1 && [[ -z "${MSB_RUNSC:-}" ]]; then
  [[ -x "$CACHE/bin/runsc" ]] || say "fetching gVisor's runsc (Debian's package, checked by apt; ~5 s)"
  .venv/bin/python -m engine.vm.runsc --ensure >/dev/null
fi

# --- 4. guest kernel (Debian's cloud kernel, verified by apt) ---------------------------
if [[ -z "${MSB_KERNEL:-}" ]]; then
  compgen -G "$CACHE/kernel/debian-*/vmlinux" >/dev/null || say "fetching Debian's cloud kernel (~20 s)"
  .venv/bin/python -m engine.vm.kernel --ensure >/dev/null
fi

# --- 4b. the minimal guest kernel (built from Debian's linux-source, cached) -------------
# The suite tests it, and QEMU's volumes need it: Debian's cloud kernel has no 9p.
if ! bash scripts/build-kernel.sh --check; then
  say "building the minimal guest kernel into $CACHE/kernel (the first build takes about 5 minutes on 2 cores, a rebuild seconds)"
  bash scripts/build-kernel.sh >/dev/null
fi

# --- 5. root filesystems for tests and demos ---------------------------------------------
bash scripts/build-test-rootfs.sh >/dev/null
say "ready ($ROOT, ${SECONDS} s)"
