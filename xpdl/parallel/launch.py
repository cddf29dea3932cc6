"""``xpdl train --nproc N``: start N ranks of ``xpdl train`` on this machine with an MPI launcher.

The launcher is the ``mpiexec`` installed beside this Python (the ``xpdl[mpi]`` extra
brings MPICH's), else the first one on ``PATH``. Each rank gets ``cores // N`` BLAS
and OpenMP threads (N ranks each using every core run several times slower), ranks
are bound to cores where there are enough of them, and Open MPI gets the flags it
needs as root (``--allow-run-as-root``) and beyond the core count
(``--oversubscribe``); MPICH needs neither. Ctrl-C stops every rank; the run folder
keeps its last complete checkpoint and the message says how to resume.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from xpdl.parallel.distributed import MPI_INSTALL_HINT

#: The thread-count variables of xpdl (:mod:`xpdl.threads`) and of the BLAS and OpenMP runtimes it may use
#: (NUMBA_NUM_THREADS for user code that runs numba beside xpdl).
THREAD_VARIABLES = (
    "XPDL_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


class LaunchError(RuntimeError):
    """The ranks cannot be started (no MPI launcher, bad ``--nproc``)."""


def find_mpiexec() -> str:
    """The ``mpiexec`` beside this Python, else the first on ``PATH``; LaunchError saying how to get one."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise LaunchError(
            f"--nproc: no mpiexec beside {sys.executable} or on PATH; install one with {MPI_INSTALL_HINT}"
        )
    return found


def mpi_flavor(mpiexec: str) -> str:
    """``"mpich"`` (Hydra), ``"openmpi"`` or ``"other"``, from ``mpiexec --version``."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=20)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return "other"
    if "HYDRA" in text or "MPICH" in text:
        return "mpich"
    if "Open MPI" in text or "OpenRTE" in text or "open-mpi" in text:
        return "openmpi"
    return "other"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return os.cpu_count() or 1


#: At most this many processes per core (``--nproc`` ranks, ``xpdl tune`` workers): oversubscribing
#: a little is fine for tests and small runs; a typo such as ``--nproc 1000`` must not start a thousand.
MAX_PROCESSES_PER_CORE = 4


def check_process_count(count: int, option: str, cores: int | None = None) -> int:
    """``count`` when ``1 <= count <= MAX_PROCESSES_PER_CORE * cores``; LaunchError naming ``option`` otherwise."""
    cores = usable_cores() if cores is None else cores
    limit = MAX_PROCESSES_PER_CORE * cores
    if not 1 <= count <= limit:
        raise LaunchError(
            f"{option}: expected 1 to {limit} processes on this {cores}-core machine "
            f"({MAX_PROCESSES_PER_CORE} per core), got {count}"
        )
    return count


def thread_environment(nproc: int, cores: int) -> dict[str, str]:
    """The thread-count variables set to ``budget // nproc`` (at least 1) for each of ``nproc`` processes.

    ``--nproc`` ranks and ``xpdl tune`` workers share a machine this way. The budget is
    ``XPDL_THREADS`` when set, else ``cores`` (the policy of :mod:`xpdl.threads`); each
    process gets its share as ``XPDL_THREADS`` too, so its small matrix products still
    run on one BLAS thread.
    """
    from xpdl.threads import thread_budget

    threads = str(max(thread_budget(cores=cores) // nproc, 1))
    return dict.fromkeys(THREAD_VARIABLES, threads)


def launcher_flags(flavor: str, nproc: int, cores: int, is_root: bool) -> list[str]:
    """mpiexec options for ``nproc`` ranks on one machine with ``cores`` cores."""
    bind = nproc <= cores
    if flavor == "openmpi":
        flags = ["--bind-to", "core" if bind else "none"]
        if is_root:
            flags.append("--allow-run-as-root")
        if not bind:
            flags.append("--oversubscribe")
        for name in THREAD_VARIABLES:
            flags += ["-x", name]
        return flags
    if flavor == "mpich":
        return ["-bind-to", "core"] if bind else []
    return []


def rank_arguments(argv: list[str]) -> list[str]:
    """``xpdl train`` arguments without ``--nproc``; a new run gets an explicit ``--out runs/<timestamp>``.

    Naming the folder here lets the launcher say where the run is when it is interrupted.
    """
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = i + 1 < len(argv)
        elif not arg.startswith("--nproc="):
            out.append(arg)
    if not any(a in ("--out", "--resume") or a.startswith(("--out=", "--resume=")) for a in out):
        out += ["--out", str(_free_run_folder())]
    return out


def _free_run_folder() -> Path:
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if not folder.exists():
            return folder
    raise LaunchError(f"--nproc: no free run folder next to {base}; choose one with --out")


def _run_folder(args: list[str]) -> str:
    for key in ("--resume", "--out"):
        for i, arg in enumerate(args):
            if arg == key and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(key + "="):
                return arg.split("=", 1)[1]
    return "RUN"


def command(nproc: int, argv: list[str], mpiexec: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The launcher command line and the environment for ``nproc`` ranks of ``xpdl train argv``."""
    cores = usable_cores()
    check_process_count(nproc, "--nproc", cores)
    mpiexec = mpiexec or find_mpiexec()
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    flags = launcher_flags(mpi_flavor(mpiexec), nproc, cores, is_root)
    cmd = [mpiexec, "-n", str(nproc), *flags, sys.executable, "-m", "xpdl", "train", *rank_arguments(argv)]
    return cmd, {**os.environ, **thread_environment(nproc, cores)}


