"""Evaluation of a judge on pair datasets: resumable records (``records``), the run (``run``), the benchmarks'
scoring rules (``scoring``), summaries and plots (``report``), and the ``eval | judge | rank`` commands
(``config``, ``cli``)."""
