"""Builds kvds._kvds, the CPython binding of libkvds.

The client library's C sources are compiled into the extension directly:
the list is src/client/sources.txt, one path per line, the same file CMake
builds libkvds.so from, so the two cannot drift. They are compiled with the
same warnings as the C build, -Werror included. Needs a C compiler, the
Python headers, libxxhash-dev and libssl-dev (libcrypto).
"""
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLIENT_SOURCES = os.path.join(ROOT, "src", "client", "sources.txt")


def rel(path):
    """A path relative to this directory, as setuptools wants sources."""
    return os.path.relpath(path, HERE)


def client_sources():
    """The lines of src/client/sources.txt ('#' comments and blank lines
    skipped): paths of .c files relative to the repository root."""
    sources = []
    with open(CLIENT_SOURCES, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            if not s.endswith(".c") or not os.path.isfile(os.path.join(ROOT, s)):
                raise RuntimeError(f"src/client/sources.txt: cannot use {s!r} "
                                   "(expects paths of .c files)")
            sources.append(rel(os.path.join(ROOT, s)))
    return sources


EXT_SOURCES = sorted(
    os.path.join("ext", f) for f in os.listdir(os.path.join(HERE, "ext"))
    if f.endswith(".c"))

# Rebuild when any header the sources may include changes.
DEPENDS = sorted(
    rel(os.path.join(d, f))
    for base in ("include", "src")
    for d, _, files in os.walk(os.path.join(ROOT, base))
    for f in files if f.endswith(".h")) + [os.path.join("ext", "kvdspy.h")]

WARNINGS = [
    "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wno-unused-parameter",
    "-Wstrict-prototypes", "-Wmissing-prototypes",
]

setup(
    packages=["kvds", "kvds.vllm"],
    ext_modules=[
        Extension(
            "kvds._kvds",
            sources=EXT_SOURCES + client_sources(),
            include_dirs=[rel(os.path.join(ROOT, "include")),
                          rel(os.path.join(ROOT, "src")), "ext"],
            define_macros=[("_GNU_SOURCE", None)],
            libraries=["xxhash", "crypto"],
            extra_compile_args=["-std=c11", "-fvisibility=hidden"] + WARNINGS,
            depends=DEPENDS,
        )
    ],
)
