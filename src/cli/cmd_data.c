/* cmd_data.c — the client commands: put, get, ls, stat, rm, status, stop. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/array.h"
#include "common/util.h"

#define WORKER_OPT_HELP                                                        \
  "  -w, --worker ADDR   worker address (default $DS_WORKER_ADDR, then\n"      \
  "                      127.0.0.1:31501); unix:/path or tcp://host:port\n"    \
  "                      force a transport\n"

/* Reports a per-key failure as "kvds <cmd>: key 'k' <what>". */
static void key_err(const char *cmd, const void *key, size_t klen, int err) {
  char k[256];
  cli_fmt_key(key, klen, k, sizeof k);
  if (err == KVDS_E_NOTFOUND)
    cli_err(cmd, "key '%s' not found", k);
  else
    cli_err(cmd, "key '%s': %s", k, kvds_strerror(err));
}

static int check_key(const char *cmd, const char *key) {
  size_t n = strlen(key);
  if (n >= 1 && n <= KVDS_KEY_MAX)
    return CLI_OK;
  cli_err(cmd, "a key must be 1..%d bytes (got %zu)", KVDS_KEY_MAX, n);
  return CLI_USAGE;
}

/* Checks the positional argument count (min..max); `want` names them. */
static int want_args(const char *cmd, int have, int min, int max,
                     const char *want) {
  if (have >= min && have <= max)
    return CLI_OK;
  cli_err(cmd, "%s: expected %s (see kvds help %s)",
          have < min ? "missing argument" : "too many arguments", want, cmd);
  return CLI_USAGE;
}

/* ---- put ---------------------------------------------------------------- */

static const char PUT_HELP[] =
    "usage: kvds put KEY FILE|- [options]\n"
    "\n"
    "Stores the bytes of FILE (or stdin for '-') under KEY. The key is taken\n"
    "as the argument's bytes. Keys are write-once: putting an existing key\n"
    "fails unless --force is given. A regular file is read straight into\n"
    "the new object; a stream (stdin, a pipe) is read up to the worker's\n"
    "pool size and refused beyond it.\n"
    "\n" WORKER_OPT_HELP
    "  -f, --force         replace an existing key (delete, then put)\n"
    "  -h, --help          this text\n";

/* Reads all of a regular file of `size` bytes into a new object (the pool
 * itself on a local client, the client's staging buffer over TCP) and
 * seals it: the file is never held twice. */
static int put_file(kvds_client *cl, const char *key, size_t klen, int fd,
                    size_t size, const char *file) {
  struct kvds_wbuf b;
  int rc = kvds_create(cl, key, klen, size, &b);
  if (rc)
    return rc;
  size_t off = 0;
  while (off < size) {
    ssize_t r = read(fd, (uint8_t *)b.data + off, size - off);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r < 0)
        cli_err("put", "cannot read %s: %s", file, strerror(errno));
      else
        cli_err("put", "%s shrank while it was read (%zu of %zu bytes)", file,
                off, size);
      kvds_abort(cl, &b);
      return 1; /* said */
    }
    off += (size_t)r;
  }
  rc = kvds_seal(cl, &b);
  if (rc && b.handle)
    kvds_abort(cl, &b);
  return rc;
}

int cmd_put(int argc, char **argv) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"force", no_argument, NULL, 'f'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *addr = NULL;
  int c, first = 1, force = 0;
  while ((c = cli_getopt("put", argc, argv, "w:fh", lo, &first)) != -1) {
    switch (c) {
    case 'w':
      addr = optarg;
      break;
    case 'f':
      force = 1;
      break;
    case 'h':
      fputs(PUT_HELP, stdout);
      return CLI_OK;
    default:
      return CLI_USAGE;
    }
  }
  if (want_args("put", argc - optind, 2, 2, "KEY FILE|-") ||
      check_key("put", argv[optind]))
    return CLI_USAGE;
  const char *key = argv[optind], *file = argv[optind + 1];
  size_t klen = strlen(key);
  int is_stdin = strcmp(file, "-") == 0;
  const char *name = is_stdin ? "stdin" : file;

  int fd = is_stdin ? STDIN_FILENO : open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    cli_err("put", "cannot open %s: %s", file, strerror(errno));
    return CLI_FAIL;
  }
  uint8_t *val = NULL;
  size_t vlen = 0;
  kvds_client *cl = NULL;
  int ret = cli_connect("put", cli_worker_addr(addr), KVDS_CONNECT_LAZY_MAP,
                        &cl, NULL, 0);
  if (ret)
    goto out;
  ret = CLI_FAIL;
  /* Nothing larger than the worker's pool can be stored: a stream (a pipe,
   * /dev/zero) is read up to that much and no further. */
  struct kvds_stats st;
  int rc = kvds_stats(cl, &st);
  if (rc) {
    cli_err("put", "cannot ask the worker its pool size: %s",
            kvds_strerror(rc));
    goto out;
  }
  uint64_t cap = st.pool_capacity;
  struct stat sb;
  int regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
  if (regular) {
    vlen = (size_t)sb.st_size;
    if ((uint64_t)sb.st_size > cap) {
      cli_err("put",
              "%s is %llu bytes, more than the worker's pool can hold "
              "(%llu bytes); nothing was stored",
              file, (unsigned long long)sb.st_size, (unsigned long long)cap);
      goto out;
    }
  } else {
    rc = cli_read_capped(fd, cap, &val, &vlen);
    if (rc == KVDS_E_TOOBIG) {
      cli_err("put",
              "%s holds more than the worker's pool can hold (%llu "
              "bytes); stopped reading, nothing was stored",
              name, (unsigned long long)cap);
      goto out;
    }
    if (rc) {
      cli_err("put", "cannot read %s: %s", name, kvds_strerror(rc));
      goto out;
    }
  }
  if (vlen == 0) {
    cli_err("put", "%s is empty; empty values are not supported", name);
    goto out;
  }
  for (int again = force;; again = 0) {
    rc = regular ? put_file(cl, key, klen, fd, vlen, file)
                 : kvds_put(cl, key, klen, val, vlen);
    if (rc != KVDS_E_EXISTS || !again)
      break;
    rc = kvds_delete(cl, key, klen);
    if (rc && rc != KVDS_E_NOTFOUND)
      break;
  }
  if (rc == 1) {
    /* put_file said what went wrong */
  } else if (rc == KVDS_E_EXISTS) {
    char k[256];
    cli_err("put", "key '%s' already exists (use --force to replace it)",
            cli_fmt_key(key, klen, k, sizeof k));
  } else if (rc) {
    key_err("put", key, klen, rc);
  } else {
    ret = CLI_OK;
  }
