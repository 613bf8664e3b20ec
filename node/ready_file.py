"""`--ready-file`: one JSON object written atomically once a process is serving.

Scripts and tests wait for the file instead of parsing logs; a reader never sees a
half-written file because it is renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_ready_file(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.write("\n")
    os.replace(tmp, path)
