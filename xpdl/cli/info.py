"""``xpdl info``: which backends work here (and why the others do not), the devices, the library versions."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata
from typing import Any

from xpdl.backends import ENV_VARIABLE, available_backends, default_backend_name, describe_paths


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``xpdl info``."""
    return subparsers.add_parser(
        "info", help="backends that work here (and why others do not), devices, library versions"
    )


LIBRARIES = ("numpy", "array-api-compat", "array-api-strict", "threadpoolctl", "tqdm", "matplotlib", "optuna", "mpi4py")


CUPY_DISTRIBUTIONS = ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")


def library_versions() -> dict[str, str]:
    """Installed version of each library xpdl uses (``"not installed"`` otherwise)."""
    out = {}
    for dist in LIBRARIES + CUPY_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist not in CUPY_DISTRIBUTIONS:
                out[dist] = "not installed"
    if not any(d in out for d in CUPY_DISTRIBUTIONS):
        out["cupy"] = "not installed"
    return out


def host_memory_gib() -> float | None:
    """Physical memory of this machine in GiB, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return None


def gpu_lines() -> list[str]:
    """One line per CUDA device (name, memory total/free, compute capability) plus CUDA versions."""
    import cupy

    rt = cupy.cuda.runtime
    lines = [f"  CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}"]
    for i in range(rt.getDeviceCount()):
        props = rt.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        with cupy.cuda.Device(i):
            free, total = rt.memGetInfo()
        lines.append(
            f"  cupy:{i}  {name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free), "
            f"compute capability {props['major']}.{props['minor']}"
        )
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    """``xpdl info``: backends, devices, library versions."""
    from xpdl.backends import cpu_name
    from xpdl.version import __version__

    print(f"xpdl {__version__}, Python {platform.python_version()} on {platform.platform()}")
    status = available_backends()
    print("backends:")
    for name, why in status.items():
        print(f"  {name:<17} {'works' if not why else 'unavailable: ' + why}")
    print(f"  {'auto':<17} picks {'cupy:0' if not status.get('cupy') else 'numpy'}")
    problem = _env_backend_line()
    mem = host_memory_gib()
    print("devices:")
    print(f"  cpu     {cpu_name()}, {os.cpu_count()} cores" + (f", {mem:.1f} GiB" if mem else ""))
    if not status.get("cupy"):
        print("\n".join(gpu_lines()))
    print(f"training steps: {describe_paths()}")
    versions = library_versions()
    print("libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 2 if problem else 0


def _env_backend_line() -> str:
    """Print which backend ``XPDL_BACKEND`` selects; returns the problem (printed to stderr) when it names none."""
    text = os.environ.get(ENV_VARIABLE)
    try:
        name = default_backend_name()
    except ValueError as exc:
        print(f"xpdl info: error: {exc}", file=sys.stderr)
        return str(exc)
    where = f"{ENV_VARIABLE}={text}" if text and text.strip() else f"{ENV_VARIABLE} not set"
    print(f"  default           {name} ({where})")
    return ""