def run(nproc: int, argv: list[str]) -> int:
    """Start ``nproc`` ranks of ``xpdl train argv`` (the arguments after ``train``) and wait; the exit code.

    0 when every rank succeeded, the job's code otherwise, 130 after Ctrl-C, 2 when
    no launcher could be started.
    """
    try:
        if importlib.util.find_spec("mpi4py") is None:
            raise LaunchError(f"--nproc: mpi4py is not installed; install it with {MPI_INSTALL_HINT}")
        cmd, env = command(nproc, argv)
    except LaunchError as exc:
        print(f"xpdl train: error: {exc}", file=sys.stderr)
        return 2
    folder = _run_folder(cmd)
    # Ctrl-C must stop the job even where this process was started with SIGINT ignored (a background job);
    # SIGTERM (kill, a service manager) and SIGHUP (the terminal closed) stop it the same way
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        return _wait_for_job(cmd, env, nproc, folder)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


#: Signals that stop a job like Ctrl-C: every rank is stopped, the checkpoint kept, the folder unlocked.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


def _interrupt(signum: int, frame: object) -> None:
    if signum != signal.SIGTERM and signum != signal.SIGINT:  # a hang-up: the terminal is gone, print to nowhere
        for name in ("stdout", "stderr"):
            try:
                if getattr(sys, name).isatty():
                    setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - it lives as long as the process
            except (OSError, ValueError):
                pass
    raise KeyboardInterrupt


def _job_process_setup() -> None:
    """In the launcher's process before it runs: a session of its own, and the stop signals at their defaults."""
    os.setsid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def _wait_for_job(cmd: list[str], env: dict[str, str], nproc: int, folder: str) -> int:
    """Run the launcher ``cmd`` and wait for it; Ctrl-C stops the job (see :func:`_stop`)."""
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_job_process_setup)  # noqa: PLW1509 - no threads yet
    try:
        return proc.wait()
    except KeyboardInterrupt:
        for sig in STOP_SIGNALS[1:]:  # a kill or hang-up during the stopping must not cut it short
            signal.signal(sig, signal.SIG_IGN)
        _stop(proc)
        print(
            f"\nxpdl train: interrupted; all {nproc} ranks stopped, the last checkpoint is intact; continue "
            f"with: xpdl train --resume {folder} --nproc {nproc}",
            file=sys.stderr,
        )
        return 130


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Pass Ctrl-C on to the job's process group (the launcher and its ranks, as a terminal would).

    Whatever of the group has not ended after ``grace`` seconds (or after a second Ctrl-C)
    is killed, so no rank outlives the command.
    """
    try:
        _signal_group(proc, signal.SIGINT)
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group ``proc`` leads (it was started in a session of its own)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
