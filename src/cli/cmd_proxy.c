/* cmd_proxy.c — `kvds proxy`: options (ours and the seeds' proxies'), then
 * the proxy's event loop (src/proxy/proxy.h, docs/proxy.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli/cli.h"
#include "proxy/proxy.h"

#define CMD "proxy"
#define MAX_ADDRS 256

static const char USAGE[] =
    "usage: kvds proxy [--host H] [--port P] --prefill HOST:PORT ... "
    "[--decode HOST:PORT ...] [options]\n"
    "\n"
    "The PD proxy in front of vLLM instances that use KvdsConnector. With\n"
    "decoders (XpYd): each /v1/completions or /v1/chat/completions request\n"
    "is prefilled on one --prefill instance (max_tokens 1, do_remote_decode),\n"
    "then sent with the returned kv_transfer_params to one --decode instance\n"
    "whose answer (SSE or JSON) is streamed back unchanged. Without\n"
    "decoders the --prefill instances are colocated (kv_both) ones and each\n"
    "request goes to one of them unchanged. See docs/proxy.md.\n"
    "\n"
    "  --host H                 listen address (default 127.0.0.1; 0.0.0.0 for "
    "all)\n"
    "  --port P                 listen port (default 8000; 0: any free port)\n"
    "  --prefill HOST:PORT ...  prefill (or colocated) instances; repeatable\n"
    "  --decode HOST:PORT ...   decode instances; repeatable\n"
    "  --policy P               prefix-affinity (default), round-robin or\n"
    "                           least-outstanding\n"
    "  --affinity-block N       prefix-affinity block: N characters, or N "
    "token\n"
    "                           ids for token prompts (default 128)\n"
    "  --affinity-slack N       keep a prompt on its prefix's instance unless "
    "that\n"
    "                           has N more requests in flight than the least "
    "loaded\n"
    "                           (default 4)\n"
    "  --prefill-timeout-s S    deadline of a prefill hop (default 600)\n"
    "  --decode-timeout-s S     deadline of a decode hop, whole stream "
    "(default "
    "600)\n"
    "  --connect-timeout-ms MS  deadline to connect to an instance (default "
    "3000)\n"
    "  --health-interval-ms MS  GET /health of every instance this often "
    "(default 2000)\n"
    "  --retries N              more instances tried after a failed hop "
    "(default 2)\n"
    "  --max-body SIZE          largest request body (default 32MiB)\n"
    "  --api-key-env NAME       send 'Authorization: Bearer $NAME' to the "
    "instances\n"
    "                           (default: forward the client's header)\n"
    "  -v, --verbose            one line per hop on stderr\n"
    "  -h, --help               this text\n"
    "\n"
    "The seeds' proxy options work too: --prefiller-host(s) H ..., "
    "--prefiller-port(s)\n"
    "P ..., --decoder-host(s) H ..., --decoder-port(s) P ... (hosts default "
    "to\n"
    "localhost; one host with several ports, or equal counts), and\n"
    "--pd-disaggregation (PD mode is on whenever decoders are given).\n"
    "\n"
    "Endpoints: POST /v1/completions, /v1/chat/completions; GET /v1/models,\n"
    "/health (503 while no instance of a role is healthy), /metrics "
    "(Prometheus).\n"
    "SIGINT/SIGTERM: stop accepting, let requests in flight finish (10 s).\n";

struct list {
  const char *v[MAX_ADDRS];
  size_t n;
};

static int add(struct list *l, const char *opt, const char *v) {
  if (l->n == MAX_ADDRS) {
    cli_err(CMD, "too many values for %s (at most %d)", opt, MAX_ADDRS);
    return CLI_USAGE;
  }
  l->v[l->n++] = v;
  return CLI_OK;
}

/* Pairs seed-style hosts and ports into "host:port" strings. */
static int pair(const char *what, const struct list *hosts,
                const struct list *ports, struct list *out, char **store,
                size_t *nstore) {
  if (hosts->n == 0 && ports->n == 0)
    return CLI_OK;
  if (ports->n == 0) {
    cli_err(CMD, "--%s-host given without --%s-port", what, what);
    return CLI_USAGE;
  }
  size_t n = ports->n > hosts->n ? ports->n : hosts->n;
  if (hosts->n > 1 && ports->n > 1 && hosts->n != ports->n) {
    cli_err(CMD,
            "%zu --%s-hosts but %zu --%s-ports: give one host, one port, or "
            "as many of each",
            hosts->n, what, ports->n, what);
    return CLI_USAGE;
  }
  for (size_t i = 0; i < n; i++) {
    const char *h = hosts->n == 0   ? "localhost"
                    : hosts->n == 1 ? hosts->v[0]
                                    : hosts->v[i];
    const char *p = ports->n == 1 ? ports->v[0] : ports->v[i];
    size_t len = strlen(h) + strlen(p) + 4;
    char *s = malloc(len);
    if (!s) {
      cli_err(CMD, "out of memory");
      return CLI_FAIL;
    }
    if (strchr(h, ':') && h[0] != '[')
      snprintf(s, len, "[%s]:%s", h, p);
    else
      snprintf(s, len, "%s:%s", h, p);
    store[(*nstore)++] = s;
    int rc = add(out, what, s);
    if (rc != CLI_OK)
      return rc;
  }
  return CLI_OK;
}

