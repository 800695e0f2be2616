"""Machine checks of the corrected Theorem 1 and of every closed form in docs/THEORY.md §5, §7 and §9.

Read ``proofs/README.md`` for the proof; each ``proofs/check_<name>.py`` verifies the steps that document links to
it and is runnable as ``python -m proofs.check_<name>``. ``python -m proofs`` runs them all. The scripts use only
sympy, mpmath and numpy (never torch or ``tvm_theory``), so they are an independent check of the numeric code.
"""

CHECKS = (
    "gaussian",
    "mixture",
    "parameterization",
    "counterexample",
    "bound_a_attained",
    "bounds_hold",
    "nonlinear",
    "fewstep",
    "attention",
)
"""Module names, in reading order of README.md: ``proofs.check_<name>`` for each entry."""
