/* The proxy's reading of request bodies: checks and routing chains. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "proxy/internal.h"

static json_t *parse(const char *s) {
  json_error_t e;
  json_t *j = json_loads(s, 0, &e);
  assert_non_null(j);
  return j;
}

static void test_check(void **state) {
  (void)state;
  const char *param = "x";
  json_t *j = parse("{\"model\":\"m\",\"prompt\":\"hi\"}");
  assert_null(px_prompt_check(j, 0, &param));
  assert_null(param);
  assert_non_null(px_prompt_check(j, 1, &param)); /* chat needs messages */
  assert_string_equal(param, "messages");
  json_decref(j);
  const char *bad[] = {"[1,2]", "{\"prompt\":[]}", "{\"prompt\":3}",
                       "{\"model\":1,\"prompt\":\"a\"}",
                       "{\"prompt\":\"a\",\"stream\":\"yes\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    j = parse(bad[i]);
    assert_non_null(px_prompt_check(j, 0, &param));
    json_decref(j);
  }
  j = parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
  assert_null(px_prompt_check(j, 1, &param));
  json_decref(j);
  j = parse("{\"prompt\":[1,2,3]}");
  assert_null(px_prompt_check(j, 0, &param));
  json_decref(j);
}

/* Prompts that share a prefix share the leading chain hashes, as strings,
 * token ids and chat messages alike. */
static void test_chain(void **state) {
  (void)state;
  uint64_t a[64], b[64];
  char s1[600], s2[600];
  memset(s1, 'a', 400);
  s1[400] = 0;
  memcpy(s2, s1, 401);
  memset(s2 + 200, 'b', 200);
  char j1[700], j2[700];
  snprintf(j1, sizeof j1, "{\"prompt\":\"%s\"}", s1);
  snprintf(j2, sizeof j2, "{\"prompt\":\"%s\"}", s2);
  json_t *x = parse(j1), *y = parse(j2);
  size_t na = px_prompt_chain(x, 0, 100, a, 64);
  size_t nb = px_prompt_chain(y, 0, 100, b, 64);
  assert_int_equal(na, 4);
  assert_int_equal(nb, 4);
  assert_true(a[0] == b[0] && a[1] == b[1] && a[2] != b[2]);
  json_decref(x);
  json_decref(y);

  x = parse("{\"prompt\":[1,2,3,4,5,6,7]}");
  y = parse("{\"prompt\":[1,2,3,4,9,9,9]}");
  na = px_prompt_chain(x, 0, 2, a, 64); /* blocks of 2 token ids */
  nb = px_prompt_chain(y, 0, 2, b, 64);
  assert_int_equal(na, 4);
  assert_true(a[0] == b[0] && a[1] == b[1] && a[2] != b[2]);
  json_decref(x);
  json_decref(y);

  x = parse("{\"messages\":[{\"role\":\"system\",\"content\":\"you are a "
            "helpful assistant\"},{\"role\":\"user\",\"content\":\"one\"}]}");
  y = parse("{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":"
            "\"text\",\"text\":\"you are a helpful assistant\"}]},{\"role\":"
            "\"user\",\"content\":\"two\"}]}");
  na = px_prompt_chain(x, 1, 8, a, 64);
  nb = px_prompt_chain(y, 1, 8, b, 64);
  assert_true(na >= 4 && nb >= 4);
  assert_true(a[0] == b[0] && a[2] == b[2]);
  assert_true(a[na - 1] != b[nb - 1]);
  json_decref(x);
  json_decref(y);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_check),
      cmocka_unit_test(test_chain),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
