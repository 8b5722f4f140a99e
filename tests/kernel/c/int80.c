/* A 64-bit program entering the kernel through the i386 ABI (int $0x80, getpid is 20 there).
 * Prints "start" first, so that a kill is known to happen at the int $0x80, then the result.
 * Build: gcc -O0 -o int80 int80.c */
#include <stdio.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("start\n");
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory", "r8", "r9", "r10", "r11");
    printf("int80_getpid %ld\n", ret);
    return 0;
}
