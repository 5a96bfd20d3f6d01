"""The installed packages: pyproject.toml lists them by hand (``kernels/`` is installed as
``flashbench_kernels``), so a package added to the tree and not to the list is missing from a wheel or a
plain ``pip install .``, while the editable install the tests run under still finds it.  (That happened:
``flashbench.attention`` was left out, and an installed flashbench failed at import.)"""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    """Every folder with an ``__init__.py`` under each source folder ``package-dir`` maps, by its installed name."""
    names = set()
    for name, folder in _setuptools()["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(base).parts
            names.add(".".join((name, *rel)))
    return names


def test_every_package_in_the_tree_is_installed():
    listed = set(_setuptools()["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, f"packages in the tree that pyproject.toml does not install: {sorted(missing)}"


def test_every_installed_package_exists():
    setuptools = _setuptools()
    dirs = setuptools["package-dir"]
    for package in setuptools["packages"]:
        # the longest mapped prefix gives the folder (flashbench.configs -> configs/, not flashbench/configs/)
        prefix = max((p for p in dirs if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / dirs[prefix] / package[len(prefix):].lstrip(".").replace(".", "/")
        assert folder.is_dir(), f"pyproject.toml installs {package} from {folder}, which does not exist"


def test_the_configs_ship_as_package_data():
    # the bundled sweeps are YAML files, not modules: a wheel carries them only as package data
    data = _setuptools()["package-data"]["flashbench.configs"]
    assert "*.yaml" in data and list((ROOT / "configs").glob("*.yaml"))