out:
  kvds_client_close(cl);
  if (!is_stdin)
    close(fd);
  free(val);
  return ret;
}

/* ---- get ---------------------------------------------------------------- */

static const char GET_HELP[] =
    "usage: kvds get KEY [options]\n"
    "\n"
    "Writes the value of KEY to stdout (or FILE), after checking it against\n"
    "the checksum stored at seal. Fails if the key is absent.\n"
    "\n" WORKER_OPT_HELP
    "  -o, --output FILE   write the value to FILE instead of stdout\n"
    "      --wait MS       wait up to MS ms for a key that is absent or still\n"
    "                      being written (default 0: do not wait)\n"
    "      --hint WORKER   in a cluster: pull the key from this worker "
    "(member\n"
    "                      id or data address) instead of asking its home\n"
    "      --local         read this worker's own copy only (no cluster)\n"
    "  -h, --help          this text\n"
    "\n"
    "In a cluster a key this worker lacks is found through the directory and\n"
    "copied here first (a replica), then written out.\n";

static int write_value(const char *out, const struct kvds_value *v) {
  int fd = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)
               : STDOUT_FILENO;
  if (fd < 0) {
    cli_err("get", "cannot open %s: %s", out, strerror(errno));
    return CLI_FAIL;
  }
  int rc = cli_write_all(fd, v->data, v->len);
  if (out && close(fd) < 0 && rc == 0)
    rc = -errno;
  if (rc == -EPIPE && !out)
    return CLI_FAIL; /* the reader went away: nothing useful to say */
  if (rc) {
    cli_err("get", "cannot write %s: %s", out ? out : "stdout",
            kvds_strerror(rc));
    if (out)
      unlink(out);
    return CLI_FAIL;
  }
  return CLI_OK;
}

