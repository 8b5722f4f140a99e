/* The kernel's floor for corral's throughput benchmark: how many /bin/true per second this machine can run
 * when every child gets the namespaces corral's workspace-write sandbox has (user, pid, net, mount, ipc,
 * uts, cgroup), with no Python, no mounts beyond /proc, no Landlock, seccomp or cgroups: the work no spawn
 * path can skip. benchmarks/floor.py compiles and runs it; it is not part of corral.
 *
 *   ns_floor N CONCURRENCY FLAGS      FLAGS: clone(2) namespace flags, 0 for a bare fork+exec
 *
 * Prints "<spawns per second> <ms per spawn>". Each child is pid 1 of its pid namespace when FLAGS has
 * CLONE_NEWPID, so, as in corral, it forks the command and reaps it.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void child(unsigned long flags) {
    if (flags & CLONE_NEWNS) {
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) _exit(2);
        if ((flags & CLONE_NEWPID) && mount("proc", "/proc", "proc", 0, NULL) != 0) _exit(3);
    }
    pid_t c = fork();
    if (c == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int st;
    if (c < 0 || waitpid(c, &st, 0) != c) _exit(4);
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 5);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s N CONCURRENCY FLAGS\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]), conc = atoi(argv[2]);
    unsigned long flags = strtoul(argv[3], NULL, 0);
    int running = 0, started = 0, done = 0, failed = 0;
    double t0 = now();
    while (done < n) {
        while (running < conc && started < n) {
            pid_t p = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
            if (p == 0) child(flags);
            if (p < 0) {
                perror("clone");
                return 1;
            }
            running++;
            started++;
        }
        int st;
        if (wait(&st) < 0) {
            perror("wait");
            return 1;
        }
        failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        running--;
        done++;
    }
    double dt = now() - t0;
    if (failed) {
        fprintf(stderr, "%d of %d children failed\n", failed, n);
        return 1;
    }
    printf("%.1f %.4f\n", n / dt, dt * 1000 / n);
    return 0;
}
