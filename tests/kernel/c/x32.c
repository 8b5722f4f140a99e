/* Syscalls with the x32 bit (0x40000000) set, from a 64-bit program: x32 getpid (39) and x32
 * ptrace (521, PTRACE_TRACEME would succeed). Prints "start", then each result.
 * Build: gcc -O0 -o x32 x32.c */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static long raw(long nr, long a0) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a0) : "rcx", "r11", "memory");
    return ret;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("start\n");
    long which = argc > 1 ? argv[1][0] : 'g';
    if (which == 'g')
        printf("x32_getpid %ld\n", raw(0x40000000L | 39, 0));
    else
        printf("x32_ptrace_traceme %ld\n", raw(0x40000000L | 521, 0));
    return 0;
}