int cmd_get(int argc, char **argv) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"output", required_argument, NULL, 'o'},
                                     {"wait", required_argument, NULL, 'W'},
                                     {"hint", required_argument, NULL, 'H'},
                                     {"local", no_argument, NULL, 'L'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *addr = NULL, *out = NULL;
  struct kvds_get_opts opts = {0};
  uint64_t wait_ms = 0;
  int c, first = 1;
  while ((c = cli_getopt("get", argc, argv, "w:o:h", lo, &first)) != -1) {
    switch (c) {
    case 'w':
      addr = optarg;
      break;
    case 'o':
      out = optarg;
      break;
    case 'W':
      if (cli_parse_u64_opt("get", "--wait", optarg, &wait_ms))
        return CLI_USAGE;
      if (wait_ms > 86400000u) {
        cli_err("get", "--wait %s is more than a day", optarg);
        return CLI_USAGE;
      }
      break;
    case 'H':
      opts.hint = optarg;
      break;
    case 'L':
      opts.flags |= KVDS_GET_LOCAL;
      break;
    case 'h':
      fputs(GET_HELP, stdout);
      return CLI_OK;
    default:
      return CLI_USAGE;
    }
  }
  if (want_args("get", argc - optind, 1, 1, "KEY") ||
      check_key("get", argv[optind]))
    return CLI_USAGE;
  const char *key = argv[optind];
  size_t klen = strlen(key);

  kvds_client *cl;
  if (cli_connect("get", cli_worker_addr(addr), KVDS_CONNECT_LAZY_MAP, &cl,
                  NULL, 0))
    return CLI_FAIL;
  /* The waiting call must outlive its wait. */
  kvds_client_set_timeout(cl, CLI_TIMEOUT_MS + (int)wait_ms);
  struct kvds_iov k = {(void *)key, klen};
  struct kvds_value v = {0};
  int res = 0, ret = CLI_FAIL;
  opts.wait_ms = (int)wait_ms;
  int rc = kvds_mget_ex(cl, 1, &k, &opts, &v, &res);
  if (rc == 0)
    rc = res;
  if (rc == KVDS_E_TIMEOUT) {
    char kb[256];
    if (wait_ms)
      cli_err("get", "key '%s' not found after waiting %llu ms",
              cli_fmt_key(key, klen, kb, sizeof kb),
              (unsigned long long)wait_ms);
    else /* no wait asked: a cluster pull ran out of time */
      cli_err("get",
              "key '%s': deadline exceeded (the worker could not copy it "
              "from a peer within its --pull-timeout-ms)",
              cli_fmt_key(key, klen, kb, sizeof kb));
    goto out;
  }
  if (rc) {
    key_err("get", key, klen, rc);
    goto out;
  }
  uint64_t sum = kvds_checksum(v.data, v.len);
  if (sum != v.checksum) {
    char kb[256];
    cli_err("get",
            "key '%s': checksum mismatch (stored %016llx, data %016llx); "
            "value not written",
            cli_fmt_key(key, klen, kb, sizeof kb),
            (unsigned long long)v.checksum, (unsigned long long)sum);
  } else {
    ret = write_value(out, &v);
  }
  kvds_release(cl, 1, &v);
out:
  kvds_client_close(cl);
  return ret;
}

/* ---- ls ----------------------------------------------------------------- */

static const char LS_HELP[] =
    "usage: kvds ls [PREFIX] [options]\n"
    "\n"
    "Lists keys in byte order, one per line: size in bytes, state (sealed or\n"
    "writing), key (non-printable bytes shown as \\xNN).\n"
    "\n" WORKER_OPT_HELP
    "  -n, --limit N       list at most N keys (default 1000; 0 = all)\n"
    "  -c, --cluster       list the keys of every live worker of the\n"
    "                      cluster, each with the workers that hold it\n"
    "  -h, --help          this text\n";

static const char *state_name(int state) {
  return state == KVDS_STATE_SEALED    ? "sealed"
         : state == KVDS_STATE_WRITING ? "writing"
                                       : "?";
}

/* One key of one worker, for ls --cluster. */
struct ls_ent {
  uint8_t *key;
  size_t klen, size;
  int state;
  size_t member;
};

static int ls_ent_cmp(const void *a, const void *b) {
  const struct ls_ent *x = a, *y = b;
  size_t m = x->klen < y->klen ? x->klen : y->klen;
  int r = memcmp(x->key, y->key, m);
  if (r)
    return r;
  if (x->klen != y->klen)
    return x->klen < y->klen ? -1 : 1;
  return x->member < y->member ? -1 : x->member > y->member;
}

/* Calls fn for up to `limit` (0 = all) keys under prefix, in byte order,
 * a page at a time. *more (may be NULL) says whether keys were left over.
 * Returns 0, kvds_list's error or fn's non-zero return. */
static int ls_each(kvds_client *cl, const char *prefix, size_t plen,
                   uint64_t limit,
                   int (*fn)(const struct kvds_list_entry *e, void *ud),
                   void *ud, int *more) {
  uint8_t after[KVDS_KEY_MAX];
  size_t alen = 0;
  uint64_t got = 0;
  int left = 1, rc = 0;
  while (!rc && left && (limit == 0 || got < limit)) {
    uint64_t page = limit == 0 || limit - got > 1000 ? 1000 : limit - got;
    struct kvds_list *l;
    if ((rc = kvds_list(cl, prefix, plen, alen ? after : NULL, alen,
                        (size_t)page, &l)))
      break;
    for (size_t i = 0; !rc && i < l->n; i++)
      rc = fn(&l->entries[i], ud);
    got += l->n;
    left = l->more && l->n > 0;
    if (l->n > 0) {
      const struct kvds_list_entry *e = &l->entries[l->n - 1];
      alen = e->klen <= sizeof after ? e->klen : sizeof after;
      memcpy(after, e->key, alen);
    }
    kvds_list_free(l);
  }
  if (more)
    *more = left;
  return rc;
}

/* Keys of several workers, for ls --cluster. */
struct ls_set {
  struct ls_ent *v;
  size_t n, cap;
  size_t member; /* the worker being listed */
};

