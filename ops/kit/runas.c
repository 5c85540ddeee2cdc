/*
 * runas UID GID COMMAND [ARG...] — run COMMAND as UID:GID with no supplementary groups,
 * keeping the environment. The bench kit's way to start PostgreSQL (which refuses root) on a
 * host where neither su, runuser nor setpriv can be assumed. Built static by `ops/bench kit`.
 */
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: runas UID GID COMMAND [ARG...]\n");
        return 2;
    }
    char *end;
    long uid = strtol(argv[1], &end, 10);
    if (*end != '\0' || uid <= 0) { fprintf(stderr, "runas: bad uid %s\n", argv[1]); return 2; }
    long gid = strtol(argv[2], &end, 10);
    if (*end != '\0' || gid <= 0) { fprintf(stderr, "runas: bad gid %s\n", argv[2]); return 2; }
    if (setgroups(0, NULL) != 0 || setgid((gid_t)gid) != 0 || setuid((uid_t)uid) != 0) {
        fprintf(stderr, "runas: cannot become %ld:%ld: %s\n", uid, gid, strerror(errno));
        return 1;
    }
    if (setuid(0) == 0) { fprintf(stderr, "runas: root privileges were not dropped\n"); return 1; }
    execvp(argv[3], argv + 3);
    fprintf(stderr, "runas: %s: %s\n", argv[3], strerror(errno));
    return 127;
}
