"""The launching machine's platform, spelled as image indexes spell it (``--multi-arch system``)."""

from __future__ import annotations

import platform

#: ``platform.machine()`` (uname) -> OCI ``architecture[/variant]``, as Go's GOARCH names them.
ARCHITECTURES = {
    "x86_64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm/v7", "armv6l": "arm/v6",
    "i386": "386", "i686": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


def system_platform() -> str:
    """``os/arch[/variant]`` of this machine, the one image ``--multi-arch system`` keeps of an index."""
    machine = platform.machine().lower()
    return f"{platform.system().lower()}/{ARCHITECTURES.get(machine, machine)}"
