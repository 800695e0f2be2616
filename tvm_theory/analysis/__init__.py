"""The analysis of TVM: what the reports, proofs and studies measure, never what training needs.

Analytic test beds with exact velocities, flows and conditional variances (``testbeds``), optimal transport
(``transport``), ODE solves with error estimates (``ode``), numbers with their errors (``estimate``), Lipschitz
estimators and certificates (``lipschitz``, ``probes``), the bound calculators of docs/THEORY.md §5–§6
(``bounds``, ``sensitivity``) and their quadrature rules (``quadrature``), and statistics over seeds (``stats``).
The method itself (path, parameterization, loss, time samplers, sampler, EMA, baselines) lives one level up in
``tvm_theory`` and imports nothing from here.
"""
