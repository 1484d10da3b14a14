"""Where chunks run: the processes that apply the operation, and the driver's side of them.

- :mod:`.executors` chooses where a call's chunks run (serially, in wfl_like's own pool,
  on the MPI ranks, or on any ``concurrent.futures.Executor``) and hands the supervisor
  one ``submit(chunk)``.
- :mod:`.pool` is wfl_like's own process pool (driver side: the dispatcher thread), and
  :mod:`.guardian` the process that ends the workers if the driver dies.
- :mod:`.worker` is the loop a pool worker runs; :mod:`.opcall` applies the operation to
  one chunk (in a worker, or in the driver for a serial run).
- :mod:`.mpi` makes the MPI ranks into workers (``WFL_MPIPOOL``).
- :mod:`.devices` and :mod:`.threads` give each worker its GPU and its thread limits.
"""
