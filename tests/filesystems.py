"""Real small file systems for tests of full and read-only disks (tmpfs; needs root, as CI has)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def mount_tmpfs(mount: Path, *options: str) -> bool:
    """A real small file system at `mount` (tmpfs, e.g. "size=1m" or "ro"); False where mounting is not
    allowed (not root). Unmount with unmount_tmpfs."""
    mount.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", ",".join(options or ("size=200m",)), "tmpfs", str(mount)]
    return subprocess.run(command, capture_output=True).returncode == 0


def unmount_tmpfs(mount: Path) -> None:
    subprocess.run(["umount", "-l", str(mount)], check=False)
