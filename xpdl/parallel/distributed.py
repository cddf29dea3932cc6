"""Data-parallel communicators: MPI (mpi4py) between processes, NCCL (CuPy) between GPUs.

``comm = xpdl.parallel.distributed.init()`` returns the job's :class:`Communicator`: MPI's
world when the process was started by an MPI launcher (``mpiexec``, ``srun``, ...),
else a single-process one that does nothing. ``Trainer(net, data, comm=comm)``
then trains data-parallel (:mod:`xpdl.trainer`): each rank computes its slice of
every batch and the gradients are summed with one in-place allreduce.

Arrays are summed where they live: NumPy arrays through MPI, CuPy arrays through
NCCL (``cupy.cuda.nccl``, its communicator set up over MPI) when CuPy has it, else
through MPI with a copy to the host and back. The NCCL code is untested until it
runs on a machine with two GPUs (``tests/test_distributed.py`` says so when skipped).

Failure semantics under MPI with more than one rank: an uncaught exception prints
its traceback (naming the rank) and aborts the whole job (``MPI.COMM_WORLD.Abort``),
so the other ranks do not wait forever in a collective operation.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import numpy as np

#: Environment variables that MPI launchers set in the processes they start.
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MPI_LOCALNRANKS")
MPI_INSTALL_HINT = 'pip install "xpdl[mpi]" (mpi4py and an MPI), or "xpdl[mpi-system]" to use the MPI installed here'


class Communicator:
    """One process, no communication: the base of every communicator.

    Attributes:
        rank: this process's index in the job, 0 .. size - 1.
        size: number of processes (ranks) in the job.
        local_rank: index among the ranks on this machine (picks the GPU: ``cupy:local_rank``).
        local_size: ranks on this machine.
        name: ``"single"``, ``"mpi"``.
    """

    name = "single"

    def __init__(self) -> None:
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    def allreduce(self, arr: Any) -> Any:
        """The element-wise sum of ``arr`` over all ranks, written into ``arr`` where possible; returns it.

        ``arr``: a contiguous NumPy or CuPy array (any other namespace is summed on the host
        and a new array returned). Every rank gets the same bits.
        """
        return arr

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (any picklable object) on every rank."""
        return obj

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def abort(self, code: int = 1) -> None:
        """End the whole job with exit code ``code`` (one process: this one)."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class MPICommunicator(Communicator):
    """An mpi4py communicator (MPI's world by default), with NCCL for CuPy arrays where CuPy has it."""

    name = "mpi"

    def __init__(self, mpi_comm: Any = None) -> None:
        from mpi4py import MPI

        super().__init__()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._nccl: Any = None

    def allreduce(self, arr: Any) -> Any:
        if isinstance(arr, np.ndarray) and arr.flags.c_contiguous:
            self.comm.Allreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)
            return arr
        if type(arr).__module__.startswith("cupy"):
            return self._allreduce_cupy(arr)
        from xpdl.backends import backend_of

        host = np.ascontiguousarray(backend_of(arr).to_numpy(arr))
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        return backend_of(arr).asarray(host)

    def _allreduce_cupy(self, arr: Any) -> Any:
        """NCCL in place on the current stream when available (``XPDL_NCCL=0`` turns it off), else host staging."""
        import cupy

        nccl = self._nccl_comm(arr.device.id)
        if nccl is not None and arr.flags.c_contiguous:
            from cupy.cuda import nccl as nccl_module

            kinds = {
                "float32": nccl_module.NCCL_FLOAT32,
                "float64": nccl_module.NCCL_FLOAT64,
                "int64": nccl_module.NCCL_INT64,
            }
            nccl.allReduce(
                arr.data.ptr,
                arr.data.ptr,
                arr.size,
                kinds[arr.dtype.name],
                nccl_module.NCCL_SUM,
                cupy.cuda.get_current_stream().ptr,
            )
            return arr
        host = np.ascontiguousarray(arr.get())
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        arr.set(host) if arr.flags.c_contiguous else arr.__setitem__(Ellipsis, cupy.asarray(host))
        return arr

    def _nccl_comm(self, device_id: int) -> Any:
        """The NCCL communicator of this job's GPUs (made once, its id broadcast over MPI), or None."""
        if self._nccl is None:
            self._nccl = False
            if os.environ.get("XPDL_NCCL", "1") != "0":
                try:
                    import cupy
                    from cupy.cuda import nccl
                except Exception:  # CuPy built without NCCL: host staging
                    nccl = None
                # every rank takes part in the broadcast, whether or not its CuPy has NCCL
                uid = self.bcast(nccl.get_unique_id() if nccl is not None and self.rank == 0 else None)
                ok = self.comm.allreduce(int(nccl is not None and uid is not None), op=self.MPI.MIN)
                if ok:
                    with cupy.cuda.Device(device_id):
                        self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl or None

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)  # should Abort return (it may hand the job's end to the launcher), this process stops here