static int ls_collect(const struct kvds_list_entry *e, void *ud) {
  struct ls_set *ls = ud;
  if (KVDS_ARRAY_GROW(ls->v, ls->cap, ls->n + 1, 256))
    return -ENOMEM;
  struct ls_ent *d = &ls->v[ls->n];
  if (!(d->key = malloc(e->klen ? e->klen : 1)))
    return -ENOMEM;
  memcpy(d->key, e->key, e->klen);
  d->klen = e->klen;
  d->size = e->info.size;
  d->state = e->info.state;
  d->member = ls->member;
  ls->n++;
  return 0;
}

static int ls_print(const struct kvds_list_entry *e, void *ud) {
  (void)ud;
  printf("%12zu  %-7s  ", e->info.size, state_name(e->info.state));
  cli_print_key(stdout, e->key, e->klen);
  putchar('\n');
  return 0;
}

/* ls --cluster: every live member's keys, merged, with their holders. */
static int ls_cluster(kvds_client *cl, const char *prefix, size_t plen,
                      uint64_t limit) {
  char *js = NULL;
  int rc = kvds_cluster_status(cl, &js);
  if (rc) {
    cli_err("ls", "cannot read the cluster view: %s", kvds_strerror(rc));
    return CLI_FAIL;
  }
  json_t *root = json_loads(js, 0, NULL);
  free(js);
  json_t *members = json_object_get(root, "members");
  struct ls_set ls = {0};
  size_t i;
  int ret = CLI_OK;
  json_t *m;
  json_array_foreach(members, i, m) {
    const char *id = json_string_value(json_object_get(m, "id"));
    const char *ad = json_string_value(json_object_get(m, "addr"));
    const char *st = json_string_value(json_object_get(m, "state"));
    int self = json_is_true(json_object_get(m, "self"));
    if (!id || !ad || (st && strcmp(st, "stale") == 0))
      continue;
    kvds_client *mc = cl;
    if (!self && cli_connect("ls", ad, KVDS_CONNECT_LAZY_MAP, &mc, NULL, 0)) {
      ret = CLI_FAIL; /* said why; list the others */
      continue;
    }
    ls.member = i;
    rc = ls_each(mc, prefix, plen, limit, ls_collect, &ls, NULL);
    if (rc) {
      cli_err("ls", "listing %s failed: %s", id, kvds_strerror(rc));
      ret = CLI_FAIL;
    }
    if (mc != cl)
      kvds_client_close(mc);
  }
  struct ls_ent *v = ls.v;
  size_t n = ls.n;
  qsort(v, n, sizeof *v, ls_ent_cmp);
  uint64_t shown = 0;
  for (size_t k = 0; k < n && (limit == 0 || shown < limit); shown++) {
    size_t e = k;
    while (e < n && v[e].klen == v[k].klen &&
           memcmp(v[e].key, v[k].key, v[k].klen) == 0)
      e++;
    printf("%12zu  %-7s  ", v[k].size, state_name(v[k].state));
    cli_print_key(stdout, v[k].key, v[k].klen);
    printf("  on ");
    for (size_t h = k; h < e; h++)
      printf("%s%s", h > k ? "," : "",
             json_string_value(
                 json_object_get(json_array_get(members, v[h].member), "id")));
    putchar('\n');
    k = e;
  }
  for (size_t k = 0; k < n; k++)
    free(v[k].key);
  free(v);
  json_decref(root);
  return ret;
}

int cmd_ls(int argc, char **argv) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"limit", required_argument, NULL, 'n'},
                                     {"cluster", no_argument, NULL, 'c'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *addr = NULL;
  uint64_t limit = 1000;
  int c, first = 1, cluster = 0;
  while ((c = cli_getopt("ls", argc, argv, "w:n:ch", lo, &first)) != -1) {
    switch (c) {
    case 'w':
      addr = optarg;
      break;
    case 'c':
      cluster = 1;
      break;
    case 'n':
      if (cli_parse_u64_opt("ls", "--limit", optarg, &limit))
        return CLI_USAGE;
      break;
    case 'h':
      fputs(LS_HELP, stdout);
      return CLI_OK;
    default:
      return CLI_USAGE;
    }
  }
  if (want_args("ls", argc - optind, 0, 1, "[PREFIX]"))
    return CLI_USAGE;
  const char *prefix = optind < argc ? argv[optind] : "";
  size_t plen = strlen(prefix);
  if (plen > KVDS_KEY_MAX) {
    cli_err("ls", "prefix longer than %d bytes", KVDS_KEY_MAX);
    return CLI_USAGE;
  }

  kvds_client *cl;
  if (cli_connect("ls", cli_worker_addr(addr), KVDS_CONNECT_LAZY_MAP, &cl, NULL,
                  0))
    return CLI_FAIL;
  if (cluster) {
    int r = ls_cluster(cl, prefix, plen, limit);
    kvds_client_close(cl);
    if (fflush(stdout) != 0)
      r = CLI_FAIL;
    return r;
  }
  int more = 0, ret = CLI_OK;
  int rc = ls_each(cl, prefix, plen, limit, ls_print, NULL, &more);
  if (rc) {
    cli_err("ls", "list failed: %s", kvds_strerror(rc));
    ret = CLI_FAIL;
  }
  if (ret == CLI_OK && more) /* only a limit leaves keys over */
    fprintf(stderr,
            "kvds ls: stopped after %llu keys; more match (use --limit 0 for "
            "all)\n",
            (unsigned long long)limit);
  kvds_client_close(cl);
  if (fflush(stdout) != 0 && ret == CLI_OK)
    ret = CLI_FAIL;
  return ret;
}

