"""Training runs: configuration, the parts a run is built from, the process it runs
in, its run directory and the loop (:func:`growformer.training.loop.train`)."""
