"""Glue between bam-dense checkpoints and the downstream frameworks (MMSegmentation, MMDetection, detectron2)."""
