"""Install the OpenMMLab stack (mmcv 2.1.0 with compiled ops, mmengine, mmsegmentation, mmdet).

mmsegmentation 1.2.2 and mmdet 3.3.0 refuse mmcv >= 2.2, and mmcv 2.1.0 exists only as a source
release. With recent torch it compiles only when its ``-std=c++14/17`` flags are raised to the standard
the torch headers demand, with ``setuptools<70`` (its setup.py imports ``pkg_resources``), without build
isolation and with ``MMCV_WITH_OPS=1``. The build takes minutes, so the wheel is cached under
``~/.cache/bam-dense/wheels/<key>/`` where the key names the mmcv, torch, CUDA and Python versions; a
second run installs the cached wheel in seconds.

Steps, each named in the progress lines and, on failure, in the error with its log file:
  1. check       what is installed already (a working mmcv 2.1.0 with ops is left alone)
  2. download    the mmcv 2.1.0 source release (from the package index pip is configured with)
  3. patch       raise the C++ standard in setup.py
  4. build       ``pip wheel`` with ops (CUDA ops when a GPU and nvcc are present, or --cuda yes)
  5. install     the wheel, then mmengine 0.10.7, mmsegmentation 1.2.2, mmdet 3.3.0, pycocotools
  6. verify      import mmcv.ops and run nms on the CPU
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bam_dense.core.errors import UserFacingError

MMCV_VERSION = "2.1.0"
# ftfy and regex: mmseg.apis imports its tokenizer at import time. setuptools < 81: mmengine resolves
# "mmseg::"/"mmdet::" config bases through pkg_resources, which setuptools 81 removed.
COMPANIONS = ["mmengine==0.10.7", "mmsegmentation==1.2.2", "mmdet==3.3.0", "pycocotools>=2.0.7,<3", "ftfy", "regex",
              "setuptools>=77,<81"]
# setuptools 70 removed pkg_resources, which mmcv 2.1.0's setup.py imports.
BUILD_TOOLS = ["setuptools<70", "wheel", "ninja"]


def default_cache_dir() -> Path:
    env = os.environ.get("BAM_DENSE_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "bam-dense"
    return base / "wheels"


@dataclass(frozen=True)
class BuildKey:
    torch: str
    cuda: str  # "cpu" or e.g. "cu130": the ops compiled into the wheel
    python: str  # e.g. "cp311"

    @property
    def name(self) -> str:
        torch_ver = self.torch.replace("+", "_")
        return f"mmcv-{MMCV_VERSION}-torch{torch_ver}-{self.cuda}-{self.python}"


def _log(step: str, message: str) -> None:
    print(f"[install-openmmlab] {step:<9} {message}", flush=True)


def _installed_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def wants_cuda_ops(choice: str) -> bool:
    """CUDA ops are built when asked, or (auto) when torch sees a GPU and nvcc is on PATH."""
    if choice == "yes":
        return True
    if choice == "no":
        return False
    import torch

    return bool(torch.cuda.is_available() and torch.version.cuda and shutil.which("nvcc"))


def build_key(cuda_ops: bool) -> BuildKey:
    import torch

    cuda = f"cu{torch.version.cuda.replace('.', '')}" if (cuda_ops and torch.version.cuda) else "cpu"
    return BuildKey(torch=torch.__version__, cuda=cuda, python=f"cp{sys.version_info.major}{sys.version_info.minor}")


def required_cxx_standard(torch_include: Path) -> str:
    """The C++ standard the installed torch headers insist on (``c++20`` for torch >= 2.10, say)."""
    aten = torch_include / "ATen" / "ATen.h"
    text = aten.read_text(errors="replace") if aten.exists() else ""
    if "__cplusplus < 202002L" in text:
        return "c++20"
    return "c++17"


def patch_setup_py(setup_py: Path, standard: str) -> int:
    """Replace every ``-std=c++14/17`` (and MSVC ``/std:``) flag in mmcv's setup.py; returns the count."""
    text = setup_py.read_text()
    patched, n_gcc = re.subn(r"-std=c\+\+1[47]", f"-std={standard}", text)
    patched, n_msvc = re.subn(r"/std:c\+\+1[47]", f"/std:{standard}", patched)
    if n_gcc + n_msvc == 0 and f"-std={standard}" not in text:
        raise UserFacingError(f"patch: no -std= flag found in {setup_py}; the mmcv source layout changed")
    setup_py.write_text(patched)
    return n_gcc + n_msvc


