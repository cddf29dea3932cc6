"""Data-parallel training: communicators over MPI and NCCL (``distributed``) and the ``--nproc`` launcher (``launch``).

The Trainer reduces its gradients through a communicator; one process is a
communicator of size 1. Nothing here imports the model or the command line.
"""
