"""Stage implementations (one module per stage) and the stage runner (:mod:`dualrec.stages.base`)."""
