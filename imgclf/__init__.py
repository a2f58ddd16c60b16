"""Shared logic of the image-classification pipeline: the five stages under stages/ call into it."""
