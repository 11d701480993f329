"""The bare loop: spawn `true` COUNT times back to back, the limit of this machine.

Usage: bare_loop.py COUNT START_AT plain|worker.  The loop waits until the
monotonic clock reads START_AT, so parallel copies start together, and prints
the monotonic time at which it finished, then the CPU seconds of the loop
itself and of the children it waited for.  ``plain`` is
``subprocess.run(["true"])`` as the peers' tasks call it.  ``worker`` adds
the options that queuectl's worker passes to each spawn: stdin from
/dev/null, stdout and stderr as pipes, a new session and a fresh
environment.
"""

import os
import subprocess
import sys
import time

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def main() -> None:
    count, start_at, variant = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    if variant == "plain":
        for _ in range(count):
            subprocess.run(["true"])
    elif variant == "worker":
        for _ in range(count):
            subprocess.run(
                ["true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                start_new_session=True,
                env=ENV,
                cwd="/",
            )
    else:
        sys.exit(f"bare_loop.py: unknown variant {variant!r}; use plain or worker")
    finished = time.monotonic()
    times = os.times()
    print(finished, times.user + times.system, times.children_user + times.children_system)


if __name__ == "__main__":
    main()
