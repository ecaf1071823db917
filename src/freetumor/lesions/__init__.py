"""The lesion model: one home for what real lesions look like, how they are measured, and how one
drawn from a profile is rendered into a CT.

* :mod:`.profile`: lesion profiles as data (:class:`~.profile.LesionProfile`, the built-in ones,
  loading and validating a profile JSON);
* :mod:`.measure`: the measurements of one lesion that fitting, rendering and the realism scores
  share (core, edge sharpness, solidity, and :func:`~.measure.measure_crop`, a crop's profile
  features);
* :mod:`.shape`: shape descriptors of a lesion mask in mm (sphericity, compactness, elongation,
  flatness, surface roughness, convexity), and solidity;
* :mod:`.features`: lesion crops (a lesion cropped and resampled to 1 mm) and their hand-made
  radiomic and shape features, the input of the realism scores (:mod:`freetumor.evaluation.realism`);
* :mod:`.context`: the one crop geometry of a lesion (its context box, centred, air outside) that the CNN
  reader and Stage 1's discriminator read, real or synthetic alike;
* :mod:`.fit`: ``freetumor lesions fit``, measuring the real lesions of a datalist into a profile;
* :mod:`.render`: rendering a lesion drawn from a profile in mm and HU on a CT's own grid.

Nothing here imports :mod:`freetumor.evaluation`; the submodules are imported where they are
used (this file imports none of them).
"""
