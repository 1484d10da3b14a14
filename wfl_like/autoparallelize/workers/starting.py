"""One lock around every start of a child process by this process (worker forks, the guardian).

Calls may run at the same time in threads of one driver (``autopara_info={"wait": False}``).
A child forked by one thread while another thread is inside ``subprocess.Popen`` keeps
Popen's error pipe open (a fork does not exec, so close-on-exec does not close it), and
Popen then waits on that pipe for as long as the child lives; a child forked between
another pool's fork and that pool's closing of its end of the worker's pipe keeps the
pipe open, so the other pool would not see its worker die by the pipe.  Starting
children one at a time, with the parent's cleanup inside the lock, closes both windows.
"""

import threading

START_LOCK = threading.Lock()
