"""Groups of inputs run as queued jobs (Slurm job arrays), on a shared filesystem.

What each module does, and in which process:

- :mod:`.remote_info`: :class:`~.remote_info.RemoteInfo`, what the user asks for (wfl's names).
- :mod:`.queued`: the driver's side, where the engine hands its chunks over: tasks made,
  submitted as job arrays, watched, submitted again when their job died, collected.
- :mod:`.registry`: the driver's record of its tasks and jobs, so that a rerun after the
  driver died finds them instead of submitting again.
- :mod:`.slurm`: ``sbatch`` / ``squeue`` / ``scontrol`` / ``scancel``, run by the driver.
- :mod:`.task`: the task directory of one job (``task.pickle``: the call and its items).
- :mod:`.jobs`: a call split into tasks as a local run would make it, and the array's script.
- :mod:`.job_main`: what runs inside a job: the usual engine over the task's items, each
  item's result appended to ``TASK_DIR/results`` as it finishes.
- :mod:`.results`: that file's records (framed, checksummed, fsynced), written by the job
  and read by the driver; they, not the queue, say which items finished.

No module here imports anything heavy at import time.
"""
