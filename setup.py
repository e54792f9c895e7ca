"""Package discovery for the folders that install under another name; all other settings are in pyproject.toml.

pyproject.toml's `packages.find` names a package after its path below the search folder, so it cannot install
the top-level components/ and pipelines/ folders as `codepmp_kfp.components` and `codepmp_kfp.pipelines`.
Discovery stays automatic all the same: a hand-written list misses every new package, and only a non-editable
install notices (tests/images/test_wheel_install.py installs as the images do).
"""

from setuptools import find_packages, setup

RENAMED_FOLDERS = {"codepmp_kfp.components": "components", "codepmp_kfp.pipelines": "pipelines"}
"""Installed package -> repository folder holding its sources."""


def discovered_packages() -> list[str]:
    # find_packages lists only folders with an __init__.py: a stray __pycache__ or data folder is no package.
    packages = find_packages("src", include=["codepmp", "codepmp.*", "codepmp_kfp", "codepmp_kfp.*"])
    for package, folder in RENAMED_FOLDERS.items():
        packages += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]
    return packages


setup(packages=discovered_packages(), package_dir={"": "src", **RENAMED_FOLDERS})
