"""Builds the native extension pyipset._core and the lab's prober
(pyipset/lab/synprobe) by running CMake (CMakeLists.txt holds every compiler
flag; this file only drives it)."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        # pip builds in a throw-away environment: a cache from an earlier
        # build would point at its deleted cmake, ninja and pybind11.
        (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
        config = os.environ.get("PYIPSET_BUILD_TYPE", "Release")
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={config}",
            "-DPYIPSET_BUILD_PYTHON=ON",
            "-DPYIPSET_BUILD_TESTS=OFF",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            # the lab's prober, beside the lab's code: pyipset/lab/synprobe
            f"-DCMAKE_RUNTIME_OUTPUT_DIRECTORY={out_dir / 'lab'}",
        ]
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_core", "synprobe"], check=True)


setup(ext_modules=[CMakeExtension("pyipset._core")], cmdclass={"build_ext": CMakeBuild})
