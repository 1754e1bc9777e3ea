/* main.c — the kvds binary: dispatches subcommands, or the dscli front when
 * invoked as "dscli". */
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

struct command {
  const char *name;
  int (*fn)(int argc, char **argv);
  const char *summary;
};

static const struct command commands[] = {
    {"worker", cmd_worker, "run the worker daemon (pool + server)"},
    {"status", cmd_status, "show a worker's pool, objects and counters"},
    {"stop", cmd_stop, "shut a worker down cleanly"},
    {"put", cmd_put, "store a file or stdin under a key"},
    {"get", cmd_get, "write a key's value to stdout or a file"},
    {"ls", cmd_ls, "list keys (optionally under a prefix)"},
    {"stat", cmd_stat, "show one key's metadata"},
    {"rm", cmd_rm, "delete keys"},
    {"bench", cmd_bench, "measure put/get throughput against memcpy"},
    {"proxy", cmd_proxy, "PD proxy (XpYd) in front of vLLM instances"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
  fprintf(f, "usage: kvds <command> [options]\n"
             "\n"
             "kvds keeps KV-cache blocks in a shared-memory pool served by a "
             "worker daemon.\n"
             "\n"
             "commands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fprintf(f, "  help CMD  show a command's options (same as kvds CMD --help)\n"
             "\n"
             "The worker address defaults to $DS_WORKER_ADDR, then "
             "127.0.0.1:31501; every\n"
             "client command takes --worker ADDR (host:port or unix:/path).\n"
             "Invoked as 'dscli', the binary accepts dscli start/stop -w "
             "(see dscli --help).\n"
             "\n"
             "exit status: 0 success, 1 failure, 2 usage error.\n"
             "options: -h, --help   this text;  -V, --version   print the "
             "version\n");
}

static const struct command *find_command(const char *name) {
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

static int run_help(int argc, char **argv) {
  if (argc < 2) {
    usage(stdout);
    return CLI_OK;
  }
  const struct command *cmd = find_command(argv[1]);
  if (!cmd) {
    fprintf(stderr, "kvds help: unknown command '%s' (see kvds --help)\n",
            argv[1]);
    return CLI_USAGE;
  }
  char *hargv[] = {argv[1], "--help", NULL};
  return cmd->fn(2, hargv);
}

int main(int argc, char **argv) {
  /* Write errors (a closed pipe, a dead worker) come back as EPIPE. */
  signal(SIGPIPE, SIG_IGN);

  char name[256];
  snprintf(name, sizeof name, "%s", argc > 0 ? argv[0] : "kvds");
  if (strcmp(basename(name), "dscli") == 0)
    return dscli_main(argc, argv);

  if (argc < 2) {
    usage(stderr);
    return CLI_USAGE;
  }
  const char *c = argv[1];
  if (strcmp(c, "-h") == 0 || strcmp(c, "--help") == 0) {
    usage(stdout);
    return CLI_OK;
  }
  if (strcmp(c, "-V") == 0 || strcmp(c, "--version") == 0 ||
      strcmp(c, "version") == 0) {
    printf("kvds %s\n", KVDS_VERSION_STRING);
    return CLI_OK;
  }
  if (strcmp(c, "help") == 0)
    return run_help(argc - 1, argv + 1);
  const struct command *cmd = find_command(c);
  if (!cmd) {
    fprintf(stderr, "kvds: unknown command '%s' (see kvds --help)\n", c);
    return CLI_USAGE;
  }
  return cmd->fn(argc - 1, argv + 1);
}
