"""Builds kvds._kvds, the CPython binding of libkvds.

The client library's C sources are compiled into the extension directly
(the list is read from KVDS_CLIENT_SRC in the repository's CMakeLists.txt,
plus the sources of the kvds_auth library the client links, read from
src/cluster/auth.cmake, so it cannot drift), with the same warnings as the C
build, -Werror included. Needs a C compiler, the Python headers,
libxxhash-dev and libssl-dev (libcrypto).
"""
import os
import re

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rel(path):
    """A path relative to this directory, as setuptools wants sources."""
    return os.path.relpath(path, HERE)


def client_sources():
    with open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8") as f:
        cmake = f.read()
    m = re.search(r"set\(\s*KVDS_CLIENT_SRC\s+([^)]*)\)", cmake)
    if not m:
        raise RuntimeError("KVDS_CLIENT_SRC not found in CMakeLists.txt")
    sources = m.group(1).split()
    for s in sources:
        if not s.endswith(".c") or not os.path.isfile(os.path.join(ROOT, s)):
            raise RuntimeError(f"KVDS_CLIENT_SRC: cannot use {s!r} "
                               "(setup.py expects plain paths of .c files)")
    return [rel(os.path.join(ROOT, s)) for s in sources] + auth_sources()


def auth_sources():
    """The client authenticates over TCP with kvds_auth (libcrypto)."""
    path = os.path.join(ROOT, "src", "cluster", "auth.cmake")
    with open(path, encoding="utf-8") as f:
        m = re.search(r"add_library\(\s*kvds_auth\s+STATIC\s+([^)]*)\)", f.read())
    if not m:
        raise RuntimeError("add_library(kvds_auth ...) not found in auth.cmake")
    sources = m.group(1).split()
    for s in sources:
        if not s.endswith(".c") or not os.path.isfile(os.path.join(ROOT, s)):
            raise RuntimeError(f"kvds_auth: cannot use {s!r}")
    return [rel(os.path.join(ROOT, s)) for s in sources]


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