/* ---- stat --------------------------------------------------------------- */

static const char STAT_HELP[] =
    "usage: kvds stat KEY [options]\n"
    "\n"
    "Shows one key's size, state, checksum (xxh3-64), pins, and creation and\n"
    "last-access times (UTC), and, in a cluster, every worker that holds it\n"
    "(from its home's directory; also for a key this worker does not hold).\n"
    "\n" WORKER_OPT_HELP "  -h, --help          this text\n";

static void print_locations(const struct kvds_location *loc, size_t n) {
  printf("locations %zu:", n);
  for (size_t i = 0; i < n; i++)
    printf("%s %s (epoch %llu)", i ? "," : "", loc[i].id,
           (unsigned long long)loc[i].epoch);
  putchar('\n');
}

int cmd_stat(int argc, char **argv) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *addr = NULL;
  int c, first = 1;
  while ((c = cli_getopt("stat", argc, argv, "w:h", lo, &first)) != -1) {
    if (c == 'w') {
      addr = optarg;
    } else if (c == 'h') {
      fputs(STAT_HELP, stdout);
      return CLI_OK;
    } else {
      return CLI_USAGE;
    }
  }
  if (want_args("stat", argc - optind, 1, 1, "KEY") ||
      check_key("stat", argv[optind]))
    return CLI_USAGE;
  const char *key = argv[optind];
  size_t klen = strlen(key);
  kvds_client *cl;
  if (cli_connect("stat", cli_worker_addr(addr), KVDS_CONNECT_LAZY_MAP, &cl,
                  NULL, 0))
    return CLI_FAIL;
  struct kvds_object_info info;
  int rc = kvds_stat(cl, key, klen, &info);
  struct kvds_location *loc = NULL;
  size_t nloc = 0;
  int lrc = rc == 0 || rc == KVDS_E_NOTFOUND
                ? kvds_locate(cl, key, klen, &loc, &nloc)
                : rc;
  kvds_client_close(cl);
  if (rc == KVDS_E_NOTFOUND && lrc == 0 && nloc) {
    printf("key       ");
    cli_print_key(stdout, key, klen);
    printf("\nhere      no (this worker holds no copy)\n");
    print_locations(loc, nloc);
    free(loc);
    return CLI_OK;
  }
  if (rc) {
    free(loc);
    key_err("stat", key, klen, rc);
    return CLI_FAIL;
  }
  char hb[32], ct[40], at[40];
  printf("key       ");
  cli_print_key(stdout, key, klen);
  printf("\nsize      %zu (%s)\n", info.size,
         kvds_fmt_bytes(info.size, hb, sizeof hb));
  printf("state     %s\n", state_name(info.state));
  if (info.state == KVDS_STATE_SEALED)
    printf("checksum  %016llx (xxh3-64)\n", (unsigned long long)info.checksum);
  else
    printf("checksum  - (not sealed yet)\n");
  printf("pins      %u\n", info.pins);
  printf("created   %s\n", cli_fmt_time_us(info.ctime_us, ct, sizeof ct));
  printf("accessed  %s\n", cli_fmt_time_us(info.atime_us, at, sizeof at));
  if (lrc == 0)
    print_locations(loc, nloc);
  else if (lrc != KVDS_E_BADOP)
    printf("locations ? (%s)\n", kvds_strerror(lrc));
  free(loc);
  return CLI_OK;
}

/* ---- rm ----------------------------------------------------------------- */

static const char RM_HELP[] =
    "usage: kvds rm KEY... [options]\n"
    "\n"
    "Deletes keys. A pinned object leaves the index at once; its memory is\n"
    "freed when the last reader releases it. Fails if any key is absent.\n"
    "\n" WORKER_OPT_HELP "  -h, --help          this text\n";

int cmd_rm(int argc, char **argv) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *addr = NULL;
  int c, first = 1;
  while ((c = cli_getopt("rm", argc, argv, "w:h", lo, &first)) != -1) {
    if (c == 'w') {
      addr = optarg;
    } else if (c == 'h') {
      fputs(RM_HELP, stdout);
      return CLI_OK;
    } else {
      return CLI_USAGE;
    }
  }
  if (want_args("rm", argc - optind, 1, INT32_MAX, "KEY..."))
    return CLI_USAGE;
  for (int i = optind; i < argc; i++)
    if (check_key("rm", argv[i]))
      return CLI_USAGE;
  kvds_client *cl;
  if (cli_connect("rm", cli_worker_addr(addr), KVDS_CONNECT_LAZY_MAP, &cl, NULL,
                  0))
    return CLI_FAIL;
  int ret = CLI_OK;
  for (int i = optind; i < argc; i++) {
    int rc = kvds_delete(cl, argv[i], strlen(argv[i]));
    if (rc) {
      key_err("rm", argv[i], strlen(argv[i]), rc);
      ret = CLI_FAIL;
      if (rc != KVDS_E_NOTFOUND)
        break; /* a connection-level error: the rest would fail too */
    }
  }
  kvds_client_close(cl);
  return ret;
}

