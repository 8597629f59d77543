"""The application core: what the command line, the worker and the benchmarks share.

A request becomes a plan here (``plans``), a plan runs on a cached model
(``model_cache``) through a job body (``jobs``), and the run is recorded
(``records``). Nothing here knows HTTP or Redis: ``krypton.service`` is the
HTTP layer, the queue and the worker loop around it.
"""
