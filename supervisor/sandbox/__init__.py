"""One module per kernel mechanism, plus `probe`, which alone decides what this kernel offers.

Every mechanism module speaks the same verbs: `prepare(policy, caps)` in the parent (validates, compiles, may
raise `SandboxSetupError`) returns plain data (builtins only: it crosses to the fork server with `marshal`);
`emit(prepared, plan)` runs in the fork server and appends the ops that apply it to the sandbox's plan
(`_ops`), which the sandbox init (`_cinit.c`) executes, reporting a failed op as `SetupFailure` fields.

`emit` and what it calls run in the fork server, which starts with `python -I -S`: modules here import only
the standard library and `_cinit` at module level. This file stays empty so that importing a mechanism
module does not pull in the rest of the package.
"""
