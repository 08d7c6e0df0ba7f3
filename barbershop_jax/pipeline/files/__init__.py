"""Files in and out: image files and atomic writes (image_files.py), the run's inputs read,
named, hashed and decoded once (sources.py), contact sheets (contact_sheet.py)."""
