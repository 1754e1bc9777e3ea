/*
 * test_access.c — local access is checked (docs/worker.md, "Local
 * access"): a worker belongs to the user who runs it. With real worker
 * processes run as the system user "daemon" (uid 1) and clients forked as
 * "bin" (uid 2) and "sys" (uid 3):
 *
 *  1. started under umask 000, the Unix socket is still 0600 and owned by
 *     the worker's user;
 *  2. another user can neither connect through the socket (its mode) nor,
 *     with the mode opened up behind the worker's back, be served there
 *     (SO_PEERCRED), nor use loopback TCP (the kernel's socket table
 *     names the user): no read, no write, no stop; the refusals are
 *     counted in /metrics;
 *  3. root and the owner are served;
 *  4. --allow-group bin: the socket is 0660 group bin, a member of bin is
 *     served over both, "sys" is still refused;
 *  5. with a token set, another user who proves it is served over TCP.
 *
 * Needs root (to run as other users); without it only what one user can
 * see is tested, and the test says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "harness_counters.h"

#define OWNER_UID 1 /* daemon */
#define OWNER_GID 1
#define OTHER_UID 2 /* bin */
#define OTHER_GID 2
#define THIRD_UID 3 /* sys */
#define THIRD_GID 3

/* In a child running as uid:gid (no supplementary groups): tries to
 * connect to addr, put a key, read it back and (stop_too) stop the worker.
 * Exit status: 0 = all worked, 10 + the step that failed otherwise; the
 * first error's code is written to the pipe. */
static int try_as(uid_t uid, gid_t gid, const char *addr, int stop_too,
                  int *err) {
  int p[2];
  KVH_CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
  pid_t pid = kvh_fork();
  if (pid == 0) {
    close(p[0]);
    if (uid != geteuid() && (setgroups(0, NULL) || setgid(gid) || setuid(uid)))
      _exit(2);
    kvds_client *c = NULL;
    int rc = kvds_client_connect(addr, 3000, &c), step = 1;
    if (!rc) {
      step = 2;
      rc = kvds_put(c, "as/key", 6, "value", 5);
      if (rc == KVDS_E_EXISTS)
        rc = 0;
    }
    if (!rc) {
      char buf[8];
      size_t len;
      step = 3;
      rc = kvds_get(c, "as/key", 6, buf, sizeof buf, &len, 0);
    }
    if (!rc && stop_too) {
      step = 4;
      rc = kvds_shutdown(c);
    }
    kvds_client_close(c);
    (void)!write(p[1], &rc, sizeof rc);
    _exit(rc ? 10 + step : 0);
  }
  close(p[1]);
  int st = kvh_wait_pid(pid, 20000);
  *err = 0;
  (void)kvh_read_all(p[0], err, sizeof *err, 1000);
  close(p[0]);
  KVH_CHECK(WIFEXITED(st), "client as uid %u died (0x%x)", (unsigned)uid, st);
  return WEXITSTATUS(st);
}

static void check_mode(const char *sock, mode_t want, gid_t gid) {
  struct stat st;
  KVH_CHECK(stat(sock, &st) == 0, "stat %s: %s", sock, strerror(errno));
  KVH_CHECK((st.st_mode & 0777) == want, "%s has mode 0%o, want 0%o", sock,
            (unsigned)(st.st_mode & 0777), (unsigned)want);
  KVH_CHECK(st.st_uid == OWNER_UID && st.st_gid == gid,
            "%s belongs to %u:%u, want %u:%u", sock, (unsigned)st.st_uid,
            (unsigned)st.st_gid, OWNER_UID, (unsigned)gid);
}

