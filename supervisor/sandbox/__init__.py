"""One module per kernel mechanism, plus `probe`, which alone decides what this kernel offers.

Every mechanism module speaks the same verbs: `prepare(policy, caps)` in the parent (validates, compiles, may
raise `SandboxSetupError`) returns plain data (builtins only: it crosses to the fork server with `marshal`);
`apply(prepared)` runs in the child before exec and raises `SetupFailure` naming the failing syscall.

Child-side code (`apply` and what it calls) runs in the fork server, which starts with `python -I -S`: modules
here import only the standard library at module level. This file stays empty so that importing a mechanism
module does not pull in the rest of the package.
"""
