"""Entry point of an isolated runtime's worker process (see ``localllm.core.isolation``):
``python -m localllm.core.worker SOCKET_FD ROWS_FD``. Kept apart so that the package never
imports it."""

import os
import signal
import sys
from multiprocessing.connection import Connection

from localllm.core.isolation import serve

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the application's to handle
    serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
    sys.stdout.flush()
    os._exit(0)  # skip runtime destructors that may run after the engine was closed
