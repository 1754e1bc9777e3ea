/* worker_file.c — `kvds worker --config FILE`: a JSON object whose keys are
 * the worker's long options (either spelling, "disk-dir" or "disk_dir"),
 * plus the names UCM's PipelineStore configuration uses for the same
 * settings (docs/tiers.md "Configuration"). Each key becomes the option it
 * names, with the value as its argument, through the caller's setter: the
 * file is parsed by the same code as the command line. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *const CMD = "worker";

struct file_ctx {
  const char *path;
  const struct option *longopts;
  cli_option_fn set;
  void *arg;
  /* Options already set by the file: two keys for one option (e.g.
   * "disk-dir" and "storage_backends") are an error, not a silent pick. */
  const char *seen_key[128];
  int seen_val[128];
  int nseen;
};

static const char *type_name(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT:
    return "an object";
  case JSON_ARRAY:
    return "a list";
  case JSON_STRING:
    return "a string";
  case JSON_INTEGER:
  case JSON_REAL:
    return "a number";
  case JSON_TRUE:
  case JSON_FALSE:
    return "a boolean";
  default:
    return "null";
  }
}

static int key_err(const struct file_ctx *f, const char *key, const char *fmt,
                   const char *a, const char *b) {
  char msg[512];
  snprintf(msg, sizeof msg, fmt, a, b);
  cli_err(CMD, "--config %s: \"%s\": %s", f->path, key, msg);
  return CLI_USAGE;
}

/* The long option named `name`, or spelled with '-' and '_' swapped. */
static const struct option *find_opt(const struct option *opts,
                                     const char *name) {
  char alt[2][128];
  size_t n = strlen(name);
  if (n >= sizeof alt[0])
    return NULL;
  for (size_t i = 0; i <= n; i++) {
    alt[0][i] = name[i] == '_' ? '-' : name[i];
    alt[1][i] = name[i] == '-' ? '_' : name[i];
  }
  for (const struct option *o = opts; o->name; o++)
    if (strcmp(o->name, name) == 0 || strcmp(o->name, alt[0]) == 0 ||
        strcmp(o->name, alt[1]) == 0)
      return o;
  return NULL;
}

/* Sets option `name` to value (NULL for a flag) on behalf of `key`. */
static int set_opt(struct file_ctx *f, const char *key, const char *name,
                   const char *value) {
  const struct option *o = find_opt(f->longopts, name);
  if (!o)
    return key_err(f, key, "unknown key (see kvds help worker)", "", "");
  for (int i = 0; i < f->nseen; i++)
    if (f->seen_val[i] == o->val)
      return key_err(f, key, "sets --%s, as \"%s\" does: give one of them",
                     o->name, f->seen_key[i]);
  if (f->nseen < (int)(sizeof f->seen_val / sizeof f->seen_val[0])) {
    f->seen_key[f->nseen] = key;
    f->seen_val[f->nseen++] = o->val;
  }
  char who[1200];
  snprintf(who, sizeof who, "%s: --config %s: \"%s\"", CMD, f->path, key);
  return f->set(f->arg, o->val, value, who);
}

/* A plain key: the option it names, its value as that option's argument. */
static int apply_option(struct file_ctx *f, const char *key, json_t *v) {
  const struct option *o = find_opt(f->longopts, key);
  char num[64];
  const char *value = NULL;
  if (!o)
    return key_err(f, key, "unknown key (see kvds help worker)", "", "");
  if (o->has_arg == no_argument) {
    if (!json_is_boolean(v))
      return key_err(f, key, "want true or false (got %s)", type_name(v), "");
    return json_is_true(v) ? set_opt(f, key, key, NULL) : CLI_OK;
  }
  if (json_is_string(v))
    value = json_string_value(v);
  else if (json_is_integer(v))
    snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
  else if (json_is_real(v))
    snprintf(num, sizeof num, "%.17g", json_real_value(v));
  else
    return key_err(f, key, "want a string or a number (got %s)", type_name(v),
                   "");
  return set_opt(f, key, key, value ? value : num);
}

