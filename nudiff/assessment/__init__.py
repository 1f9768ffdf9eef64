"""Synthetic pairs judged by a segmenter: the one package that imports both stages.

The diffusion stage (:mod:`nudiff.diffusion`) never imports the segmentation stage
(:mod:`nudiff.segmentation`); whatever needs a trained Hover-Net to judge sampled images lives
here: the segmenter's agreement with synthetic pairs, the choice of the image model's weights
and the guidance sweep.
"""
