"""One description of the machine a figure was measured on, for every report that quotes one."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), else the architecture ("x86_64")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor() or ''}".strip()
