/* prompt.c — what the proxy reads in a request body: the checks and the
 * routing text of the prompt (internal.h). */
#include <event2/buffer.h>
#include <stdint.h>
#include <string.h>

#include "proxy/internal.h"

/* Appends the prompt's routing text: a string as is, token ids as 4-byte
 * values, chat messages as role and text parts in order. */
static void prompt_bytes(const json_t *v, struct evbuffer *out, int depth) {
  if (depth > 4 || !v)
    return;
  if (json_is_string(v)) {
    evbuffer_add(out, json_string_value(v), json_string_length(v));
  } else if (json_is_integer(v)) {
    uint32_t t = (uint32_t)json_integer_value(v);
    evbuffer_add(out, &t, sizeof t);
  } else if (json_is_array(v)) {
    /* A batch of prompts routes by its first one; a token list whole. */
    const json_t *first = json_array_get(v, 0);
    if (first && (json_is_string(first) || json_is_array(first))) {
      prompt_bytes(first, out, depth + 1);
      return;
    }
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e) prompt_bytes(e, out, depth + 1);
  }
}

static void chat_bytes(const json_t *msgs, struct evbuffer *out) {
  size_t i;
  const json_t *m;
  json_array_foreach(msgs, i, m) {
    const json_t *role = json_object_get(m, "role");
    const json_t *c = json_object_get(m, "content");
    if (json_is_string(role))
      evbuffer_add_printf(out, "<%s>", json_string_value(role));
    if (json_is_string(c)) {
      evbuffer_add(out, json_string_value(c), json_string_length(c));
    } else if (json_is_array(c)) {
      size_t j;
      const json_t *part;
      json_array_foreach(c, j, part) {
        const json_t *t = json_object_get(part, "text");
        if (json_is_string(t))
          evbuffer_add(out, json_string_value(t), json_string_length(t));
      }
    }
  }
}

size_t px_prompt_chain(const json_t *body, int chat, uint32_t block,
                       uint64_t *out, size_t cap) {
  struct evbuffer *b = evbuffer_new();
  if (!b)
    return 0;
  const json_t *p = json_object_get(body, "prompt");
  size_t bl = block;
  if (chat) {
    chat_bytes(json_object_get(body, "messages"), b);
  } else {
    prompt_bytes(p, b, 0);
    const json_t *first = json_array_get(p, 0);
    if (json_is_array(first)) /* a batch of token lists */
      first = json_array_get(first, 0);
    if (json_is_integer(first))
      bl *= 4; /* token ids: 4 bytes each */
  }
  size_t len = evbuffer_get_length(b);
  size_t n = kvds_route_chain(evbuffer_pullup(b, -1), len, bl, out, cap);
  evbuffer_free(b);
  return n;
}

const char *px_prompt_check(const json_t *body, int chat, const char **param) {
  if (!json_is_object(body))
    return "the body must be a JSON object";
  const json_t *model = json_object_get(body, "model");
  if (model && !json_is_string(model)) {
    *param = "model";
    return "'model' must be a string";
  }
  if (chat) {
    const json_t *m = json_object_get(body, "messages");
    *param = "messages";
    if (!m)
      return "'messages' is required";
    if (!json_is_array(m) || json_array_size(m) == 0)
      return "'messages' must be a non-empty array";
  } else {
    const json_t *p = json_object_get(body, "prompt");
    *param = "prompt";
    if (!p)
      return "'prompt' is required";
    if (!json_is_string(p) && !(json_is_array(p) && json_array_size(p) > 0))
      return "'prompt' must be a string or a non-empty array";
  }
  const json_t *s = json_object_get(body, "stream");
  if (s && !json_is_boolean(s) && !json_is_null(s)) {
    *param = "stream";
    return "'stream' must be a boolean";
  }
  *param = NULL;
  return NULL;
}
