"""Thin KFP components: validate inputs, make one core call, write typed outputs.

Module level imports only ``kfp`` (and the image table); every ``aitasks`` import happens inside the
component body, which runs in the baked image.
"""
