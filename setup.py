"""The compiled CPU kernels (a C++ extension per kernel module); everything else is in pyproject.toml.

The kernels are built when xpdl is installed, so no run waits for a compiler. A machine
without a C++ compiler still installs xpdl (``optional=True``): its NumPy backend then runs
the reference step and says why (``xpdl info``).
"""

from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-add, so every CPU gives the reference's bits;
# -fno-math-errno / -fno-trapping-math change no result, they let loops with sqrt and
# comparisons vectorize
FLAGS = ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]


def kernels(name: str) -> Extension:
    return Extension(
        f"xpdl.backends.{name}",
        sources=[f"xpdl/backends/{name}.cpp"],
        depends=["xpdl/backends/_kernel_call.h", "xpdl/backends/_isa_variants.h", f"xpdl/backends/{name}_body.h"],
        extra_compile_args=FLAGS,
        language="c++",
        optional=True,
    )


setup(ext_modules=[kernels("_cpu_kernels"), kernels("_conv_kernels")])
