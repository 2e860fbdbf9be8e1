"""CPU speed: the fast inference path, training-free accelerations, the OpenVINO backend and the
benchmark harness that decides which of them earn their place (``docs/performance.md``)."""
