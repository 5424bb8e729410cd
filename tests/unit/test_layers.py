"""The import contracts (.importlinter) bite: a copy of the tree with one forbidden import per
contract fails `lint-imports`, naming each contract. (The real tree passes: both test commands
run `lint-imports` before pytest.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

INJECTED = {
    "chatscale_contract/ids.py": "import redis",  # the contract takes a network library
    "shard_image/shard/errors.py": "import autoscaler.metrics",  # one side imports the other
    "autoscaler/front/table.py": "import autoscaler.loop.daemon",  # a layer imports upwards
    "autoscaler/engine/model.py": "import psutil",  # the pure engine takes an I/O library
}


def test_each_forbidden_import_breaks_its_contract(tmp_path: Path) -> None:
    for folder in ("chatscale_contract", "autoscaler", "shard_image/shard"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__py*"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    for name, line in INJECTED.items():
        with (tmp_path / name).open("a") as handle:
            handle.write(f"\n{line}  # noqa\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{tmp_path / 'shard_image'}"}
    result = subprocess.run(
        [str(LINT_IMPORTS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Contracts: 0 kept, 4 broken." in out, out
    assert "chatscale_contract.ids -> redis" in out
    assert "shard.errors -> autoscaler.metrics" in out
    assert "autoscaler.front.table -> autoscaler.loop.daemon" in out
    assert "autoscaler.engine.model -> psutil" in out