/* ---- status ------------------------------------------------------------- */

static const char STATUS_HELP[] =
    "usage: kvds status [options]\n"
    "\n"
    "Shows the worker's pool use, objects, hit/miss and eviction counters,\n"
    "connections, uptime, pid and eviction watermarks, and its view of the\n"
    "cluster: the mode, etcd's state and every member (peer) with its\n"
    "state (self, up, stale: last seen before etcd became unreachable, or\n"
    "static), address, pool size and uptime.\n"
    "\n" WORKER_OPT_HELP
    "      --json          print one JSON object (raw numbers, bytes)\n"
    "  -h, --help          this text\n";

static void fmt_uptime(uint64_t s, char *buf, size_t cap) {
  if (s >= 86400)
    snprintf(buf, cap, "%llud %lluh %llum", (unsigned long long)(s / 86400),
             (unsigned long long)(s % 86400 / 3600),
             (unsigned long long)(s % 3600 / 60));
  else if (s >= 3600)
    snprintf(buf, cap, "%lluh %llum %llus", (unsigned long long)(s / 3600),
             (unsigned long long)(s % 3600 / 60), (unsigned long long)(s % 60));
  else
    snprintf(buf, cap, "%llum %llus", (unsigned long long)(s / 60),
             (unsigned long long)(s % 60));
}

static double pct(uint64_t a, uint64_t b) {
  return b ? 100.0 * (double)a / (double)b : 0.0;
}

static void print_status(const char *addr, const char *via,
                         const struct kvds_stats *s) {
  char cap[32], used[32], fr[32], big[32], ev[32], up[48];
  double high = (double)s->high_watermark_ppm / 1e6;
  double ratio = (double)s->eviction_ratio_ppm / 1e6;
  fmt_uptime(s->uptime_s, up, sizeof up);
  printf("worker       %s (pid %llu, up %s, via %s)\n", addr,
         (unsigned long long)s->pid, up, via);
  printf("pool         %s capacity, %s used (%.1f%%), %s free, largest free "
         "extent %s\n",
         kvds_fmt_bytes(s->pool_capacity, cap, sizeof cap),
         kvds_fmt_bytes(s->pool_used, used, sizeof used),
         pct(s->pool_used, s->pool_capacity),
         kvds_fmt_bytes(s->pool_free, fr, sizeof fr),
         kvds_fmt_bytes(s->pool_largest_free, big, sizeof big));
  printf("objects      %llu (%llu writing, %llu pinned)\n",
         (unsigned long long)s->objects, (unsigned long long)s->objects_writing,
         (unsigned long long)s->pinned_objects);
  printf("gets         %llu hits, %llu misses (%.1f%% hit rate)\n",
         (unsigned long long)s->hits, (unsigned long long)s->misses,
         pct(s->hits, s->hits + s->misses));
  printf("puts         %llu sealed, %llu refused for space\n",
         (unsigned long long)s->puts, (unsigned long long)s->nospace);
  printf("evictions    %llu objects, %s\n", (unsigned long long)s->evictions,
         kvds_fmt_bytes(s->evicted_bytes, ev, sizeof ev));
  if (s->disk_policy) {
    static const char *const pol[] = {"", "spill", "write-through",
                                      "read-only"};
    char db[32], dc[32] = "no limit", wb[32], rb[32];
    if (s->disk_capacity)
      kvds_fmt_bytes(s->disk_capacity, dc, sizeof dc);
    printf("disk         %s, %llu objects, %s of %s; %llu written (%s), "
           "%llu read back (%s); %llu spills, %llu evicted unspilled; "
           "%llu write errors, %llu corrupt, %llu evicted for capacity\n",
           s->disk_policy < 4 ? pol[s->disk_policy] : "?",
           (unsigned long long)s->disk_objects,
           kvds_fmt_bytes(s->disk_bytes, db, sizeof db), dc,
           (unsigned long long)s->disk_writes,
           kvds_fmt_bytes(s->disk_write_bytes, wb, sizeof wb),
           (unsigned long long)s->disk_reads,
           kvds_fmt_bytes(s->disk_read_bytes, rb, sizeof rb),
           (unsigned long long)s->disk_spills,
           (unsigned long long)s->disk_spill_skipped,
           (unsigned long long)s->disk_write_errors,
           (unsigned long long)s->disk_corrupt,
           (unsigned long long)s->disk_evictions);
  }
  printf("connections  %llu open, %llu protocol errors\n",
         (unsigned long long)s->connections,
         (unsigned long long)s->protocol_errors);
  printf("watermarks   evict above %.3f of capacity, down to %.3f "
         "(ratio %.3f)\n",
         high, high - ratio, ratio);
}

