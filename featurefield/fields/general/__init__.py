"""The generalizable feature field (FeatureNeRF): one or a few images in, a 3D feature volume out.

* :mod:`.model`: the pixel-aligned conditional field (density, colour, distilled features, NeRF features);
* :mod:`.rendering`: volume rendering of rays, views and ``R^3`` feature volumes (plain PyTorch);
* :mod:`.train`: training over the instances of a generated category (streamed shards);
* :mod:`.queries`: keypoint transfer in 2D and 3D, part segmentation by label transfer, novel views;
* :mod:`.evaluate`: PSNR, PCK and part mIoU on held-out instances; :mod:`.run`: loading a run back.
"""
