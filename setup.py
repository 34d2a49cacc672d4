"""Build script: the package, ``kernels/`` installed as ``mstein_fast.kernels``, and the C++
extension ``mstein_fast._C`` built from ``csrc/`` by CMake (``CMakeLists.txt``)."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build ``CMakeLists.txt``; the module lands where setuptools expects it."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("MSTEIN_FAST_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
        ]
        if os.environ.get("MSTEIN_FAST_CMAKE_ARGS"):
            args += os.environ["MSTEIN_FAST_CMAKE_ARGS"].split()
        if self._has_ninja():
            args.append("-GNinja")
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_temp, check=True)
        jobs = str(max(1, os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_temp, check=True)

    @staticmethod
    def _has_ninja() -> bool:
        try:
            subprocess.run(["ninja", "--version"], check=True, capture_output=True)
            return True
        except (OSError, subprocess.CalledProcessError):
            return False


setup(
    packages=find_packages(include=["mstein_fast", "mstein_fast.*"]) + ["mstein_fast.kernels"],
    package_dir={"mstein_fast.kernels": "kernels"},
    ext_modules=[CMakeExtension("mstein_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