def mmcv_ops_work() -> tuple[bool, str]:
    """Whether mmcv's compiled ops import and run (nms on two boxes on the CPU), with a reason if not."""
    code = (
        "import torch, mmcv\n"
        "from mmcv.ops import nms\n"
        "b = torch.tensor([[0.,0.,10.,10.],[1.,1.,10.,10.]]); s = torch.tensor([0.9, 0.8])\n"
        "d, k = nms(b, s, 0.5)\n"
        "assert k.tolist() == [0], k\n"
        "print(mmcv.__version__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return False, lines[-1] if lines else f"exit status {proc.returncode}"


class Installer:
    def __init__(self, cache_dir: Path, cuda: str, jobs: int | None, force_rebuild: bool, log: Path | None):
        self.cache_dir = cache_dir
        self.cuda_choice = cuda
        self.jobs = jobs or os.cpu_count() or 2
        self.force_rebuild = force_rebuild
        self.log_path = log

    # -- helpers -------------------------------------------------------------------------------
    def _run(self, step: str, cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
            start = time.time()
            last = start
            while proc.poll() is None:
                time.sleep(1.0)
                if time.time() - last >= 60:
                    last = time.time()
                    _log(step, f"still running ({(last - start) / 60:.0f} min; log {log})")
        if proc.returncode != 0:
            raise UserFacingError(f"step '{step}' failed (exit {proc.returncode}); see the log {log}")

    def _pip(self, step: str, args: list[str], log: Path, env: dict | None = None) -> None:
        self._run(step, [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args], log, env=env)

    # -- steps ---------------------------------------------------------------------------------
    def cached_wheel(self, key: BuildKey) -> Path | None:
        folder = self.cache_dir / key.name
        wheels = sorted(folder.glob(f"mmcv-{MMCV_VERSION}-*.whl")) if folder.is_dir() else []
        return wheels[0] if wheels else None

    def build_wheel(self, key: BuildKey, log: Path) -> Path:
        import torch

        with tempfile.TemporaryDirectory(prefix="bam-dense-mmcv-") as tmp:
            tmp_path = Path(tmp)
            tools = tmp_path / "build-tools"
            _log("download", f"build tools {' '.join(BUILD_TOOLS)} (kept apart from the environment)")
            self._run("download", [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                                   "--target", str(tools), *BUILD_TOOLS], log)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([str(tools), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            env["PATH"] = os.pathsep.join([str(tools / "bin"), env.get("PATH", "")])
            _log("download", f"mmcv=={MMCV_VERSION} source release")
            self._run("download", [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                                   "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                                   "-d", str(tmp_path), f"mmcv=={MMCV_VERSION}"], log, env=env)
            sdists = list(tmp_path.glob(f"mmcv-{MMCV_VERSION}.tar.gz"))
            if not sdists:
                raise UserFacingError(f"step 'download' produced no mmcv-{MMCV_VERSION}.tar.gz; see the log {log}")
            with tarfile.open(sdists[0]) as tar:
                tar.extractall(tmp_path, filter="data")
            src = tmp_path / f"mmcv-{MMCV_VERSION}"

            standard = required_cxx_standard(Path(torch.__file__).parent / "include")
            n = patch_setup_py(src / "setup.py", standard)
            _log("patch", f"setup.py: {n} C++ standard flags set to -std={standard}")

            env["MMCV_WITH_OPS"] = "1"
            env["MAX_JOBS"] = str(self.jobs)
            if key.cuda != "cpu":
                env["FORCE_CUDA"] = "1"
            _log("build", f"mmcv {MMCV_VERSION} with {'CUDA and CPU' if key.cuda != 'cpu' else 'CPU'} ops, "
                          f"{self.jobs} jobs (about 12 min on 2 cores for CPU ops; log {log})")
            out = tmp_path / "wheel"
            self._run("build", [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
                                "--no-build-isolation", "-w", str(out), str(src)], log, env=env)
            built = list(out.glob("mmcv-*.whl"))
            if not built:
                raise UserFacingError(f"step 'build' produced no wheel; see the log {log}")
            dest_dir = self.cache_dir / key.name
            dest_dir.mkdir(parents=True, exist_ok=True)
            dest = dest_dir / built[0].name
            shutil.copy2(built[0], dest.with_suffix(".partial"))
            os.replace(dest.with_suffix(".partial"), dest)  # a killed copy never looks like a cached wheel
            _log("build", f"cached {dest}")
            return dest

    def run(self) -> int:
        cuda_ops = wants_cuda_ops(self.cuda_choice)
        key = build_key(cuda_ops)
        log = self.log_path or (self.cache_dir / "logs" / f"{key.name}-{time.strftime('%Y%m%d-%H%M%S')}.log")
        _log("check", f"torch {key.torch}, ops {key.cuda}, python {key.python}; cache {self.cache_dir}")

        installed = _installed_version("mmcv")
        ok, detail = mmcv_ops_work() if installed == MMCV_VERSION else (False, "")
        if ok and not self.force_rebuild:
            _log("check", f"mmcv {installed} with working ops is installed")
        else:
            wheel = None if self.force_rebuild else self.cached_wheel(key)
            if wheel is None:
                wheel = self.build_wheel(key, log)
            else:
                _log("check", f"cached wheel {wheel}")
            _log("install", wheel.name)
            self._pip("install", ["--no-deps", "--force-reinstall", str(wheel)], log)

        missing = [req for req in COMPANIONS if not self._satisfied(req)]
        if missing:
            _log("install", " ".join(missing))
            self._pip("install", missing, log)
        else:
            _log("install", "mmengine, mmsegmentation, mmdet, pycocotools already installed")

        ok, detail = mmcv_ops_work()
        if not ok:
            raise UserFacingError(f"step 'verify' failed: mmcv ops do not run ({detail}); see the log {log}")
        _log("verify", f"mmcv {detail}: compiled ops run (nms on the CPU)")
        return 0

    @staticmethod
    def _satisfied(requirement: str) -> bool:
        """Installed at a version the requirement's specifier accepts."""
        from packaging.requirements import Requirement

        req = Requirement(requirement)
        version = _installed_version(req.name)
        return version is not None and req.specifier.contains(version, prereleases=True)
