"""One description of the machine a figure was measured on, for every report that quotes one."""

from __future__ import annotations

import platform
from types import ModuleType


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


def versions(*modules: ModuleType) -> dict[str, str]:
    """Python's version and each module's `__version__`, by module name."""
    return {"python": platform.python_version(), **{m.__name__: m.__version__ for m in modules}}
