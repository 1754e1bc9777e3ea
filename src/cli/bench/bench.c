/*
 * bench.c — `kvds bench`: picks the mode. `local` (local.c), `remote`
 * (remote.c), `disk` (disk.c) and `peers` (peers.c, its Mooncake rows in
 * python/kvds/bench_peers_mooncake.py) are written in C; `kvds bench connector`
 * runs the Python bench of the vLLM connector (python/kvds/bench_connector.py)
 * in $KVDS_PYTHON, else python3, and `kvds bench ttft` the TTFT bench with real
 * vLLM servers (python/kvds/bench_serve.py) the same way. Also what every mode
 * shares about the process: the help text, the stop flag, this binary's path
 * (bench.h).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/bench/bench.h"

static const char HELP[] =
    "usage: kvds bench local [options]\n"
    "       kvds bench remote [options]\n"
    "       kvds bench disk [options]\n"
    "       kvds bench peers [options]\n"
    "       kvds bench connector [options]\n"
    "       kvds bench ttft [options]\n"
    "\n"
    "kvds bench local:\n"
    "Measures a running worker (start one first; the bench spawns nothing):\n"
    "memcpy bandwidth first (DRAM-realistic: buffers far larger than the\n"
    "caches, rotated; and cache-hot), then for every size x batch: put\n"
    "(kvds_mput: create, copy+checksum, seal), zero-copy get (mget + release) "
    "and get with\n"
    "copy (kvds_mget_into: into the bench's buffers) with ops/s, GB/s (10^9 "
    "B/s), the ratio to\n"
    "DRAM memcpy, and p50/p99 latency per call; then batched exists\n"
    "throughput and the latency of a single 4 KiB get. The bench keeps its\n"
    "working set under half of the pool (and under the eviction watermark)\n"
    "and deletes everything it wrote.\n"
    "\n"
    "  -w, --worker ADDR   worker address (default $DS_WORKER_ADDR, then\n"
    "                      127.0.0.1:31501); a loopback address uses the\n"
    "                      worker's Unix socket and shared memory\n"
    "      --sizes LIST    value sizes (default 4KiB,64KiB,1MiB,16MiB)\n"
    "      --batch LIST    values per call (default 1,64; at most 4096)\n"
    "      --seconds S     time per size x batch case, split over its three\n"
    "                      operations (default 3: about 30 s in all)\n"
    "      --quick         short run, about 5 s (--seconds 0.45)\n"
    "      --json          print one JSON document instead of tables\n"
    "  -h, --help          this text\n"
    "\n"
    "kvds bench remote:\n"
    "Reads across two workers. Starts worker A and worker B of this binary\n"
    "on free loopback ports, each with --peers naming the other (or uses\n"
    "running ones: --worker-a/--worker-b), waits until each sees the other,\n"
    "then for every size x batch puts fresh values on A (not timed) and\n"
    "times kvds_mget_ex on B through a local shared-memory client of B with\n"
    "hint = A: B pulls the values from A over its peer connections into its\n"
    "pool (xxh3 verified) and answers with zero-copy views. Each call reads\n"
    "keys B does not hold; B's copies are deleted (not timed) before keys\n"
    "are read again. Next to each figure: raw TCP over loopback measured in\n"
    "the same run, moving the same bytes per call over the same number of\n"
    "streams as B uses (min(pull threads, clients x ceil(batch / 4)), all\n"
    "pull threads for values over 2 MiB, which B pulls in ranges over\n"
    "several connections when pull threads are idle): a request per\n"
    "stream and call, answered from a source buffer and received straight\n"
    "into a destination buffer, one sending and one receiving thread per\n"
    "stream. Then the same reads without a hint (B asks each key's home\n"
    "worker where it lives) for one size, and lookup latency: kvds_exists\n"
    "of one key and kvds_lookup_prefix of a 32-key chain on B for keys held\n"
    "only on A (the keys' directory homes are spread over both workers by\n"
    "hash), next to the same calls on A answered from its own store.\n"
    "Started workers are stopped at the end, also after an error or SIGINT;\n"
    "their sockets and logs go in a fresh directory under $TMPDIR (else\n"
    "/tmp), removed at the end. Progress lines (\"kvds bench remote: ...\")\n"
    "go to stderr.\n"
    "\n"
    "      --worker-a ADDR   use this running worker as A (with --worker-b;\n"
    "                        B must list A as a peer and run on this host;\n"
    "                        -m and --threads are then usage errors)\n"
    "      --worker-b ADDR   use this running worker as B\n"
    "  -m, --memory SIZE     pool of each started worker (default 2GiB)\n"
    "      --pull-threads N  B's pull threads (default 4): passed to the\n"
    "                        started workers; with --worker-b give B's value\n"
    "      --threads N       I/O threads of each started worker (default 1)\n"
    "      --clients N       client threads reading on B at once, each with\n"
    "                        its own connection and keys (default 1, at\n"
    "                        most 16); GB/s is their sum, raw TCP moves all\n"
    "                        their bytes per call\n"
    "      --sizes LIST      value sizes (default 256KiB,1MiB,4MiB,16MiB)\n"
    "      --batch LIST      values per call (default 1,8,64)\n"
    "      --max-bytes SIZE  values put on A per case (default 512MiB); a\n"
    "                        case whose one call reads more is skipped\n"
    "      --dir-size SIZE   value size of the reads without a hint\n"
    "                        (default 1MiB)\n"
    "      --seconds S       timed reads per case (default 0.3): at least S\n"
    "                        and 3 calls, unless the case's wall time reaches\n"
    "                        10 x S + 2 s first (then fewer seconds, still\n"
    "                        >= 3 calls), in 4 turns: after each, raw TCP\n"
    "                        moves the bytes of the calls just made (both\n"
    "                        see the same moments of a shared machine)\n"
    "      --transport tcp|ucx\n"
    "                        how B reads A: the started workers get\n"
    "                        --transport tcp (the default; raw TCP is the\n"
    "                        ceiling) or --transport ucx (running workers\n"
    "                        must have it: the bench stops if B reads its\n"
    "                        peers over TCP). UCX_TLS and every UCX_*\n"
    "                        variable of the bench's environment apply to the\n"
    "                        workers and to ucx_perftest; unset, UCX chooses\n"
    "                        as a worker would (without RDMA: its tcp\n"
    "                        transport). With ucx each row adds\n"
    "                        ucx_perftest's ucp_get of the same size,\n"
    "                        measured in the same run after the case's reads\n"
    "                        (Debian ucx-utils; server and client are\n"
    "                        children of the bench on loopback; -O batch x\n"
    "                        clients gets in flight, -e for error handling as\n"
    "                        the workers' endpoints have), and ratio is GB/s\n"
    "                        / ucx_perftest's; when it is missing or fails, a\n"
    "                        skip line with the reason, and the kvds figures\n"
    "                        still. viaUCX counts the values B read over UCX\n"
    "                        (its ucx_in): a row where none did is marked and\n"
    "                        the bench exits 1 after its report\n"
    "      --quick           short run, a few seconds (256MiB pools,\n"
    "                        --max-bytes 32MiB, --seconds 0.03)\n"
    "      --json            print one JSON document instead of tables\n"
    "  -h, --help            this text\n"
    "\n"
    "kvds bench disk:\n"
    "The disk tier against fio. Per object size it starts a worker of this\n"
    "binary (--tier posix --disk-policy spill, a small pool, --disk-dir in a\n"
    "fresh directory under --dir, removed at the end with everything in it)\n"
    "and measures: spill, objects put until --working-set x the pool is\n"
    "written, each put held back until the tier's spill is ahead of its\n"
    "eviction (the worker would evict objects without a copy): the disk\n"
    "bytes the tier wrote (its disk_write_bytes counter) over the time from\n"
    "the first spill to the last; read-back, zero-copy mgets of\n"
    "--disk-threads keys per call that live on disk only (one pass:\n"
    "promotion into DRAM); then the latency of one zero-copy get of a DRAM\n"
    "hit and of a disk hit (each sample checked against the worker's\n"
    "disk_reads). Next to each throughput: fio of the same bytes in the same\n"
    "directory, --bs = the object size, --numjobs = --disk-threads,\n"
    "--ioengine=psync, buffered like the tier (--fsync=1 with --fsync\n"
    "object), and the ratio kvds / fio; without fio a skip note and the\n"
    "kvds figures. Before every phase of both the dirty pages are written\n"
    "back and, when the bench runs as root, the page cache is dropped (else\n"
    "the header says it was not). docs/benchmarks.md explains the rows.\n"
    "Progress lines (\"kvds bench disk: ...\") go to stderr.\n"
    "\n"
    "      --dir DIR          where the bench's directory goes (default\n"
    "                         /var/tmp: a disk, not a tmpfs)\n"
    "  -m, --memory SIZE      pool of the started workers (default 256MiB)\n"
    "      --sizes LIST       object sizes (default 1MiB,4MiB,16MiB; the pool\n"
    "                         must hold at least 8 of each)\n"
    "      --working-set X    bytes put per size, in pools (2..64, default 4)\n"
    "      --disk-threads N   the worker's disk threads, the read-back's\n"
    "                         keys per call and fio's jobs (default 2)\n"
    "      --fsync none|object  passed to the worker (default none)\n"
    "      --samples N        latency samples of each kind (default 20)\n"
    "      --quick            short run, under 20 s (--sizes 1MiB,4MiB,\n"
    "                         32MiB pools, --working-set 3, --samples 5)\n"
    "      --json             print one JSON document instead of tables\n"
    "  -h, --help             this text\n"
    "\n"
    "kvds bench peers:\n"
    "kvds next to Redis and Mooncake on this machine, one table of the same\n"
    "work: for every value size x batch (values per call) x client threads\n"
    "(each its own client or connection; Mooncake's: threads of one\n"
    "client), GET and PUT GB/s of:\n"
    "  memcpy, raw TCP   the ceilings: each thread copies its values between\n"
    "                    two buffers; one loopback stream per thread, its\n"
    "                    bytes received straight into a buffer. Both walk\n"
    "                    as many bytes as the stores' key rings (up to 64 MiB\n"
    "                    per thread)\n"
    "  redis             redis-server from $PATH (no RDB/AOF) and a hiredis\n"
    "                    client: MGET / MSET of the batch (GET / SET for one)\n"
    "  mooncake TE       the mooncake-transfer-engine wheel's own\n"
    "                    transfer_engine_bench, TCP, P2P handshake: reads and\n"
    "                    writes of a target's DRAM (whole seconds per point)\n"
    "  mooncake store    mooncake_master, a client that holds the segment and\n"
    "                    the bench's client (no segment): batch_get_into /\n"
    "                    batch_put_from, TCP, P2P handshake\n"
    "  kvds local        worker A through a shared-memory client: kvds_mput;\n"
    "                    kvds_mget_into (a copy out of the pool)\n"
    "  kvds pull B<-A    kvds_mget_ex on worker B (hint A) of values on A:\n"
    "                    B pulls them inside the call (as bench remote)\n"
    "  kvds TCP client   worker A through a TCP client: kvds_mput /\n"
    "                    kvds_mget_into, the values received straight into\n"
    "                    the buffers (the like-for-like of the Redis client)\n"
    "Under each kvds row: its ratio to its ceiling and to each peer. The\n"
    "bench starts everything itself on free loopback ports, in a fresh\n"
    "directory under $TMPDIR (else /tmp), and stops and removes it all at the\n"
    "end, also after an error or SIGINT. A peer that cannot start (not\n"
    "installed, fails) is one 'skipped: <reason>' line; the rest runs. The\n"
    "Mooncake rows come from the Python module kvds.bench_peers_mooncake in\n"
    "$KVDS_PYTHON (else python3) with the wheel's overlay on PYTHONPATH and\n"
    "its CUDA stand-ins on LD_LIBRARY_PATH (make deps: .venv/peers).\n"
    "Progress lines (\"kvds bench peers: ...\") go to stderr;\n"
    "docs/benchmarks.md explains the table.\n"
    "\n"
    "      --sizes LIST       value sizes (default "
    "64KiB,256KiB,1MiB,4MiB,16MiB)\n"
    "      --batch LIST       values per call (default 1,8,64)\n"
    "      --threads LIST     client threads (default 1,4; at most 16)\n"
    "      --seconds S        timed calls per thread and case (default 0.2;\n"
    "                         at least 3 calls; Mooncake's engine: 1 s)\n"
    "      --max-bytes SIZE   most bytes one call of all threads moves\n"
    "                         (default 512MiB): larger points print '-'\n"
    "      --peers-path DIR   the Mooncake overlay (default $KVDS_PEERS_PATH,\n"
    "                         else <venv>/peers of $KVDS_PYTHON's venv)\n"
    "      --quick            short run, about 15 s (--sizes 1MiB --batch 8\n"
    "                         --threads 1 --seconds 0.05 --max-bytes 32MiB)\n"
    "      --json             print one JSON document instead of the table\n"
    "  -h, --help             this text\n"
    "\n"
    "kvds bench connector:\n"
    "Save and load time per request through the vLLM connector\n"
    "(kvds.vllm.KvdsConnector driven with vLLM's own classes) for a paged KV\n"
    "cache of Qwen2.5-7B's geometry (896 KiB per block) at 1k, 4k and 16k\n"
    "tokens, next to the raw client's put/get of the same bytes and memcpy\n"
    "measured in the same run. Runs the Python module kvds.bench_connector\n"
    "in $KVDS_PYTHON (else python3), which needs the kvds package (make\n"
    "python) and vLLM 0.32.0; without --addr it starts a worker of this\n"
    "binary and stops it at the end. `kvds bench connector --help` lists its\n"
    "options (--addr, --tokens, --layers, --iters, --layout, --json, ...).\n"
    "With --ttft it starts three vLLM servers instead (plain vLLM and two\n"
    "through kvds, a tiny local model) and prints the time to first token of\n"
    "recompute, vLLM's prefix-cache hit, a kvds local hit and kvds PD.\n"
    "\n"
    "kvds bench ttft:\n"
    "Seed 004's TTFT steps with real vLLM servers through the kvds connector,\n"
    "timed by vLLM's own `vllm bench serve` (random prompts; default 2048\n"
    "tokens in, 10 out, 24 requests, concurrency 6): 1 baseline (set A,\n"
    "nothing cached), 2 local DRAM hit (set B evicts A from vLLM's own\n"
    "cache, then A again: loaded from the node's worker), 3 cross-node hit\n"
    "(A on a second instance with its own worker, pulled from the first),\n"
    "then PD 1P1D and 2P2D through `kvds proxy` of this binary. Prints the\n"
    "TTFT median and p99 per step, the hits and bytes read from the\n"
    "connector's log and the workers, the ratios TTFT3/TTFT2 and\n"
    "TTFT2/TTFT1, and LMCache's row (run side by side when it starts). Runs\n"
    "the Python module kvds.bench_serve in $KVDS_PYTHON (else python3); it\n"
    "starts and stops its own workers, servers and proxies. `kvds bench ttft\n"
    "--help` lists its options (--quick, --steps, --json, --plot FILE.png,\n"
    "...).\n";

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  g_stop = sig;
}

void bench_print_help(void) {
  fputs(HELP, stdout);
}

void bench_catch_signals(void) {
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

int bench_stopped(void) {
  return (int)g_stop;
}

const char *bench_self_exe(void) {
  static char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0)
    return NULL;
  self[n] = '\0';
  return self;
}

const char *bench_python(void) {
  const char *py = getenv("KVDS_PYTHON");
  return py && *py ? py : "python3";
}

/* The Python side of `kvds bench connector`, `kvds bench ttft` and the
 * Mooncake rows of `kvds bench peers`: a
 * clear message when the interpreter lacks the kvds package, then the
 * module's main(). argv[1] names the module and argv[2] the mode; both are
 * removed before main() parses sys.argv. */