static void as_root(void) {
  /* The workers must create their sockets in the run directory. */
  KVH_CHECK(chmod(kvh_run_dir(), 0777) == 0, "chmod run dir: %s",
            strerror(errno));
  kvh_worker_run_as(1, OWNER_UID, OWNER_GID, (gid_t)-1, 0);
  struct kvh_worker w;
  int hp = kvh_free_port();
  char hport[16];
  snprintf(hport, sizeof hport, "%d", hp);
  const char *ex[] = {"--http-port", hport, NULL};
  kvh_worker_start(&w, "32MiB", ex);

  /* 1. umask 000 does not open the socket. */
  check_mode(w.sock, 0600, OWNER_GID);

  /* 3. root is served (the harness's ping proved the Unix way; TCP). */
  int err;
  KVH_CHECK(try_as(0, 0, w.tcp, 0, &err) == 0, "root over TCP: %s",
            kvds_err_name(err));
  /* the owner too */
  KVH_CHECK(try_as(OWNER_UID, OWNER_GID, w.unix_addr, 0, &err) == 0,
            "the owner over Unix: %s", kvds_err_name(err));
  KVH_CHECK(try_as(OWNER_UID, OWNER_GID, w.tcp, 0, &err) == 0,
            "the owner over TCP: %s", kvds_err_name(err));

  /* 2. another user: not through the socket's mode ... */
  int r = try_as(OTHER_UID, OTHER_GID, w.unix_addr, 1, &err);
  KVH_CHECK(r == 11 && err == -EACCES,
            "another user through the 0600 socket: step %d, %s", r - 10,
            kvds_err_name(err));
  /* ... nor over loopback TCP (put, get and stop never run) ... */
  long long before = (long long)kvh_metric(hp, "kvds_access_refused_total");
  r = try_as(OTHER_UID, OTHER_GID, w.tcp, 1, &err);
  KVH_CHECK(r == 11 && err == KVDS_E_AUTH,
            "another user over loopback TCP: step %d, %s", r - 10,
            kvds_err_name(err));
  r = try_as(OTHER_UID, OTHER_GID, w.addr, 1, &err);
  KVH_CHECK(r == 11 && err == KVDS_E_AUTH, "another user at %s: step %d, %s",
            w.addr, r - 10, kvds_err_name(err));
  /* ... nor through a socket whose mode someone opened up. */
  KVH_CHECK(chmod(w.sock, 0777) == 0, "chmod: %s", strerror(errno));
  r = try_as(OTHER_UID, OTHER_GID, w.unix_addr, 1, &err);
  KVH_CHECK(r == 11 && err == KVDS_E_AUTH,
            "another user through a 0777 socket: step %d, %s", r - 10,
            kvds_err_name(err));
  long long after = (long long)kvh_metric(hp, "kvds_access_refused_total");
  KVH_CHECK(after - before == 3,
            "kvds_access_refused_total grew by %lld, "
            "want 3",
            after - before);
  kvh_worker_stop(&w); /* still running: nobody stopped it */

  /* 4. --allow-group bin (the worker's user is a member: it may give its
   * socket to that group). */
  kvh_worker_run_as(1, OWNER_UID, OWNER_GID, OTHER_GID, 0);
  const char *eg[] = {"--allow-group", "bin", NULL};
  kvh_worker_start(&w, "32MiB", eg);
  kvh_worker_run_as(1, OWNER_UID, OWNER_GID, (gid_t)-1, 0);
  check_mode(w.sock, 0660, OTHER_GID);
  KVH_CHECK(try_as(OTHER_UID, OTHER_GID, w.unix_addr, 0, &err) == 0,
            "a member of --allow-group over Unix: %s", kvds_err_name(err));
  KVH_CHECK(try_as(OTHER_UID, OTHER_GID, w.tcp, 0, &err) == 0,
            "a member of --allow-group over TCP: %s", kvds_err_name(err));
  r = try_as(THIRD_UID, THIRD_GID, w.tcp, 1, &err);
  KVH_CHECK(r == 11 && err == KVDS_E_AUTH,
            "a user outside --allow-group over TCP: step %d, %s", r - 10,
            kvds_err_name(err));
  kvh_worker_stop(&w);

  /* 5. A token: whoever proves it is served over TCP. */
  char tok[600];
  snprintf(tok, sizeof tok, "%s/token", kvh_run_dir());
  int fd = open(tok, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  KVH_CHECK(fd >= 0 && write(fd, "0123456789abcdef0123", 20) == 20, "token: %s",
            strerror(errno));
  close(fd);
  /* readable by the worker's user and (for the test) by bin */
  KVH_CHECK(chown(tok, OWNER_UID, OWNER_GID) == 0, "chown: %s",
            strerror(errno));
  const char *et[] = {"--auth-token-file", tok, NULL};
  setenv("KVDS_AUTH_TOKEN_FILE", tok, 1); /* the harness's ping proves it */
  kvh_worker_start(&w, "32MiB", et);
  KVH_CHECK(chown(tok, OTHER_UID, OTHER_GID) == 0, "chown: %s",
            strerror(errno));
  KVH_CHECK(try_as(OTHER_UID, OTHER_GID, w.tcp, 0, &err) == 0,
            "another user with the token over TCP: %s", kvds_err_name(err));
  unsetenv("KVDS_AUTH_TOKEN_FILE");
  KVH_CHECK(chown(tok, 0, 0) == 0, "chown: %s", strerror(errno));
  kvh_worker_stop(&w);
  kvh_worker_run_as(0, 0, 0, (gid_t)-1, 022);
  printf("  local access: other users refused, the group and the token "
         "let in\n");
}

/* Without root: our own worker under umask 000 still has a 0600 socket,
 * and we are served. */
static void as_user(void) {
  kvh_worker_run_as(1, geteuid(), getegid(), (gid_t)-1, 0);
  struct kvh_worker w;
  kvh_worker_start(&w, "32MiB", NULL);
  struct stat st;
  KVH_CHECK(stat(w.sock, &st) == 0 && (st.st_mode & 0777) == 0600,
            "socket mode 0%o under umask 000", (unsigned)(st.st_mode & 0777));
  int err;
  KVH_CHECK(try_as(geteuid(), getegid(), w.tcp, 0, &err) == 0,
            "own user over TCP: %s", kvds_err_name(err));
  kvh_worker_stop(&w);
  kvh_worker_run_as(0, 0, 0, (gid_t)-1, 022);
  printf("  NOT TESTED: other users (needs root to run as them)\n");
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_access");
  if (geteuid() == 0)
    as_root();
  else
    as_user();
  return kvh_finish();
}
