# Debian's interpreter by absolute path: world-readable (the unprivileged tests run it as uid 65534) and free
# of the ~75 ms pyenv shim that `python3` on PATH can be.
PYTHON ?= /usr/bin/python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ATTACKS := tests/kernel/test_attack_filesystem.py tests/kernel/test_attack_leaks.py \
           tests/kernel/test_attack_network.py tests/kernel/test_attack_processes.py \
           tests/kernel/test_attack_syscalls.py tests/kernel/test_workloads.py \
           tests/kernel/test_attack_paths.py tests/kernel/test_attack_hidden.py \
           tests/kernel/test_attack_hidden_host.py \
           tests/kernel/test_identity.py tests/kernel/test_attack_setid_rewrite.py \
           tests/kernel/test_attack_variants.py tests/kernel/test_attack_more.py \
           tests/kernel/test_attack_stdio.py
# The API and engine suites that run a second time on trio (anyio's other backend): the Supervisor API, the
# spawn path, faults (fork-server deaths, fd exhaustion), pre-forked sandboxes, events, limits and OOM
# notification, scale, chaos, the git scan, the exporter, the cluster client on a real two-node Ray cluster (about
# a minute), and every unit test that is async.
TRIO_TESTS := tests/unit tests/kernel/test_api_usability.py tests/kernel/test_spawn.py \
           tests/kernel/test_faults.py tests/kernel/test_prefork.py tests/kernel/test_events.py \
           tests/kernel/test_limits.py tests/kernel/test_oom_events.py tests/kernel/test_scale.py \
           tests/kernel/test_chaos.py tests/kernel/test_attack_git.py tests/kernel/test_attack_git_leaves.py \
           tests/e2e/test_prometheus.py tests/ray

.PHONY: demo test lint bench clean wheel

# The C parts (the sandbox init and its extension, supervisor/sandbox/_cinit.c) are built by pip install.
$(STAMP): pyproject.toml setup.py supervisor/sandbox/_cinit.c supervisor/sandbox/_csample.c \
		supervisor/observer/denials.bpf.c supervisor/observer/loader.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/agent_runner.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	if [ -d ../shared/v2vm ]; then V2VM_KERNEL="$$(tools/v2vm/kernel.sh)" || exit 1; export V2VM_KERNEL; fi; $(PY) -m pytest -q tests
	# The attack and workload suites again, every command in a sandbox confined ahead of it (pre-forked).
	CORRAL_TEST_PREFORKED=1 $(PY) -m pytest -q $(ATTACKS)
	# The API and engine suites again on trio. A hang there cannot be interrupted from inside (anyio runs trio
	# in guest mode): past 20 minutes SIGUSR1 prints where every task waits (tests/conftest.py), and the
	# pass is killed 30 s later.
	CORRAL_TEST_BACKENDS=trio timeout --signal=USR1 --kill-after=30 1200 $(PY) -m pytest -q -k trio $(TRIO_TESTS)
	tools/v2vm/test-v2.sh

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The binary wheel other machines install: built from a clean copy of the tree, repaired by auditwheel to the
# manylinux tag its glibc symbols allow, into dist/ (tools/build_wheel.py; tests/e2e/test_wheel.py installs it
# with no compiler on PATH and runs sandboxes from it).
wheel: $(STAMP)
	@$(PY) tools/build_wheel.py --out dist | awk -F '\t' '{ print "wheel: " $$1; print "tag:   " $$2 }'

bench: $(STAMP)
	$(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist
