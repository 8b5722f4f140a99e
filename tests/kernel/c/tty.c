/* Terminal ioctls on fd 0, which the test makes a pty slave. Makes it the controlling terminal
 * first (the test starts us in a new session), so that TIOCSTI is permitted without privilege.
 * Prints "<name> <return value> <errno name or 0>". Build: gcc -O0 -o tty tty.c */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

static void report(const char *name, long ret, int err) {
    printf("%s %ld %s\n", name, ret, ret == 0 ? "0" : strerrorname_np(err));
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    char c = 'x';
    errno = 0;
    long ret = ioctl(0, TIOCSCTTY, 0);
    report("TIOCSCTTY", ret, errno);
    struct termios t;
    errno = 0;
    ret = ioctl(0, TCGETS, &t);
    report("TCGETS", ret, errno);
    errno = 0;
    ret = ioctl(0, TIOCSTI, &c);
    report("TIOCSTI", ret, errno);
    /* The command is an unsigned int: the kernel ignores the upper 32 bits of the register. */
    errno = 0;
    ret = syscall(SYS_ioctl, 0, 0xdead00000000UL | TIOCSTI, &c);
    report("TIOCSTI_hibits", ret, errno);
    char sub = 0; /* no TIOCLINUX subcommand 0: harmless on any terminal */
    errno = 0;
    ret = ioctl(0, TIOCLINUX, &sub);
    report("TIOCLINUX", ret, errno);
    return 0;
}
