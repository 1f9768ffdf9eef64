"""Nuclei segmenters trained on real and augmented subsets (spec section 6).

One package per network, the machinery they share beside them, and one registry:

* :mod:`~nudiff.segmentation.hovernet`: Hover-Net (Graham et al. 2019): network, config,
  losses, encoder weights, tiled inference, training.
* :mod:`~nudiff.segmentation.pffnet`: PFF-Net (Liu et al. 2021): network and its heads,
  config, detections to instances, inference, training.
* shared: :mod:`~nudiff.segmentation.run_settings` (what every run's settings hold),
  :mod:`~nudiff.segmentation.training_data` (the patches of a run, mixing resolved),
  :mod:`~nudiff.segmentation.batches` (batches by step, the loader stream),
  :mod:`~nudiff.segmentation.augment`, :mod:`~nudiff.segmentation.validation` (the best
  weights), :mod:`~nudiff.segmentation.fit` (the run that checkpoints and resumes).
* :mod:`~nudiff.segmentation.registry`: model name -> train / load / predictor, used by the
  rules' functions (``train_segmenter``, :mod:`~nudiff.segmentation.segment_images`).

Importing this package loads nothing: import the module you need.
"""
