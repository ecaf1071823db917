"""The parts of ``benchmarks/experiment_fewlabel_lung.py`` (its entry point: arguments and ``main``).

Each module imports only those above it in this list, never one below:

* ``base``: paths, the one-line :class:`~fewlabel.base.Failure`, running the CLI, writing files;
* ``split``: the patient-wise split of the LIDC crops and the K labelled crops of a seed;
* ``data``: the crops' chest3 labels and the healthy host slabs;
* ``testsets``: test datalists checked and prepared; the shifted and composite crops;
* ``arms``: the arms' recipes and their training;
* ``evaluate``: scoring a model on the crop test sets and whole scans (FROC);
* ``runs``: resuming (the recipe's signature, run files, the step budget, ``git commit``);
* ``summary``: seed means, paired comparisons, targets; ``table``: the markdown tables;
* ``experiment``: one session, :func:`~fewlabel.experiment.run`.
"""
