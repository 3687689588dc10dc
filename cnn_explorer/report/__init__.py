"""What analyze.py writes: the report of a run (:mod:`~cnn_explorer.report.run_report`, built from one module
per view in :mod:`~cnn_explorer.report.sections`) and the comparison of several runs
(:mod:`~cnn_explorer.report.comparison`)."""
