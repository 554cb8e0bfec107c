"""Maps the fixed folder layout onto the ``veilfed`` package.

``platform/`` holds the top-level ``veilfed`` package but has no ``__init__.py``: as a namespace
portion it can never shadow the stdlib ``platform`` module, even when Python runs from the repo
root (where ``''`` comes first on ``sys.path``). Every subpackage is listed so new folders need no
edit here.
"""

from setuptools import find_namespace_packages, setup

PACKAGE_DIR = {
    "veilfed": "platform",
    "veilfed.clients": "clients",
    "veilfed.coordinator": "coordinator",
}

packages = [
    f"{name}.{sub}" if sub else name
    for name, folder in PACKAGE_DIR.items()
    for sub in ["", *find_namespace_packages(folder, exclude=["*__pycache__*"])]
]

setup(packages=packages, package_dir=PACKAGE_DIR)
