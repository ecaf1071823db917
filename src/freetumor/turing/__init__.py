"""The Visual Turing Test: a blinded reader study of real vs synthetic tumours.

* :mod:`.build` — ``freetumor turing build``: a balanced, shuffled study of real and synthetic
  tumours, each a fixed-size stack of CT slices around the lesion, with random case ids; the
  answer key is written to ``key.json``, which the web app never serves.
* :mod:`.db` — reader tokens and answers in SQLite (``readers.sqlite`` in the study folder).
* :mod:`.server` — ``freetumor turing serve``: the web app readers use.
* :mod:`.score` — ``freetumor turing score``: sensitivity, specificity and accuracy per reader
  and pooled, with 95% intervals, per tumour type; the synthetic cases that passed as real.

Study folder::

    STUDYDIR/study.json       public: case ids, slice count and size, window presets
    STUDYDIR/cases/<id>.bin   int16 HU, shape (slices, rows, cols), little-endian, identical size for all
    STUDYDIR/key.json         secret: truth (real / synthetic) and provenance per case id
    STUDYDIR/readers.sqlite   readers (hashed tokens) and their answers
"""
