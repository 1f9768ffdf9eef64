"""PFF-Net (Liu et al., IEEE Transactions on Image Processing 30:2045-2059, 2021).

:class:`~nudiff.segmentation.pffnet.network.PFFNet` (a Mask R-CNN with GroupNorm, a
semantic branch fused into the mask head and a mask-quality head; :mod:`.heads`,
:mod:`.semantic`) built from a :class:`~nudiff.segmentation.pffnet.config.PFFNetConfig`;
detections to one instance map (:mod:`.mask_instances`), whole-image inference
(:mod:`.inference`) and training with the authors' SGD recipe (:mod:`.train`).
"""
