"""The published SD 1.5 anchors the GPU figures are read against (issue 6)."""

# One 25-step 512x512 image with guidance costs about 42.7 TFLOP; an H100 at 60 % of 800 TFLOP/s makes ~11/s.
BOUND_IMAGES_PER_S = 11.0
# What one H100 must reach through the worker.
TARGET_IMAGES_PER_S = 7.0
