"""Helpers shared by the tests that start worker processes."""
import subprocess
from typing import List, Sequence


def outputs_of(procs: Sequence[subprocess.Popen], timeout: float = 120) -> List[str]:
    """Each process's combined output once it ends; any still running after ``timeout`` s is killed."""
    try:
        return [p.communicate(timeout=timeout)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
