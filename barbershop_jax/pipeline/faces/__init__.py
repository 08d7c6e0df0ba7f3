"""Ordinary photos in and out: the FFHQ face crop (crop.py) from landmarks (landmarks.py), and
results pasted back into the photo."""
