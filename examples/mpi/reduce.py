"""The overview article's mpi4py example (section 5.2.1), corrected.

As printed, every rank computes the *same* sum over all 1,000 points and every rank but 0
calls `comm.send(result, dest=0)`, while rank 0 prints its own sum and never receives: the
other ranks' messages are never matched, and the "sum of all nodes' results" the article
describes is never formed. Here each rank sums sin(x)^2 over its own share of the points
and `comm.reduce(..., op=MPI.SUM, root=0)` combines the shares on rank 0, which prints the
total next to the same sum computed serially.

Run on a Bramble cluster (no ssh, no hostfile to write):
    bramble mpirun -n 4 -- /usr/bin/python3 examples/mpi/reduce.py
"""

from mpi4py import MPI
import numpy as np

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
size = comm.Get_size()

n = 1000
x = np.linspace(0, 1, n)
mine = x[rank::size]  # this rank's share: every size-th point, from its rank on
partial = float(np.sum(np.sin(mine) ** 2))

total = comm.reduce(partial, op=MPI.SUM, root=0)
if rank == 0:
    serial = float(np.sum(np.sin(x) ** 2))
    print(f"ranks: {size}")
    print(f"result: {total:.12f}")
    print(f"serial: {serial:.12f}")
    print("match" if abs(total - serial) < 1e-9 else "MISMATCH")
