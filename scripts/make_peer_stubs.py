#!/usr/bin/env python3
"""Stand-ins for the libraries that the peers of `kvds bench peers` link to
but a machine without a GPU does not have.

The Mooncake wheel (python/requirements-peers.txt, installed into
.venv/peers by scripts/install-deps.sh) is built for CUDA machines: its
binaries (transfer_engine_bench, mooncake_master) and its Python extensions
(engine.so, store.so) list libcuda.so.1 and libcudart.so.12 as NEEDED, next
to libibverbs.so.1 and libmlx5.so.1, which Debian has (libibverbs1,
ibverbs-providers). This script finds, for the named ELF files under
<root>, the NEEDED sonames that neither <root> nor the system provides
(torch extensions of the wheel that the bench never loads are not named),
and builds one
small shared library per soname in <outdir>, exporting every symbol (with
its symbol version) that the files import from it, and every unversioned
import that nothing loadable defines (the CUDA driver API). Each stub
function returns 100 (CUDA_ERROR_NO_DEVICE / cudaErrorNoDevice), so a CUDA
call fails instead of crashing; the TCP transport never makes one. Run the
peers with <outdir> on LD_LIBRARY_PATH.

Like scripts/make_cuda_stubs.py (whose ELF readers it uses) for torch, but
for files that link the missing libraries directly rather than through an
RPATH, and it asks the dynamic linker's cache what the system provides.

usage: make_peer_stubs.py <root> <outdir> <file>...   (files relative to root)
Needs gcc, binutils (readelf, nm) and ldconfig. Idempotent: rebuilds the
stubs. Prints one line per stub.
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

from make_cuda_stubs import dynamic_symbols, run

STUB_RETURN = 100  # CUDA_ERROR_NO_DEVICE, cudaErrorNoDevice


def elf_files(root):
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        yield p


def system_libraries():
    """soname -> path of what the dynamic linker's cache lists (this
    machine's architecture only)."""
    out = {}
    for line in run("ldconfig", "-p").splitlines():
        m = re.match(r"\s*(\S+) \((.*?)\) => (\S+)", line)
        if m and ("x86-64" in m.group(2) or "AArch64" in m.group(2)
                  or os.uname().machine not in ("x86_64", "aarch64")):
            out.setdefault(m.group(1), m.group(3))
    return out


def main(argv):
    if len(argv) < 4:
        sys.stderr.write(__doc__)
        return 2
    root, outdir = argv[1], argv[2]
    files = [os.path.join(root, f) for f in argv[3:]]
    for f in files:
        if not os.path.isfile(f):
            sys.stderr.write(f"make_peer_stubs: no file {f}\n")
            return 1
    own_files = sorted(elf_files(root))
    own = {os.path.basename(f) for f in own_files}
    system = system_libraries()

    needed = set()
    for f in files:
        needed |= set(re.findall(r"\(NEEDED\).*\[(.+?)\]", run("readelf", "-d", f)))
    missing = {s for s in needed if s not in own and s not in system}
    if not missing:
        return 0

    # What the files and the system libraries they load define.
    providers = own_files + [system[s] for s in sorted(needed) if s in system]
    defined = set()
    for f in providers:
        defined |= {name for _, name, _ in dynamic_symbols(f, "--defined-only")}

    # Symbol version name -> missing soname, from each file's .gnu.version_r.
    version_owner = {}
    for f in files:
        current = None
        for line in run("readelf", "-V", f).splitlines():
            m = re.search(r"File: (\S+)", line)
            if m:
                current = m.group(1)
                continue
            m = re.search(r"Name: (\S+)", line)
            if m and current in missing:
                version_owner[m.group(1)] = current

    versioned = collections.defaultdict(lambda: collections.defaultdict(set))
    unversioned = set()
    for f in files:
        for kind, name, ver in dynamic_symbols(f, "--undefined-only"):
            if kind != "U":
                continue
            if ver in version_owner:
                versioned[version_owner[ver]][ver].add(name)
            elif not ver and name not in defined and not name.startswith(("Py", "_Py")):
                unversioned.add(name)

    os.makedirs(outdir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for soname in sorted(missing):
            versions = versioned.get(soname, {})
            vsyms = set().union(*versions.values()) if versions else set()
            src = os.path.join(tmp, "stub.c")
            with open(src, "w") as f:
                f.writelines(f"int {s}(void) {{ return {STUB_RETURN}; }}\n"
                             for s in sorted(vsyms | unversioned))
            cmd = ["gcc", "-shared", "-fPIC", "-O0", "-w", f"-Wl,-soname,{soname}",
                   "-o", os.path.join(outdir, soname), src]
            if versions:
                vmap = os.path.join(tmp, "stub.map")
                with open(vmap, "w") as f:
                    f.writelines(f"{v} {{ global: {'; '.join(sorted(n))}; }};\n"
                                 for v, n in sorted(versions.items()))
                cmd.append(f"-Wl,--version-script={vmap}")
            subprocess.run(cmd, check=True)
            print(f"make_peer_stubs: {soname}: {len(vsyms)} versioned + "
                  f"{len(unversioned)} unversioned symbols")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
