"""Developer tools, never deployed: provider simulators, the local stack, the `aiprod`
command and the SLO report. They may import `aiprod`; `aiprod` never imports them
(tests/infra/test_package.py), and their dependencies are the `cli`/`local` extras."""
