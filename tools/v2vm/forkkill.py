"""The reproducer of uml-fork-zero-entry.patch: kill processes with many mappings while they fork (a fatal
signal during dup_mmap), ROUNDS times, in the v2vm guest:

    ../shared/v2vm/run-in-v2-vm.sh --kernel KERNEL --debug -C /tmp /usr/bin/python3 tools/v2vm/forkkill.py 150

UML 6.12 without the patch panics in flush_tlb_mm ("Kernel mode fault at addr 0x40e": exit 125, VM exited
134) within the first rounds; with it the guest prints "survived 150 rounds" (~30 s)."""

import mmap
import os
import random
import signal
import sys
import time

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
for _ in range(rounds):
    pid = os.fork()
    if pid == 0:
        maps = [
            mmap.mmap(-1, 4096, prot=(mmap.PROT_READ if k % 2 else mmap.PROT_READ | mmap.PROT_WRITE))
            for k in range(2000)
        ]
        while True:
            p = os.fork()
            if p == 0:
                os._exit(0)
            os.waitpid(p, 0)
    time.sleep(random.uniform(0.05, 0.3))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print("survived", rounds, "rounds")