_WORLD: Communicator | None = None


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (one of :data:`LAUNCHER_VARIABLES` is set)."""
    return any(os.environ.get(v) for v in LAUNCHER_VARIABLES)


def init(quiet_others: bool = False) -> Communicator:
    """The job's communicator (made once per process): MPI's world under an MPI launcher, else one process.

    Under MPI with more than one rank it also makes an uncaught exception in any rank
    abort the whole job (with the traceback, naming the rank). ``quiet_others=True``
    sends the standard output and error of ranks other than 0 to ``/dev/null``
    (tracebacks of aborting ranks still get through), as the command-line tool does.

    Raises:
        RuntimeError: launched by MPI but mpi4py is not installed (says how to install it).
    """
    global _WORLD
    if _WORLD is None:
        if launched_by_mpi():
            try:
                import mpi4py  # noqa: F401
            except ImportError as exc:
                raise RuntimeError(
                    f"this process was started by an MPI launcher, but mpi4py is missing ({exc}); "
                    f"install it with {MPI_INSTALL_HINT}"
                ) from exc
            _WORLD = MPICommunicator()
            if _WORLD.size > 1:
                sys.excepthook = _abort_on_uncaught
        else:
            _WORLD = Communicator()
    if quiet_others and _WORLD.rank != 0:
        devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the life of the process
        sys.stdout = sys.stderr = devnull
    return _WORLD


def single_process() -> Communicator:
    """A one-process communicator (what a Trainer uses without ``comm=``)."""
    return Communicator()


def abort_job(comm: Communicator, exc: BaseException) -> None:
    """Print ``exc`` (the traceback, or one line for Ctrl-C) naming the rank, then end the whole job.

    Exit code 130 for KeyboardInterrupt, 1 otherwise. For an exception that some ranks
    raise and others do not: without this, the others would wait in an allreduce forever.
    """
    if isinstance(exc, KeyboardInterrupt):
        if comm.rank == 0:
            print(
                f"xpdl: interrupted; stopping all {comm.size} ranks (checkpoints are written whole: "
                "the last one is intact)",
                file=sys.__stderr__,
                flush=True,
            )
        comm.abort(130)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    print(f"xpdl: rank {comm.rank} of {comm.size} failed; aborting the job:\n{text}", file=sys.__stderr__, flush=True)
    comm.abort(1)


def _abort_on_uncaught(exc_type: type, exc: BaseException, tb: Any) -> None:
    """``sys.excepthook`` of a multi-rank job: report and abort instead of leaving the other ranks hanging."""
    assert _WORLD is not None
    abort_job(_WORLD, exc.with_traceback(tb))


def on_root(comm: Communicator, fn: Any) -> Any:
    """Run ``fn()`` on rank 0 only and return its result on every rank (it must pickle).

    An exception on rank 0 is raised on every rank, so all of them stop the same way.
    """
    result: Any = None
    error: BaseException | None = None
    if comm.rank == 0:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    result, error = comm.bcast((result, error))
    if error is not None:
        raise error
    return result


def rank_backend_name(name: str, comm: Communicator) -> str:
    """The backend a rank runs on: ``cupy`` (and ``auto`` where CuPy works) become ``cupy:<local rank>``.

    One rank per GPU: with more ranks on a machine than GPUs the ranks share them round robin.
    """
    if comm.size == 1 or name not in ("cupy", "auto"):
        return name
    from xpdl.backends import probe_cupy

    if name == "auto" and probe_cupy(0):
        return "numpy"
    import cupy

    return f"cupy:{comm.local_rank % max(cupy.cuda.runtime.getDeviceCount(), 1)}"


def shard(total: int, comm: Communicator) -> tuple[int, int]:
    """This rank's contiguous rows ``[first, stop)`` of ``total`` rows split as evenly as possible."""
    return comm.rank * total // comm.size, (comm.rank + 1) * total // comm.size
