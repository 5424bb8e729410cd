"""The images install the project as a package: every Python package in the tree must be listed
in pyproject.toml, or the image lacks it while the tests (run from the tree) still pass."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_installed() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    dirs = {name: ROOT / setup.get("package-dir", {}).get(name, name) for name in listed}
    found = set()
    for top in ("chatscale_contract", "autoscaler", "shard"):
        base = dirs[top]
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            found.add(".".join((top, *parts)))
    assert found <= listed, f"not in pyproject.toml [tool.setuptools] packages: {found - listed}"


def test_test_modules_have_unique_names() -> None:
    # pytest imports test modules by basename (rootdir-relative "rootdir" import mode, no
    # __init__.py): two files with one name make the whole run stop at collection.
    names: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not clashes, f"test modules sharing a basename: {clashes}"