/* The cluster part of `kvds status`: mode, etcd state and one line per
 * member. cluster is the CLUSTER reply, parsed (NULL: not available). */
static void print_cluster(json_t *cluster) {
  if (!json_is_object(cluster))
    return;
  const char *mode = json_string_value(json_object_get(cluster, "mode"));
  const char *name = json_string_value(json_object_get(cluster, "name"));
  json_t *members = json_object_get(cluster, "members");
  json_t *etcd = json_object_get(cluster, "etcd");
  printf("cluster      %s, %s mode, %zu member%s", name ? name : "?",
         mode ? mode : "?", json_array_size(members),
         json_array_size(members) == 1 ? "" : "s");
  if (json_is_object(etcd)) {
    const char *st = json_string_value(json_object_get(etcd, "state"));
    const char *eps = json_string_value(json_object_get(etcd, "endpoints"));
    printf(" (etcd %s %s, lease TTL %lld s)", eps ? eps : "?", st ? st : "?",
           (long long)json_integer_value(json_object_get(etcd, "lease_ttl_s")));
  }
  putchar('\n');
  size_t i;
  json_t *mb;
  json_array_foreach(members, i, mb) {
    char cap[32] = "-", age[48] = "-";
    uint64_t c = (uint64_t)json_integer_value(json_object_get(mb, "capacity"));
    if (c)
      kvds_fmt_bytes(c, cap, sizeof cap);
    if (json_integer_value(json_object_get(mb, "epoch")) > 0)
      fmt_uptime((uint64_t)json_integer_value(json_object_get(mb, "age_s")),
                 age, sizeof age);
    const char *id = json_string_value(json_object_get(mb, "id"));
    const char *ad = json_string_value(json_object_get(mb, "addr"));
    const char *st = json_string_value(json_object_get(mb, "state"));
    printf("  peer       %-24s %-6s addr %s, %s pool, up %s", id ? id : "?",
           st ? st : "?", ad ? ad : "?", cap, age);
    json_t *bi = json_object_get(mb, "bytes_in");
    if (json_is_integer(bi)) { /* transfers with this peer */
      char in[32], out[32];
      printf(", pulled %s, served %s, %lld pulls (%lld failed)",
             kvds_fmt_bytes((uint64_t)json_integer_value(bi), in, sizeof in),
             kvds_fmt_bytes(
                 (uint64_t)json_integer_value(json_object_get(mb, "bytes_out")),
                 out, sizeof out),
             (long long)json_integer_value(json_object_get(mb, "pulls")),
             (long long)json_integer_value(json_object_get(mb, "pull_errors")));
      const char *tr = json_string_value(json_object_get(mb, "transport"));
      const char *ln = json_string_value(json_object_get(mb, "ucx_lanes"));
      long long uin = json_integer_value(json_object_get(mb, "ucx_in"));
      long long uerr = json_integer_value(json_object_get(mb, "ucx_errors"));
      if (tr && (!strcmp(tr, "ucx") || uin || uerr))
        printf("; read over %s%s%s%s, %lld objects over UCX (%lld endpoint "
               "errors)",
               tr, ln && *ln ? " (" : "", ln && *ln ? ln : "",
               ln && *ln ? ")" : "", uin, uerr);
    }
    putchar('\n');
  }
  json_t *tr = json_object_get(cluster, "transport");
  if (json_is_object(tr)) {
    const char *reads = json_string_value(json_object_get(tr, "reads"));
    const char *why = json_string_value(json_object_get(tr, "why"));
    printf("transport    peers' pools read over %s (%s)\n", reads ? reads : "?",
           why ? why : "?");
  }
  json_t *dir = json_object_get(cluster, "directory");
  if (json_is_object(dir)) {
    printf(
        "directory    %lld keys homed here, %lld locations; %lld reads "
        "served by peers, %lld not found anywhere\n",
        (long long)json_integer_value(json_object_get(dir, "keys")),
        (long long)json_integer_value(json_object_get(dir, "locations")),
        (long long)json_integer_value(json_object_get(dir, "remote_found")),
        (long long)json_integer_value(json_object_get(dir, "remote_missed")));
  }
  json_t *rep = json_object_get(cluster, "replicas");
  long long copies =
      (long long)json_integer_value(json_object_get(rep, "copies"));
  if (json_is_object(rep) && copies > 1)
    printf("replicas     %lld copies of each object sealed here: %lld made, "
           "%lld failed (tried again), %lld queued, %lld skipped, %lld "
           "given up\n",
           copies, (long long)json_integer_value(json_object_get(rep, "made")),
           (long long)json_integer_value(json_object_get(rep, "failed")),
           (long long)json_integer_value(json_object_get(rep, "queued")),
           (long long)json_integer_value(json_object_get(rep, "skipped")),
           (long long)json_integer_value(json_object_get(rep, "gave_up")));
}