/* UCM "store_pipeline": the tier. */
static int ucm_pipeline(struct file_ctx *f, const char *key, json_t *v) {
  const char *s = json_string_value(v);
  if (!s)
    return key_err(f, key, "want a string (got %s)", type_name(v), "");
  if (strcmp(s, "Cache|Posix") == 0)
    return set_opt(f, key, "tier", "posix");
  if (strcmp(s, "Cache") == 0)
    return set_opt(f, key, "tier", "dram");
  return key_err(f, key,
                 "'%s' is not supported: kvds has \"Cache\" (memory only, "
                 "--tier dram) and \"Cache|Posix\" (memory, then files in "
                 "a directory, --tier posix)",
                 s, "");
}

/* UCM "storage_backends": the directory, a string or a list of one. */
static int ucm_backends(struct file_ctx *f, const char *key, json_t *v) {
  if (json_is_array(v)) {
    char n[32];
    snprintf(n, sizeof n, "%zu", json_array_size(v));
    if (json_array_size(v) != 1)
      return key_err(f, key,
                     "lists %s directories; the disk tier uses exactly one "
                     "(several workers may share it)",
                     n, "");
    v = json_array_get(v, 0);
  }
  const char *s = json_string_value(v);
  if (!s)
    return key_err(f, key, "want a directory, as a string (got %s)",
                   type_name(v), "");
  return set_opt(f, key, "disk-dir", s);
}

/* UCM "cache_buffer_capacity_gb": the pool, in GiB. */
static int ucm_capacity(struct file_ctx *f, const char *key, json_t *v) {
  if (!json_is_number(v))
    return key_err(f, key, "want a number of GiB (got %s)", type_name(v), "");
  double gib = json_number_value(v);
  if (!(gib > 0) || gib >= 16777216.0) /* 2^24 GiB = 2^54 bytes */
    return key_err(f, key, "want a number of GiB in (0, 16777216)", "", "");
  char bytes[32];
  snprintf(bytes, sizeof bytes, "%llu",
           (unsigned long long)llround(gib * 1073741824.0));
  return set_opt(f, key, "memory", bytes);
}

static int apply_key(struct file_ctx *f, const char *key, json_t *v) {
  static const struct {
    const char *key;
    int (*fn)(struct file_ctx *, const char *, json_t *);
  } ucm[] = {
      {"store_pipeline", ucm_pipeline},
      {"storage_backends", ucm_backends},
      {"cache_buffer_capacity_gb", ucm_capacity},
  };
  for (size_t i = 0; i < sizeof ucm / sizeof ucm[0]; i++)
    if (strcmp(key, ucm[i].key) == 0)
      return ucm[i].fn(f, key, v);
  if (strcmp(key, "ucm_connectors") == 0)
    return key_err(f, key,
                   "put the keys of its ucm_connector_config at the top "
                   "level (docs/tiers.md, Configuration)",
                   "", "");
  return apply_option(f, key, v);
}

int cli_worker_file_load(const char *path, const struct option *longopts,
                         cli_option_fn set, void *arg) {
  struct file_ctx f = {
      .path = path, .longopts = longopts, .set = set, .arg = arg};
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  int rc = CLI_OK;
  if (!root) {
    if (jerr.line > 0)
      cli_err(CMD, "--config %s: line %d, column %d: %s", path, jerr.line,
              jerr.column, jerr.text);
    else
      cli_err(CMD, "--config %s: %s", path, jerr.text);
    return CLI_USAGE;
  }
  if (!json_is_object(root)) {
    cli_err(CMD, "--config %s: want a JSON object of options (got %s)", path,
            type_name(root));
    rc = CLI_USAGE;
    goto out;
  }
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if ((rc = apply_key(&f, key, v)))
      goto out;
  }
out:
  json_decref(root);
  return rc;
}