static int u32_opt(const char *opt, const char *v, uint64_t scale, uint64_t max,
                   uint32_t *out) {
  uint64_t x;
  if (cli_parse_u64_opt(CMD, opt, v, &x) != CLI_OK)
    return CLI_USAGE;
  if (x > max / scale) {
    cli_err(CMD, "%s %s is too large (at most %llu)", opt, v,
            (unsigned long long)(max / scale));
    return CLI_USAGE;
  }
  *out = (uint32_t)(x * scale);
  return CLI_OK;
}

int cmd_proxy(int argc, char **argv) {
  struct list pre = {0}, dec = {0}, ph = {0}, pp = {0}, dh = {0}, dp = {0};
  char *owned[4 * MAX_ADDRS];
  size_t nowned = 0;
  const char *api_env = NULL, *policy = "prefix-affinity";
  uint64_t port = 8000;
  struct kvds_proxy_config cfg = {
      .host = "127.0.0.1",
      .affinity_block = 128,
      .affinity_slack = 4,
      .prefill_timeout_ms = 600000,
      .decode_timeout_ms = 600000,
      .connect_timeout_ms = 3000,
      .health_interval_ms = 2000,
      .retries = 2,
      .max_body = 32u << 20,
  };
  int rc = CLI_OK;
  for (int i = 1; i < argc && rc == CLI_OK; i++) {
    char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(USAGE, stdout);
      return CLI_OK;
    }
    if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
      cfg.verbose = 1;
      continue;
    }
    if (strcmp(a, "--pd-disaggregation") == 0)
      continue;
    if (strncmp(a, "--", 2) != 0) {
      cli_err(CMD, "unexpected argument '%s' (see kvds proxy --help)", a);
      return CLI_USAGE;
    }
    /* --opt=value or --opt value [value ...] */
    char name[64];
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    snprintf(name, sizeof name, "%.*s", (int)(nl < 63 ? nl : 63), a);
    const char *vals[MAX_ADDRS];
    size_t nv = 0;
    if (eq) {
      vals[nv++] = eq + 1;
    } else {
      while (i + 1 < argc && nv < MAX_ADDRS &&
             !(argv[i + 1][0] == '-' && argv[i + 1][1] == '-') &&
             strcmp(argv[i + 1], "-v") != 0 && strcmp(argv[i + 1], "-h") != 0)
        vals[nv++] = argv[++i];
    }
    struct list *multi = NULL;
    if (strcmp(name, "--prefill") == 0)
      multi = &pre;
    else if (strcmp(name, "--decode") == 0)
      multi = &dec;
    else if (strcmp(name, "--prefiller-host") == 0 ||
             strcmp(name, "--prefiller-hosts") == 0)
      multi = &ph;
    else if (strcmp(name, "--prefiller-port") == 0 ||
             strcmp(name, "--prefiller-ports") == 0)
      multi = &pp;
    else if (strcmp(name, "--decoder-host") == 0 ||
             strcmp(name, "--decoder-hosts") == 0)
      multi = &dh;
    else if (strcmp(name, "--decoder-port") == 0 ||
             strcmp(name, "--decoder-ports") == 0)
      multi = &dp;
    static const char *const single[] = {"--host",
                                         "--port",
                                         "--policy",
                                         "--affinity-block",
                                         "--affinity-slack",
                                         "--prefill-timeout-s",
                                         "--decode-timeout-s",
                                         "--connect-timeout-ms",
                                         "--health-interval-ms",
                                         "--retries",
                                         "--max-body",
                                         "--api-key-env"};
    int known = multi != NULL;
    for (size_t k = 0; !known && k < sizeof single / sizeof single[0]; k++)
      known = strcmp(name, single[k]) == 0;
    if (!known) {
      cli_err(CMD, "unknown option %s (see kvds proxy --help)", name);
      return CLI_USAGE;
    }
    if (nv == 0) {
      cli_err(CMD, "%s needs a value (see kvds proxy --help)", name);
      return CLI_USAGE;
    }
    if (multi) {
      for (size_t k = 0; k < nv && rc == CLI_OK; k++)
        rc = add(multi, name, vals[k]);
      continue;
    }
    if (nv > 1) {
      cli_err(CMD, "%s takes one value, got '%s %s'", name, vals[0], vals[1]);
      return CLI_USAGE;
    }
    const char *v = vals[0];
    if (strcmp(name, "--host") == 0) {
      cfg.host = v;
    } else if (strcmp(name, "--port") == 0) {
      rc = cli_parse_u64_opt(CMD, name, v, &port);
      if (rc == CLI_OK && port > 65535) {
        cli_err(CMD, "--port %s is not a port", v);
        rc = CLI_USAGE;
      }
    } else if (strcmp(name, "--policy") == 0) {
      policy = v;
    } else if (strcmp(name, "--affinity-block") == 0) {
      rc = u32_opt(name, v, 1, 1u << 20, &cfg.affinity_block);
      if (rc == CLI_OK && cfg.affinity_block == 0) {
        cli_err(CMD, "--affinity-block must be at least 1");
        rc = CLI_USAGE;
      }
    } else if (strcmp(name, "--affinity-slack") == 0) {
      rc = u32_opt(name, v, 1, UINT32_MAX, &cfg.affinity_slack);
    } else if (strcmp(name, "--prefill-timeout-s") == 0) {
      rc = u32_opt(name, v, 1000, 86400000, &cfg.prefill_timeout_ms);
    } else if (strcmp(name, "--decode-timeout-s") == 0) {
      rc = u32_opt(name, v, 1000, 86400000, &cfg.decode_timeout_ms);
    } else if (strcmp(name, "--connect-timeout-ms") == 0) {
      rc = u32_opt(name, v, 1, 3600000, &cfg.connect_timeout_ms);
    } else if (strcmp(name, "--health-interval-ms") == 0) {
      rc = u32_opt(name, v, 1, 3600000, &cfg.health_interval_ms);
    } else if (strcmp(name, "--retries") == 0) {
      rc = u32_opt(name, v, 1, 64, &cfg.retries);
    } else if (strcmp(name, "--max-body") == 0) {
      rc = cli_parse_size_opt(CMD, name, v, &cfg.max_body);
    } else if (strcmp(name, "--api-key-env") == 0) {
      api_env = v;
    } else {
      cli_err(CMD, "unknown option %s (see kvds proxy --help)", name);
      rc = CLI_USAGE;
    }
  }
  if (rc == CLI_OK)
    rc = pair("prefiller", &ph, &pp, &pre, owned, &nowned);
  if (rc == CLI_OK)
    rc = pair("decoder", &dh, &dp, &dec, owned, &nowned);
  if (rc == CLI_OK && kvds_route_policy_parse(policy, &cfg.policy) != 0) {
    cli_err(CMD,
            "--policy %s: use prefix-affinity, round-robin or "
            "least-outstanding",
            policy);
    rc = CLI_USAGE;
  }
  if (rc == CLI_OK &&
      (cfg.prefill_timeout_ms == 0 || cfg.decode_timeout_ms == 0 ||
       cfg.connect_timeout_ms == 0 || cfg.health_interval_ms == 0 ||
       cfg.max_body == 0)) {
    cli_err(CMD, "timeouts, --health-interval-ms and --max-body must be > 0");
    rc = CLI_USAGE;
  }
  if (rc == CLI_OK && pre.n == 0) {
    cli_err(CMD,
            "no %s given: use --prefill HOST:PORT (or "
            "--prefiller-host/--prefiller-port)",
            dec.n ? "prefill instance" : "instance");
    rc = CLI_USAGE;
  }
  if (rc == CLI_OK && api_env) {
    cfg.api_key = getenv(api_env);
    if (!cfg.api_key || !cfg.api_key[0]) {
      cli_err(CMD, "--api-key-env %s: the variable is not set", api_env);
      rc = CLI_USAGE;
    }
  }
  kvds_proxy *px = NULL;
  if (rc == CLI_OK) {
    /* Each request in flight holds two sockets (client, backend). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
    cfg.port = (uint16_t)port;
    cfg.prefill = pre.v;
    cfg.nprefill = pre.n;
    cfg.decode = dec.v;
    cfg.ndecode = dec.n;
    char err[512];
    if (kvds_proxy_new(&cfg, &px, err, sizeof err) != 0) {
      cli_err(CMD, "%s", err);
      rc = CLI_FAIL;
    }
  }
  if (rc == CLI_OK) {
    if (dec.n)
      printf("kvds proxy: listening on %s:%u; PD: %zu prefill, %zu decode; "
             "policy %s\n",
             cfg.host, (unsigned)kvds_proxy_port(px), pre.n, dec.n,
             kvds_route_policy_name(cfg.policy));
    else
      printf("kvds proxy: listening on %s:%u; colocated: %zu instance(s); "
             "policy %s\n",
             cfg.host, (unsigned)kvds_proxy_port(px), pre.n,
             kvds_route_policy_name(cfg.policy));
    fflush(stdout);
    if (kvds_proxy_run(px) != 0) {
      cli_err(CMD, "the event loop failed");
      rc = CLI_FAIL;
    }
    kvds_proxy_free(px);
  }
  for (size_t i = 0; i < nowned; i++)
    free(owned[i]);
  return rc;
}
