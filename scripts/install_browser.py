"""Make sure Debian's chromium is installed for the chat page's browser tests.

Playwright's own browser download cannot reach its servers from every machine, so the
tests drive the distribution's chromium through ``executable_path``. This installs the
``chromium`` package with apt when it is missing (as root, or through sudo) and fails
loudly, saying what to do, when it cannot: the browser tests never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    if os.path.exists(CHROMIUM):
        print(f"browser: {CHROMIUM} is installed")
        return 0
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if (sudo and shutil.which("sudo") is None) or shutil.which("apt-get") is None:
        print(f"browser: {CHROMIUM} is missing and cannot be installed here (needs apt-get "
              "and root or sudo); install Debian's 'chromium' package, then run make test "
              "again", file=sys.stderr)
        return 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("browser: installing Debian's chromium (apt-get install chromium) ...", flush=True)
    install = [*sudo, "apt-get", "install", "-y", "chromium"]
    if subprocess.run(install, env=env).returncode != 0:  # a stale package list: refresh
        subprocess.run([*sudo, "apt-get", "update"], env=env, check=False)
        if subprocess.run(install, env=env).returncode != 0:
            print("browser: apt-get could not install chromium; install Debian's "
                  "'chromium' package by hand, then run make test again", file=sys.stderr)
            return 1
    if not os.path.exists(CHROMIUM):
        print(f"browser: chromium installed but {CHROMIUM} is missing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
