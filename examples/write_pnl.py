"""Write the PnL file the way killswitch expects: atomically, by rename.

Usage: python write_pnl.py PATH PNL
"""

import json
import os
import sys
import tempfile
import time


def write_pnl(path: str, pnl: float) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    # The temp file must live in the same directory: rename is atomic within a filesystem.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pnl-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"pnl": pnl, "ts": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # the service user must be able to read it
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except BaseException:
        os.unlink(tmp)
        raise


if __name__ == "__main__":
    write_pnl(sys.argv[1], float(sys.argv[2]))