const char bench_python_boot[] =
    "import importlib, sys\n"
    "mod, prog = sys.argv[1], sys.argv[2]\n"
    "del sys.argv[1:3]\n"
    "try:\n"
    "    main = importlib.import_module(mod).main\n"
    "except ImportError as e:\n"
    "    sys.exit(f'{prog}: {sys.executable} cannot import {mod} ({e}); '\n"
    "             f'set $KVDS_PYTHON to the Python the kvds package is '\n"
    "             f'installed in (make python: .venv/bin/python)')\n"
    "sys.exit(main())\n";

/* `kvds bench MODE ARGS...` for a mode written in Python: replaces this
 * process with $KVDS_PYTHON -c PYTHON_BOOT MODULE "kvds bench MODE"
 * --kvds-bin <this binary> ARGS...; returns only on failure. */
static int run_python(const char *module, int argc, char **argv) {
  const char *py = bench_python();
  const char *self = bench_self_exe();
  char prog[64];
  snprintf(prog, sizeof prog, "kvds bench %s", argv[0]);
  char **args = calloc((size_t)argc + 8, sizeof *args);
  if (!args) {
    cli_err("bench", "out of memory");
    return CLI_FAIL;
  }
  int k = 0;
  args[k++] = (char *)py;
  args[k++] = "-c";
  args[k++] = (char *)bench_python_boot;
  args[k++] = (char *)module;
  args[k++] = prog;
  if (self) {
    args[k++] = "--kvds-bin";
    args[k++] = (char *)self;
  }
  for (int i = 1; i < argc; i++)
    args[k++] = argv[i];
  args[k] = NULL;
  setenv("KVDS_BENCH_PROG", prog, 1);
  fflush(NULL);
  execvp(py, args);
  int err = errno;
  cli_err("bench",
          "cannot run the Python interpreter '%s': %s (set "
          "$KVDS_PYTHON to a Python with the kvds package and vLLM)",
          py, strerror(err));
  free(args);
  return CLI_FAIL;
}

int cmd_bench(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "connector") == 0)
    return run_python("kvds.bench_connector", argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "ttft") == 0)
    return run_python("kvds.bench_serve", argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "remote") == 0)
    return bench_remote(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "disk") == 0)
    return bench_disk(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "peers") == 0)
    return bench_peers(argc - 1, argv + 1);
  return bench_local(argc, argv);
}
