"""Build the Cython twins in _speedups/ (the pure-Python twins need no build)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("_speedups._framing_c", ["_speedups/_framing_c.pyx"]),
    Extension("_speedups._sendmany_c", ["_speedups/_sendmany_c.pyx"]),
    Extension("_speedups._wsframe_c", ["_speedups/_wsframe_c.pyx"]),
    Extension("_speedups._items_c", ["_speedups/_items_c.pyx"]),
    Extension("_speedups._tnetstring_c", ["_speedups/_tnetstring_c.pyx"]),
    Extension("_speedups._fanout_c", ["_speedups/_fanout_c.pyx"]),
    Extension("_speedups._marks_c", ["_speedups/_marks_c.pyx"]),
    Extension("_speedups._deliver_c", ["_speedups/_deliver_c.pyx"]),
    Extension("_speedups._sequence_c", ["_speedups/_sequence_c.pyx"]),
    Extension("_speedups._history_c", ["_speedups/_history_c.pyx"]),
    Extension("_speedups._headers_c", ["_speedups/_headers_c.pyx"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    )
)
