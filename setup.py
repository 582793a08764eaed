"""What pyproject.toml cannot say: the wheel carries the files bam-dense ships beside its code.

The repository's ``configs/`` (the recipes), ``pretrain/`` and ``downstream/`` (the launch scripts ``bam-dense bench``
spawns) go into the wheel as package data under ``bam_dense/_bundled/``, with their repository-relative paths, as
MMSegmentation ships its configs under ``mmseg/.mim/``. ``bam_dense.core.paths.bundled`` finds them there in an
installed wheel, and beside the package in a checkout or an editable install (``pip install -e .``).
"""

from setuptools import find_namespace_packages, setup

BUNDLED = {"configs": ["**/*.yaml", "**/*.py"], "pretrain": ["*.py", "*.sh"], "downstream": ["**/*.py"]}

setup(
    packages=[*find_namespace_packages(include=["bam_dense*"]), *(f"bam_dense._bundled.{folder}" for folder in BUNDLED)],
    package_dir={f"bam_dense._bundled.{folder}": folder for folder in BUNDLED},
    package_data={f"bam_dense._bundled.{folder}": patterns for folder, patterns in BUNDLED.items()},
)
