"""The guest kernel command line of a QEMU sandbox (boot parameters: docs/protocol.md)."""

from __future__ import annotations

from engine.errors import ConfigError
from engine.vm.backend import VmSpec
from engine.vm.network import network_cmdline
from engine.vm.volumes import volume_cmdline

CMDLINE_MAX = 2048
"""x86's ``COMMAND_LINE_SIZE``: the kernel truncates a longer command line."""


def host_tsc_khz() -> int | None:
    """Best guess of the host TSC frequency in kHz (TCG guests run on the host's TSC)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/tsc_freq_khz") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def kernel_cmdline(spec: VmSpec) -> str:
    """The guest kernel command line for ``spec`` (boot parameters: docs/protocol.md)."""
    parts = [
        "console=ttyS0",
        "quiet",
        "loglevel=1",
        "panic=-1",  # a guest panic reboots, and -no-reboot turns that into QEMU exiting
        "reboot=t",
        "rdinit=/init",
        "8250.nr_uarts=1",
        "i8042.noaux",
        "i8042.nokbd",
        "random.trust_cpu=on",
        "mitigations=off",  # the VM is the boundary; in-guest mitigations only cost time
        "msb.root=/dev/vda",
        "msb.port=msb.0",
        f"msb.hostname={spec.name[:63]}",
    ]
    parts += upper_cmdline(spec)
    if spec.template_stage is not None:
        parts.append(f"msb.template={spec.template_stage}")
    if spec.accel == "tcg" and spec.machine == "microvm":
        # microvm has no HPET: under load the kernel cannot calibrate its clock and hangs
        # (measured with 4 concurrent boots). Telling it the TSC rate avoids calibration.
        khz = host_tsc_khz()
        if khz:
            parts.append(f"tsc_early_khz={khz}")
    parts += network_cmdline(spec)
    parts += volume_cmdline(spec)
    parts += spec.kernel_args
    if spec.extra_cmdline:
        parts.append(spec.extra_cmdline)
    line = " ".join(parts)
    if len(line) >= CMDLINE_MAX:
        raise ConfigError(
            f"the guest kernel command line would be {len(line)} bytes, over the kernel's limit of {CMDLINE_MAX - 1}",
            hint="use fewer volumes or shorter guest mount points",
        )
    return line


def upper_cmdline(spec: VmSpec) -> list[str]:
    """Boot words for the writable layer (also sent in RESUME to a restored template)."""
    return ["msb.upper=/dev/vdb", "msb.sync=1"] if spec.upper_image is not None else ["msb.upper=tmpfs"]