static int print_status_json(const char *addr, const char *via,
                             const struct kvds_stats *s, json_t *cluster) {
  json_t *o = json_object();
#define U(name, v) json_object_set_new(o, name, json_integer((json_int_t)(v)))
  json_object_set_new(o, "address", json_string(addr));
  json_object_set_new(o, "via", json_string(via));
  /* every counter of struct kvds_stats, by its name */
#define KVDS__STATS_JSON(name, doc) U(#name, s->name);
  KVDS_STATS_FIELDS(KVDS__STATS_JSON)
#undef KVDS__STATS_JSON
#undef U
  json_object_set_new(o, "high_watermark",
                      json_real((double)s->high_watermark_ppm / 1e6));
  json_object_set_new(o, "eviction_ratio",
                      json_real((double)s->eviction_ratio_ppm / 1e6));
  if (cluster)
    json_object_set(o, "cluster", cluster);
  int rc = json_dumpf(
      o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
  putchar('\n');
  json_decref(o);
  return rc ? CLI_FAIL : CLI_OK;
}

int cmd_status(int argc, char **argv) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"json", no_argument, NULL, 'j'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *addr = NULL;
  int c, first = 1, json = 0;
  while ((c = cli_getopt("status", argc, argv, "w:h", lo, &first)) != -1) {
    if (c == 'w') {
      addr = optarg;
    } else if (c == 'j') {
      json = 1;
    } else if (c == 'h') {
      fputs(STATUS_HELP, stdout);
      return CLI_OK;
    } else {
      return CLI_USAGE;
    }
  }
  if (want_args("status", argc - optind, 0, 0, "no arguments"))
    return CLI_USAGE;
  addr = cli_worker_addr(addr);
  kvds_client *cl;
  char via[300];
  if (cli_connect("status", addr, KVDS_CONNECT_LAZY_MAP, &cl, via, sizeof via))
    return CLI_FAIL;
  struct kvds_stats s;
  int rc = kvds_stats(cl, &s);
  if (rc) {
    kvds_client_close(cl);
    cli_err("status", "stats request to %s failed: %s", addr,
            kvds_strerror(rc));
    return CLI_FAIL;
  }
  /* The cluster view; a worker without the CLUSTER request (older) or a
   * failure here leaves it out rather than failing the whole status. */
  char *ctext = NULL;
  json_t *cluster = NULL;
  if (kvds_cluster_status(cl, &ctext) == 0)
    cluster = json_loads(ctext, 0, NULL);
  free(ctext);
  kvds_client_close(cl);
  if (json)
    rc = print_status_json(addr, via, &s, cluster);
  else {
    print_status(addr, via, &s);
    print_cluster(cluster);
    rc = CLI_OK;
  }
  json_decref(cluster);
  return rc;
}

/* ---- stop --------------------------------------------------------------- */

static const char STOP_HELP[] =
    "usage: kvds stop [options]\n"
    "\n"
    "Asks the worker to shut down cleanly and waits until it no longer\n"
    "answers (and, on this host, until its process has exited).\n"
    "\n" WORKER_OPT_HELP
    "      --timeout S     give up waiting after S seconds (default 30)\n"
    "  -h, --help          this text\n";

int cmd_stop(int argc, char **argv) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"timeout", required_argument, NULL, 'T'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *addr = NULL;
  double timeout_s = 30;
  int c, first = 1;
  while ((c = cli_getopt("stop", argc, argv, "w:h", lo, &first)) != -1) {
    if (c == 'w') {
      addr = optarg;
    } else if (c == 'T') {
      if (cli_parse_double_opt("stop", "--timeout", optarg, &timeout_s))
        return CLI_USAGE;
    } else if (c == 'h') {
      fputs(STOP_HELP, stdout);
      return CLI_OK;
    } else {
      return CLI_USAGE;
    }
  }
  if (want_args("stop", argc - optind, 0, 0, "no arguments"))
    return CLI_USAGE;
  addr = cli_worker_addr(addr);
  if (timeout_s > 86400)
    timeout_s = 86400;
  uint64_t pid = 0;
  int rc = cli_stop_worker(addr, (int)(timeout_s * 1000), &pid);
  if (rc == -ECONNREFUSED || rc == -ENOENT) {
    cli_err("stop", "no worker at %s (%s)", addr, kvds_strerror(rc));
    return CLI_FAIL;
  }
  if (rc == KVDS_E_TIMEOUT) {
    cli_err("stop", "worker at %s (pid %llu) still running after %.0f s", addr,
            (unsigned long long)pid, timeout_s);
    return CLI_FAIL;
  }
  if (rc) {
    cli_err("stop", "cannot stop worker at %s: %s", addr, kvds_strerror(rc));
    return CLI_FAIL;
  }
  printf("stopped worker at %s (pid %llu)\n", addr, (unsigned long long)pid);
  return CLI_OK;
}
