"""Builds corral's C parts from supervisor/sandbox/_cinit.c (everything else is in pyproject.toml):
- the extension supervisor.sandbox._cinit (`start` launches a sandbox init; `apply` runs a plan in-process);
- the extension supervisor.sandbox._csample (`read_leaf`: a cgroup leaf's usage files in one call);
- the executable supervisor/sandbox/corral-init, the sandbox init itself, linked statically so that each
  sandbox starts it without the dynamic loader's work, and against musl when musl-gcc is installed
  (Debian's musl-tools): a static glibc start-up probes the CPU with cpuid, a VM exit each on a virtual
  machine, and took 270 us of an exec where musl's takes 130 (docs/benchmarks-engine.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "supervisor/sandbox/_cinit.c"
#: The cgroup sampler's reader (cgroups/_stats.py): one call per leaf instead of six os.pread.
SAMPLER = "supervisor/sandbox/_csample.c"
FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"]


class BuildWithInit(build_ext):
    """build_ext, plus the init executable next to the extension (in place for editable installs)."""

    def run(self) -> None:
        super().run()
        ext_path = self.get_ext_fullpath("supervisor.sandbox._cinit")
        target = os.path.join(os.path.dirname(ext_path), "corral-init")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        cc = (
            shutil.which("musl-gcc")
            or os.environ.get("CC")
            or (sysconfig.get_config_var("CC") or "cc").split()[0]
        )
        subprocess.run([cc, *FLAGS, "-static", "-DCORRAL_INIT_MAIN", "-o", target, SOURCE], check=True)
        os.chmod(target, 0o755)
        # The loader links libbpf (glibc's): the system compiler, never musl-gcc.
        sys_cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
        build_observer(
            os.path.join(os.path.dirname(os.path.dirname(ext_path)), "observer"), self.build_temp, sys_cc
        )


def build_observer(out: str, tmp: str, cc: str) -> None:
    """The BPF observer's object and loader into `out`, when the tools are here; else says why."""
    clang = shutil.which("clang")
    bpftool = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None
    )
    missing = [
        what
        for what, ok in (
            ("x86_64", os.uname().machine == "x86_64"),
            ("clang", clang),
            ("bpftool", bpftool),
            ("libbpf-dev", os.path.exists("/usr/include/bpf/libbpf.h")),
            ("kernel BTF", os.path.exists("/sys/kernel/btf/vmlinux")),
        )
        if not ok
    ]
    obj, loader = os.path.join(out, "denials.bpf.o"), os.path.join(out, "corral-observer")
    if missing:
        print(f"corral: the BPF denial observer is not built (missing: {', '.join(missing)})")
        return
    assert clang is not None
    assert bpftool is not None
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    header = os.path.join(tmp, "vmlinux.h")
    try:
        with open(header, "wb") as f:
            cmd = [bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"]
            subprocess.run(cmd, stdout=f, check=True)
        bpf = [clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I", tmp]
        # The sources from the source tree (a wheel's build directory holds only what is built).
        subprocess.run([*bpf, "-c", "supervisor/observer/denials.bpf.c", "-o", obj], check=True)
        subprocess.run([cc, *FLAGS, "-o", loader, "supervisor/observer/loader.c", "-lbpf"], check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        for path in (obj, loader):
            if os.path.exists(path):
                os.unlink(path)
        print(f"corral: the BPF denial observer is not built: {err}")


setup(
    ext_modules=[
        Extension("supervisor.sandbox._cinit", [SOURCE], extra_compile_args=FLAGS),
        Extension("supervisor.sandbox._csample", [SAMPLER], extra_compile_args=FLAGS),
    ],
    cmdclass={"build_ext": BuildWithInit},
)
