/* A 32-bit (i386) program: under a filter that kills foreign ABIs its first syscall kills it.
 * Build: gcc -m32 -static -O0 -o m32 m32.c */
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    printf("m32_getpid %ld\n", syscall(SYS_getpid));
    return 0;
}
