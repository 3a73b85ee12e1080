"""The committed generated protobuf code is exactly what protos/ generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_up_to_date(tmp_path):
    env_path = str(Path(sys.executable).parent)
    subprocess.run(["bash", str(ROOT / "protos" / "generate.sh"), str(tmp_path)], check=True,
                   env={"PATH": f"{env_path}:/usr/bin:/bin"})
    committed = ROOT / "server" / "_generated"
    for fresh in sorted(tmp_path.iterdir()):
        stale = f"{fresh.name} is stale: run protos/generate.sh"
        assert (committed / fresh.name).read_text() == fresh.read_text(), stale
